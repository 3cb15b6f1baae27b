/**
 * RoutersStore on DynamoDB: one item per router, every desired-state write conditional on the revision the
 * writer read (optimistic concurrency). Multi-router commits use TransactWriteItems unless the backend has
 * no transactions (dynalite: `transactions: false`, and the domain compensates instead).
 */
import { ConditionalCheckFailedException } from "@aws-sdk/client-dynamodb";
import {
  BatchGetCommand,
  type DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  type PutCommandInput,
  QueryCommand,
  ScanCommand,
  TransactWriteCommand,
  UpdateCommand,
  type UpdateCommandInput,
} from "@aws-sdk/lib-dynamodb";
import { RevisionConflictError, ServiceUnavailableError } from "../errors.ts";
import type { RouterRecord, RoutersStore, RouterWrite } from "../ports.ts";
import type { ApplyError } from "../schemas/index.ts";
import { ROUTERS_BY_HOST_INDEX } from "./tables.ts";

interface RouterItem {
  router_id: string;
  project_id: string;
  host: string;
  revision: number;
  helpers: { id: string; protocol: "tcp" | "udp"; port: number; helper: string }[];
  applied_revision: number;
  applied_at?: string;
  applied_host?: string;
  applied_errors?: ApplyError[];
  updated_at: string;
}

function toItem(record: RouterRecord): RouterItem {
  return {
    router_id: record.routerId,
    project_id: record.projectId,
    host: record.host,
    revision: record.revision,
    helpers: record.helpers.map(({ id, protocol, port, helper }) => ({ id, protocol, port, helper })),
    applied_revision: record.appliedRevision,
    ...(record.appliedAt ? { applied_at: record.appliedAt } : {}),
    ...(record.appliedHost ? { applied_host: record.appliedHost } : {}),
    ...(record.appliedErrors ? { applied_errors: [...record.appliedErrors] } : {}),
    updated_at: record.updatedAt,
  };
}

/** What a deleted router leaves: its id and the last revision it was given (see RoutersStore.delete). */
const isTombstone = (item: Record<string, unknown>): boolean => item.deleted_at !== undefined;

function fromItem(item: Record<string, unknown>): RouterRecord {
  const row = item as unknown as RouterItem;
  return {
    routerId: row.router_id,
    projectId: row.project_id,
    host: row.host,
    revision: Number(row.revision),
    helpers: (row.helpers ?? []).map((h) => ({
      id: h.id,
      protocol: h.protocol,
      port: Number(h.port),
      helper: h.helper,
    })),
    appliedRevision: Number(row.applied_revision ?? 0),
    appliedAt: row.applied_at,
    appliedHost: row.applied_host,
    appliedErrors: row.applied_errors,
    updatedAt: row.updated_at,
  };
}

const isConditionFailure = (error: unknown): boolean =>
  error instanceof ConditionalCheckFailedException ||
  (error instanceof Error && error.name === "ConditionalCheckFailedException");

/** Throttling and server faults the SDK's own retries could not absorb: the caller may retry later. */
const TRANSIENT = new Set([
  "ProvisionedThroughputExceededException",
  "ThrottlingException",
  "RequestLimitExceeded",
  "InternalServerError",
  "ServiceUnavailable",
  "LimitExceededException",
  "TimeoutError",
  "RequestTimeout",
]);

/** Connection-level failures: the table was not reached at all. */
const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

function transient(error: unknown): unknown {
  if (!(error instanceof Error)) return error;
  const details = error as { $metadata?: { httpStatusCode?: number }; $retryable?: unknown; code?: unknown };
  const status = details.$metadata?.httpStatusCode ?? 0;
  const network = typeof details.code === "string" && NETWORK_CODES.has(details.code);
  if (TRANSIENT.has(error.name) || status >= 500 || network || details.$retryable) {
    return new ServiceUnavailableError("the routers table is busy; retry later", undefined, { cause: error });
  }
  return error;
}

/** Every SDK call goes through here, so throttling surfaces as one clean, retryable error. */
function guard<T>(pending: Promise<T>): Promise<T> {
  return pending.catch((error: unknown) => {
    throw transient(error);
  });
}

/** DynamoDB's BatchGetItem limit. */
const BATCH_GET_LIMIT = 100;

type WriteInput =
  | { Put: PutCommandInput & { ConditionExpression: string } }
  | { Update: UpdateCommandInput & { UpdateExpression: string; ConditionExpression: string } };

