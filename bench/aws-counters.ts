/**
 * Request counters for the cost benchmarks: SDK middleware on a client that records what each request was,
 * what it read and what AWS bills for it. dynalite reports ConsumedCapacity for the table (asked for on every
 * request here) but nothing for global secondary indexes, so index writes are computed from each written
 * item's image before and after, by AWS's rules; SQS requests are billed per 64 KiB chunk of payload.
 */
import { createRequire } from "node:module";
import {
  type AttributeValue,
  type CreateTableCommandInput,
  type DynamoDBClient,
  GetItemCommand,
} from "@aws-sdk/client-dynamodb";
import type { SQSClient } from "@aws-sdk/client-sqs";

type Item = Record<string, AttributeValue>;

/** dynalite's item size: attribute names plus values, as DynamoDB sizes items for capacity. */
const itemSize = (createRequire(import.meta.url)("dynalite/db") as { itemSize(item: Item): number }).itemSize;

export const sizeOf = (item: Item | undefined): number => (item ? itemSize(item) : 0);

export interface DynamoCounts {
  /** Requests by operation; reads of an index as `Operation:index`. */
  readonly requests: Record<string, number>;
  /** Items returned (index keys, batch-read items, single gets). */
  itemsRead: number;
  /** Read capacity units, as the emulator reports them (table and index reads). */
  readUnits: number;
  /** Table write capacity units, as the emulator reports them (a failed condition: computed, 1 KB units). */
  writeUnits: number;
  /** Index write units, computed from the item's images (the emulator reports none). */
  indexWriteUnits: number;
  /** Writes refused by their condition (billed all the same). */
  conditionFailures: number;
  /** Size of the largest item image seen by a write (bytes, DynamoDB's sizing). */
  largestItemBytes: number;
}

export interface Counter<T> {
  readonly counts: T;
  reset(): void;
}

const READS = new Set(["GetItem", "BatchGetItem", "Query", "Scan"]);
const SINGLE_WRITES = new Set(["PutItem", "UpdateItem", "DeleteItem"]);

const emptyDynamo = (): DynamoCounts => ({
  requests: {},
  itemsRead: 0,
  readUnits: 0,
  writeUnits: 0,
  indexWriteUnits: 0,
  conditionFailures: 0,
  largestItemBytes: 0,
});

const operationOf = (request: unknown, prefix: string): string => {
  const headers = (request as { headers?: Record<string, string> }).headers ?? {};
  const target = headers["x-amz-target"] ?? headers["X-Amz-Target"] ?? "";
  return target.startsWith(prefix) ? target.slice(prefix.length) : "unknown";
};

/** A write's cost in each index, by AWS's rules for global secondary indexes. */
function indexWriteUnits(table: CreateTableCommandInput, before: Item | undefined, after: Item | undefined) {
  const tableKeys = (table.KeySchema ?? []).map((key) => key.AttributeName!);
  let units = 0;
  for (const index of table.GlobalSecondaryIndexes ?? []) {
    const keys = (index.KeySchema ?? []).map((key) => key.AttributeName!);
    const inIndex = (item: Item | undefined) => item !== undefined && keys.every((key) => item[key]);
    const entry = (item: Item): Item => {
      if (index.Projection?.ProjectionType === "ALL") return item;
      const names = new Set([...tableKeys, ...keys, ...(index.Projection?.NonKeyAttributes ?? [])]);
      return Object.fromEntries(Object.entries(item).filter(([name]) => names.has(name)));
    };
    const write = (item: Item) => Math.max(1, Math.ceil(sizeOf(entry(item)) / 1024));
    const was = inIndex(before) ? entry(before!) : undefined;
    const is = inIndex(after) ? entry(after!) : undefined;
    if (!was && !is) continue;
    if (!was) units += write(after!);
    else if (!is) units += write(before!);
    else if (keys.some((key) => JSON.stringify(was[key]) !== JSON.stringify(is[key]))) {
      units += write(before!) + write(after!);
    } else if (JSON.stringify(was) !== JSON.stringify(is)) units += write(after!);
  }
  return units;
}

/**
 * Counts every request `client` sends (the document client on top of it shares its middleware stack).
 * `images` reads an item before and after each single-item write, uncounted, to price index writes; the
 * tables are named with their definitions.
 */
