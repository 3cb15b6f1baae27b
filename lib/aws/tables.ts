/**
 * Table definitions: the single source for the local stack, the tests and (by hand, checked by a test)
 * infra/. On-demand billing; the routers table has one item per router.
 */
import type { CreateTableCommandInput } from "@aws-sdk/client-dynamodb";

export const ROUTERS_BY_HOST_INDEX = "by-host";

export function routersTableDefinition(tableName: string): CreateTableCommandInput {
  return {
    TableName: tableName,
    BillingMode: "PAY_PER_REQUEST",
    AttributeDefinitions: [
      { AttributeName: "router_id", AttributeType: "S" },
      { AttributeName: "host", AttributeType: "S" },
    ],
    KeySchema: [{ AttributeName: "router_id", KeyType: "HASH" }],
    GlobalSecondaryIndexes: [
      {
        IndexName: ROUTERS_BY_HOST_INDEX,
        KeySchema: [{ AttributeName: "host", KeyType: "HASH" }],
        Projection: { ProjectionType: "ALL" },
      },
    ],
  };
}

/** Powertools idempotency's default layout: key `id`, TTL on `expiration`. */
export function idempotencyTableDefinition(tableName: string): CreateTableCommandInput {
  return {
    TableName: tableName,
    BillingMode: "PAY_PER_REQUEST",
    AttributeDefinitions: [{ AttributeName: "id", AttributeType: "S" }],
    KeySchema: [{ AttributeName: "id", KeyType: "HASH" }],
  };
}

/** TTL cannot be part of CreateTable; apply it with UpdateTimeToLive after creation. */
export const IDEMPOTENCY_TTL_ATTRIBUTE = "expiration";