/** DynamoDB's TransactWriteItems limit (a notification names at most 64 routers). */
const TRANSACTION_LIMIT = 100;

export interface DynamoRoutersStoreOptions {
  /** TransactWriteItems for multi-router commits (DynamoDB, moto_server); false for dynalite. */
  readonly transactions: boolean;
}

export class DynamoRoutersStore implements RoutersStore {
  readonly putAll: RoutersStore["putAll"];

  constructor(
    private readonly client: DynamoDBDocumentClient,
    private readonly tableName: string,
    options: DynamoRoutersStoreOptions,
  ) {
    this.putAll = options.transactions ? (writes) => this.transact(writes) : undefined;
  }

  private async transact(writes: readonly RouterWrite[]): Promise<void> {
    if (writes.length === 0) return;
    if (writes.length > TRANSACTION_LIMIT) throw new Error(`at most ${TRANSACTION_LIMIT} routers per commit`);
    try {
      await guard(
        this.client.send(
          new TransactWriteCommand({
            TransactItems: writes.map(({ next, expectedRevision }) =>
              this.writeInput(next, expectedRevision),
            ),
          }),
        ),
      );
    } catch (error) {
      // A failed condition, or another transaction on the same item: either way someone else wrote first.
      const reasons = (error as { CancellationReasons?: { Code?: string }[] }).CancellationReasons ?? [];
      const lostRace = reasons.some(
        (r) => r.Code === "ConditionalCheckFailed" || r.Code === "TransactionConflict",
      );
      if (
        (error instanceof Error && error.name === "TransactionCanceledException" && lostRace) ||
        isConditionFailure(error)
      ) {
        throw new RevisionConflictError("a router of this notification changed concurrently", undefined, {
          cause: error,
        });
      }
      throw error;
    }
  }

  async get(routerId: string): Promise<RouterRecord | undefined> {
    const result = await guard(
      this.client.send(
        new GetCommand({ TableName: this.tableName, Key: { router_id: routerId }, ConsistentRead: true }),
      ),
    );
    return result.Item && !isTombstone(result.Item) ? fromItem(result.Item) : undefined;
  }

  async lastRevision(routerId: string): Promise<number> {
    const result = await guard(
      this.client.send(
        new GetCommand({
          TableName: this.tableName,
          Key: { router_id: routerId },
          ConsistentRead: true,
          ProjectionExpression: "revision",
        }),
      ),
    );
    return Number(result.Item?.revision ?? 0);
  }

  async getMany(routerIds: readonly string[]): Promise<Map<string, RouterRecord>> {
    const found = new Map<string, RouterRecord>();
    const unique = [...new Set(routerIds)];
    for (let start = 0; start < unique.length; start += BATCH_GET_LIMIT) {
      let keys: Record<string, unknown>[] = unique
        .slice(start, start + BATCH_GET_LIMIT)
        .map((id) => ({ router_id: id }));
      // UnprocessedKeys come back under throttling; a bounded loop keeps a stuck table from spinning forever.
      for (let round = 0; keys.length > 0; round++) {
        if (round >= 5) throw new Error("BatchGetItem left keys unprocessed after 5 rounds");
        if (round > 0) await new Promise((resolve) => setTimeout(resolve, 20 * 2 ** round));
        const result = await guard(
          this.client.send(
            new BatchGetCommand({
              RequestItems: { [this.tableName]: { Keys: keys, ConsistentRead: true } },
            }),
          ),
        );
        for (const item of result.Responses?.[this.tableName] ?? []) {
          if (isTombstone(item)) continue;
          const record = fromItem(item);
          found.set(record.routerId, record);
        }
        keys = result.UnprocessedKeys?.[this.tableName]?.Keys ?? [];
      }
    }
    return found;
  }