export function countDynamo(
  client: DynamoDBClient,
  options: { images: DynamoDBClient; tables: readonly CreateTableCommandInput[] },
): Counter<DynamoCounts> {
  const counter = { counts: emptyDynamo(), reset: () => Object.assign(counter.counts, emptyDynamo()) };
  const definitions = new Map(options.tables.map((table) => [table.TableName!, table]));
  const image = async (tableName: string, key: Item): Promise<Item | undefined> =>
    (await options.images.send(new GetItemCommand({ TableName: tableName, Key: key, ConsistentRead: true })))
      .Item;
  client.middlewareStack.add(
    (next) => async (args) =>
      next({ ...args, input: { ...(args.input as object), ReturnConsumedCapacity: "TOTAL" } }),
    { step: "initialize", name: "benchConsumedCapacity" },
  );
  client.middlewareStack.add(
    (next) => async (args) => {
      const counts = counter.counts;
      const operation = operationOf(args.request, "DynamoDB_20120810.");
      const input = args.input as {
        TableName?: string;
        IndexName?: string;
        Key?: Item;
        Item?: Item;
      };
      const name = `${operation}${input.IndexName ? `:${input.IndexName}` : ""}`;
      counts.requests[name] = (counts.requests[name] ?? 0) + 1;
      const definition = input.TableName ? definitions.get(input.TableName) : undefined;
      const key =
        input.Key ??
        (input.Item && definition
          ? Object.fromEntries(
              (definition.KeySchema ?? []).map((k) => [k.AttributeName!, input.Item![k.AttributeName!]!]),
            )
          : undefined);
      const tracked = SINGLE_WRITES.has(operation) && definition !== undefined && key !== undefined;
      const before = tracked ? await image(input.TableName!, key) : undefined;
      let result: Awaited<ReturnType<typeof next>>;
      try {
        result = await next(args);
      } catch (error) {
        if (error instanceof Error && error.name === "ConditionalCheckFailedException") {
          counts.conditionFailures++;
          counts.writeUnits += Math.max(1, Math.ceil(sizeOf(before) / 1024));
        }
        throw error;
      }
      const output = result.output as {
        Items?: unknown[];
        Item?: unknown;
        Responses?: Record<string, unknown[]>;
        ConsumedCapacity?: { CapacityUnits?: number } | { CapacityUnits?: number }[];
      };
      counts.itemsRead += (output.Items?.length ?? 0) + (output.Item ? 1 : 0);
      for (const items of Object.values(output.Responses ?? {})) counts.itemsRead += items.length;
      const consumed = [output.ConsumedCapacity ?? []]
        .flat()
        .reduce((sum, entry) => sum + (entry.CapacityUnits ?? 0), 0);
      if (READS.has(operation)) counts.readUnits += consumed;
      else counts.writeUnits += consumed;
      if (tracked) {
        const after = await image(input.TableName!, key);
        counts.largestItemBytes = Math.max(counts.largestItemBytes, sizeOf(before), sizeOf(after));
        counts.indexWriteUnits += indexWriteUnits(definition, before, after);
      }
      return result;
    },
    { step: "build", name: "benchCountDynamo" },
  );
  return counter;
}

export interface SqsCounts {
  /** Requests by operation. */
  readonly requests: Record<string, number>;
  /** Requests as billed: each 64 KiB chunk of a request's payload counts as one request. */
  billedRequests: number;
  /** Messages sent (batch entries included). */
  messagesSent: number;
  /** Payload bytes sent: bodies and message attributes (names, types, values). */
  payloadBytes: number;
}

const emptySqs = (): SqsCounts => ({ requests: {}, billedRequests: 0, messagesSent: 0, payloadBytes: 0 });

interface SentMessage {
  MessageBody?: string;
  MessageAttributes?: Record<string, { DataType?: string; StringValue?: string }>;
}

const payloadOf = (message: SentMessage): number =>
  Buffer.byteLength(message.MessageBody ?? "") +
  Object.entries(message.MessageAttributes ?? {}).reduce(
    (sum, [name, value]) =>
      sum +
      Buffer.byteLength(name) +
      Buffer.byteLength(value.DataType ?? "") +
      Buffer.byteLength(value.StringValue ?? ""),
    0,
  );

/** Counts every request `client` sends, by its command. */
export function countSqs(client: SQSClient): Counter<SqsCounts> {
  const counter = { counts: emptySqs(), reset: () => Object.assign(counter.counts, emptySqs()) };
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const counts = counter.counts;
      const operation = String(context.commandName ?? "unknown").replace(/Command$/, "");
      counts.requests[operation] = (counts.requests[operation] ?? 0) + 1;
      const input = args.input as SentMessage & { Entries?: SentMessage[] };
      const messages =
        operation === "SendMessage" ? [input] : operation === "SendMessageBatch" ? (input.Entries ?? []) : [];
      const payload = messages.reduce((sum, message) => sum + payloadOf(message), 0);
      counts.messagesSent += messages.length;
      counts.payloadBytes += payload;
      counts.billedRequests += Math.max(1, Math.ceil(payload / (64 * 1024)));
      return next(args);
    },
    { step: "initialize", name: "benchCountSqs" },
  );
  return counter;
}
