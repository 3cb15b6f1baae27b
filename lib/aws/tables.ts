/**
 * Table definitions: the single source for the local stack, the tests and (by hand, checked by a test)
 * infra/. On-demand billing; the routers table has one item per router.
 */
import type { CreateTableCommandInput } from "@aws-sdk/client-dynamodb";
import { MAX_BINDINGS } from "../schemas/index.ts";

export const ROUTERS_BY_HOST_INDEX = "by-host";

/** Project listings: hash project_id, range router_id, keys only (pages are re-read consistently). */
export const ROUTERS_BY_PROJECT_INDEX = "by-project";

/**
 * The sparse index of routers that are not in sync: only items carrying OUT_OF_SYNC_ATTRIBUTE are in it, so
 * reading it costs what is out of sync, not the table. Keys only: each status report rewrites `replicas`,
 * and a projection of it would double the cost of the hottest write; readers re-read consistently anyway.
 */
export const ROUTERS_OUT_OF_SYNC_INDEX = "out-of-sync";

/** The project id of a live router (a tombstone: TOMBSTONE_FLAG) while it is out of sync, absent otherwise. */
export const OUT_OF_SYNC_ATTRIBUTE = "out_of_sync";

/** The desired revision the flag was last set for: what the status path's un-flagging is conditional on. */
export const SYNC_REVISION_ATTRIBUTE = "sync_revision";

/** The flag value of a deleted router whose hosts have not all confirmed its empty snapshot. */
export const TOMBSTONE_FLAG = "#deleted";

/**
 * A router's i-th binding's host is kept in attribute `host` (i = 0, the index that predates bindings) or
 * `host_<i>`, each with its own index: DynamoDB cannot index the members of a list, and one item per router
 * keeps every write a single conditional write. listByHost reads keys only and re-reads each router
 * consistently; the first index still projects the whole item because it predates bindings, and changing
 * a GSI's projection means dropping and rebuilding it.
 */
export const BINDING_SLOTS = MAX_BINDINGS;

export const bindingSlotAttribute = (slot: number): string => (slot === 0 ? "host" : `host_${slot}`);

export const bindingSlotIndex = (slot: number): string =>
  slot === 0 ? ROUTERS_BY_HOST_INDEX : `${ROUTERS_BY_HOST_INDEX}-${slot}`;

const slots = Array.from({ length: BINDING_SLOTS }, (_, slot) => slot);

export function routersTableDefinition(tableName: string): CreateTableCommandInput {
  return {
    TableName: tableName,
    BillingMode: "PAY_PER_REQUEST",
    AttributeDefinitions: [
      { AttributeName: "router_id", AttributeType: "S" },
      ...slots.map((slot) => ({ AttributeName: bindingSlotAttribute(slot), AttributeType: "S" as const })),
      { AttributeName: "project_id", AttributeType: "S" },
      { AttributeName: OUT_OF_SYNC_ATTRIBUTE, AttributeType: "S" },
    ],
    KeySchema: [{ AttributeName: "router_id", KeyType: "HASH" }],
    GlobalSecondaryIndexes: [
      ...slots.map((slot) => ({
        IndexName: bindingSlotIndex(slot),
        KeySchema: [{ AttributeName: bindingSlotAttribute(slot), KeyType: "HASH" as const }],
        Projection: { ProjectionType: slot === 0 ? ("ALL" as const) : ("KEYS_ONLY" as const) },
      })),
      {
        IndexName: ROUTERS_BY_PROJECT_INDEX,
        KeySchema: [
          { AttributeName: "project_id", KeyType: "HASH" },
          { AttributeName: "router_id", KeyType: "RANGE" },
        ],
        Projection: { ProjectionType: "KEYS_ONLY" },
      },
      {
        IndexName: ROUTERS_OUT_OF_SYNC_INDEX,
        KeySchema: [
          { AttributeName: OUT_OF_SYNC_ATTRIBUTE, KeyType: "HASH" },
          { AttributeName: "router_id", KeyType: "RANGE" },
        ],
        Projection: { ProjectionType: "KEYS_ONLY" },
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