  /**
   * A create puts the whole item. A change of an existing router sets only the desired state: the applied
   * status belongs to recordApplied, and a report that lands between this writer's read and its write must
   * not be put back to what the writer read.
   */
  private writeInput(next: RouterRecord, expectedRevision: number | undefined): WriteInput {
    if (expectedRevision === undefined) {
      // A new id, or one whose tombstone the new router continues from (never below what agents saw).
      return {
        Put: {
          TableName: this.tableName,
          Item: toItem(next),
          ConditionExpression:
            "attribute_not_exists(router_id) OR (attribute_exists(deleted_at) AND revision <= :revision)",
          ExpressionAttributeValues: { ":revision": next.revision },
        },
      };
    }
    const item = toItem(next);
    return {
      Update: {
        TableName: this.tableName,
        Key: { router_id: next.routerId },
        ConditionExpression: "revision = :expected AND attribute_not_exists(deleted_at)",
        UpdateExpression:
          "SET project_id = :project, #host = :host, revision = :revision, helpers = :helpers, updated_at = :updated",
        ExpressionAttributeNames: { "#host": "host" },
        ExpressionAttributeValues: {
          ":expected": expectedRevision,
          ":project": item.project_id,
          ":host": item.host,
          ":revision": item.revision,
          ":helpers": item.helpers,
          ":updated": item.updated_at,
        },
      },
    };
  }

  async put(next: RouterRecord, expectedRevision: number | undefined): Promise<void> {
    try {
      const input = this.writeInput(next, expectedRevision);
      await guard(
        "Put" in input
          ? this.client.send(new PutCommand(input.Put))
          : this.client.send(new UpdateCommand(input.Update)),
      );
    } catch (error) {
      if (isConditionFailure(error)) {
        throw new RevisionConflictError(`router ${next.routerId} changed concurrently`, undefined, {
          cause: error,
        });
      }
      throw error;
    }
  }

  async delete(routerId: string, expectedRevision: number, deletedAt: string): Promise<void> {
    try {
      await guard(
        this.client.send(
          new PutCommand({
            TableName: this.tableName,
            // No host: the tombstone is in no node's index and no applied report can match it.
            Item: { router_id: routerId, revision: expectedRevision + 1, deleted_at: deletedAt },
            ConditionExpression: "revision = :expected AND attribute_not_exists(deleted_at)",
            ExpressionAttributeValues: { ":expected": expectedRevision },
          }),
        ),
      );
    } catch (error) {
      if (isConditionFailure(error)) {
        throw new RevisionConflictError(`router ${routerId} changed concurrently`, undefined, {
          cause: error,
        });
      }
      throw error;
    }
  }

  async recordApplied(report: {
    routerId: string;
    revision: number;
    host: string;
    errors: readonly ApplyError[];
    at: string;
  }): Promise<boolean> {
    try {
      // Monotonic by condition: a late or replayed report can never lower the applied revision, and a host
      // that no longer carries the router (it moved) cannot mark the new placement applied. A report at the
      // same revision refreshes applied_at: it is the agent's proof of life the reconciler's bound relies on.
      await guard(
        this.client.send(
          new UpdateCommand({
            TableName: this.tableName,
            Key: { router_id: report.routerId },
            ConditionExpression:
              "attribute_exists(router_id) AND #host = :host AND applied_revision <= :rev AND revision >= :rev",
            UpdateExpression:
              "SET applied_revision = :rev, applied_at = :at, applied_host = :host, applied_errors = :errors",
            ExpressionAttributeNames: { "#host": "host" },
            ExpressionAttributeValues: {
              ":rev": report.revision,
              ":at": report.at,
              ":host": report.host,
              ":errors": [...report.errors],
            },
          }),
        ),
      );
      return true;
    } catch (error) {
      if (isConditionFailure(error)) return false;
      throw error;
    }
  }

  async listByHost(host: string): Promise<RouterRecord[]> {
    const records: RouterRecord[] = [];
    let startKey: Record<string, unknown> | undefined;
    do {
      const page = await guard(
        this.client.send(
          new QueryCommand({
            TableName: this.tableName,
            IndexName: ROUTERS_BY_HOST_INDEX,
            KeyConditionExpression: "#host = :host",
            ExpressionAttributeNames: { "#host": "host" },
            ExpressionAttributeValues: { ":host": host },
            ExclusiveStartKey: startKey,
          }),
        ),
      );
      for (const item of page.Items ?? []) if (!isTombstone(item)) records.push(fromItem(item));
      startKey = page.LastEvaluatedKey;
    } while (startKey);
    return records;
  }

  async *listAll(): AsyncIterable<RouterRecord> {
    let startKey: Record<string, unknown> | undefined;
    do {
      const page = await guard(
        this.client.send(
          new ScanCommand({ TableName: this.tableName, ExclusiveStartKey: startKey, ConsistentRead: true }),
        ),
      );
      for (const item of page.Items ?? []) if (!isTombstone(item)) yield fromItem(item);
      startKey = page.LastEvaluatedKey;
    } while (startKey);
  }
}
