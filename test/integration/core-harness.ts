/**
 * The dispatcher wired to real emulators (dynalite, fauxqs) through the real AWS SDK, for the core-*
 * integration suites. Not a test file itself.
 */
import { DynamoDBPersistenceLayer } from "@aws-lambda-powertools/idempotency/dynamodb";
import { ScanCommand } from "@aws-sdk/lib-dynamodb";
import { expect } from "vitest";
import { type HttpDeps, makeHandler } from "../../functions/http.ts";
import {
  type CommandQueueOptions,
  queueUrlFromTemplate,
  SqsCommandQueue,
} from "../../lib/aws/command-queue.ts";
import { DynamoRoutersStore } from "../../lib/aws/routers-store.ts";
import type { Config } from "../../lib/config.ts";
import type { RetryPolicy } from "../../lib/domain/services.ts";
import type { ApiGatewayEvent, ApiGatewayResult } from "../../lib/http/api-event.ts";
import type { CommandQueue, RouterRecord, RoutersStore } from "../../lib/ports.ts";
import { systemClock } from "../../lib/ports.ts";
import type { RouterSyncMessage } from "../../lib/schemas/index.ts";
import { buildSchemas } from "../../lib/schemas/index.ts";
import { KEY_ID_ATTRIBUTE, publicKeyFromPem, SIGNATURE_ATTRIBUTE, verifyBody } from "../../lib/signing.ts";
import { type Emulators, type QueuePair, startEmulators } from "../support/emulators.ts";
import { lambdaContext, RecordingLogger } from "../support/events.ts";
import { routerRecord } from "../support/factories.ts";
import { type TestKey, testKey } from "../support/signing.ts";

export const HOSTS = ["node-a", "node-b", "node-c"] as const;

export interface Core {
  readonly emu: Emulators;
  readonly config: Config;
  readonly store: DynamoRoutersStore;
  readonly queue: SqsCommandQueue;
  /** The dispatcher's signing key; `queued` refuses any message it did not sign. */
  readonly key: TestKey;
  readonly queues: Record<(typeof HOSTS)[number], QueuePair>;
  readonly logger: RecordingLogger;
  /** Handler deps on the emulators; tests may swap store/queue through `handlerWith`. */
  deps(overrides?: { store?: RoutersStore; queue?: CommandQueue; retry?: RetryPolicy }): HttpDeps;
  call(event: ApiGatewayEvent, deps?: HttpDeps): Promise<ApiGatewayResult>;
  seedRouter(overrides?: Partial<RouterRecord>): Promise<RouterRecord>;
  /** Every item of the routers and idempotency tables, for "nothing was written" checks. */
  tables(): Promise<unknown[]>;
  /** Consumes the host's queued snapshots, in delivery order; throws on one not signed by `key`. */
  queued(host: string): Promise<RouterSyncMessage[]>;
  /** Messages on every node queue (without consuming them). */
  depth(): Promise<number>;
  /** Runs `action` and asserts that neither the tables nor any queue changed. */
  expectNothingWritten<T>(action: () => Promise<T>): Promise<T>;
  stop(): Promise<void>;
}

export const FAST_QUEUE: CommandQueueOptions = { maxAttempts: 3, baseDelayMs: 2 };

export async function startCore(configOverrides: Partial<Config> = {}): Promise<Core> {
  const emu = await startEmulators();
  const config = emu.makeConfig(configOverrides);
  await emu.createTables(config);
  const clients = emu.clients(config);
  const queues = {
    "node-a": await emu.createNodeQueue("node-a"),
    "node-b": await emu.createNodeQueue("node-b"),
    "node-c": await emu.createNodeQueue("node-c"),
  };
  const store = new DynamoRoutersStore(clients.dynamo, config.routersTable, { transactions: false });
  const key = testKey();
  const verifyKeys = new Map([[key.keyId, publicKeyFromPem(key.publicKeyPem)]]);
  const queue = new SqsCommandQueue(
    clients.sqs,
    (host) => queueUrlFromTemplate(config.nodeQueueUrlTemplate, host),
    key.signer,
    FAST_QUEUE,
  );
  const logger = new RecordingLogger();
  const schemas = buildSchemas(config.limits, config.catalog);
  const idempotency = new DynamoDBPersistenceLayer({
    tableName: config.idempotencyTable,
    awsSdkV3Client: clients.dynamoRaw,
  });
  const deps: Core["deps"] = (overrides = {}) => ({
    domain: {
      store: overrides.store ?? store,
      queue: overrides.queue ?? queue,
      clock: systemClock,
      limits: config.limits,
      log: logger,
      ...(overrides.retry ? { retry: overrides.retry } : {}),
    },
    schemas,
    logger,
    idempotency,
  });
  const defaultHandler = makeHandler(deps());
  const scan = async (table: string) =>
    (await clients.dynamo.send(new ScanCommand({ TableName: table, ConsistentRead: true }))).Items ?? [];
  const depth = async () => {
    let total = 0;
    for (const pair of Object.values(queues)) total += await emu.depth(pair.url);
    return total;
  };
  const tables = async () => [
    ...(await scan(config.routersTable)).sort((a, b) =>
      String(a.router_id).localeCompare(String(b.router_id)),
    ),
    ...(await scan(config.idempotencyTable)).sort((a, b) => String(a.id).localeCompare(String(b.id))),
  ];
  return {
    emu,
    config,
    store,
    queue,
    key,
    queues,
    logger,
    deps,
    call: (event, custom) => (custom ? makeHandler(custom) : defaultHandler)(event, lambdaContext()),
    async seedRouter(overrides = {}) {
      const record = routerRecord(overrides);
      await store.put(record, undefined);
      return record;
    },
    tables,
    async queued(host) {
      const pair = queues[host as (typeof HOSTS)[number]];
      if (!pair) throw new Error(`no queue for ${host}`);
      return (await emu.drain(pair.url)).map((m) => {
        const body = m.Body ?? "";
        const verdict = verifyBody(
          verifyKeys,
          body,
          m.MessageAttributes?.[KEY_ID_ATTRIBUTE]?.StringValue,
          m.MessageAttributes?.[SIGNATURE_ATTRIBUTE]?.StringValue,
        );
        if (!verdict.ok) throw new Error(`snapshot on ${host} is not dispatcher-signed: ${verdict.reason}`);
        return JSON.parse(body) as RouterSyncMessage;
      });
    },
    depth,
    async expectNothingWritten(action) {
      const before = { tables: await tables(), depth: await depth() };
      const result = await action();
      expect(await tables()).toEqual(before.tables);
      expect(await depth()).toBe(before.depth);
      return result;
    },
    stop: () => emu.stop(),
  };
}

// biome-ignore lint/suspicious/noExplicitAny: response bodies are inspected ad hoc by each test
export const bodyOf = (result: ApiGatewayResult): any => (result.body ? JSON.parse(result.body) : undefined);
