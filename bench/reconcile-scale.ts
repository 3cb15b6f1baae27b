/**
 * Reconciler sweep against table size: for each size a fresh in-memory dynalite holds N routers in sync and
 * `outOfSync` that are not, in tables created as production creates them; the reconcile function's own
 * handler (functions/reconcile.ts) then sweeps a few times, re-sending through the real SqsCommandQueue to
 * fauxqs. Counted per sweep through SDK middleware: DynamoDB requests, items read, read units; SQS requests.
 * The goal: the largest table's sweep costs at most 1.5x the smallest's (the sweep reads only the sparse
 * out-of-sync index, never the table).
 */
import { randomUUID } from "node:crypto";
import { Logger } from "@aws-lambda-powertools/logger";
import { type AttributeValue, BatchWriteItemCommand, GetItemCommand } from "@aws-sdk/client-dynamodb";
import type { ScheduledEvent } from "aws-lambda";
import pLimit from "p-limit";
import { makeHandler } from "../functions/reconcile.ts";
import { queueUrlFromTemplate, SqsCommandQueue } from "../lib/aws/command-queue.ts";
import { DynamoRoutersStore } from "../lib/aws/routers-store.ts";
import { OUT_OF_SYNC_ATTRIBUTE, routersTableDefinition } from "../lib/aws/tables.ts";
import type { ReconcileSummary } from "../lib/domain/reports.ts";
import { systemClock } from "../lib/ports.ts";
import { startEmulators } from "../test/support/emulators.ts";
import { lambdaContext } from "../test/support/events.ts";
import { qrouters, replica, routerRecord, storedHelper } from "../test/support/factories.ts";
import { testKey } from "../test/support/signing.ts";
import { countDynamo, countSqs, type DynamoCounts, type SqsCounts } from "./aws-counters.ts";
import { median } from "./stats.ts";

export interface SweepRow {
  readonly routers: number;
  readonly outOfSync: number;
  readonly hosts: number;
  readonly sweeps: number;
  readonly loadSeconds: number;
  readonly medianSweepMs: number;
  readonly sweepMs: readonly number[];
  /** The last timed sweep's counts. */
  readonly dynamo: DynamoCounts;
  readonly sqs: SqsCounts;
  readonly summary: ReconcileSummary;
  /** Every timed sweep made the same requests and read the same items. */
  readonly sweepsAlike: boolean;
  /** Snapshots found on the node queues after every sweep (warm-up included). */
  readonly queued: number;
}

export interface ReconcileScaleOptions {
  readonly sizes: readonly number[];
  readonly outOfSync: number;
  /** Timed sweeps per size, after one warm-up sweep. */
  readonly sweeps?: number;
  readonly hosts?: number;
  readonly log?: (line: string) => void;
}

const BATCH_WRITE_LIMIT = 25;
const silent = new Logger({ serviceName: "cth-bench-reconcile", logLevel: "CRITICAL" });

const scheduledEvent = (): ScheduledEvent => ({
  version: "0",
  id: randomUUID(),
  "detail-type": "Scheduled Event",
  source: "aws.events",
  account: "000000000000",
  time: new Date().toISOString(),
  region: "us-east-1",
  resources: ["arn:aws:events:us-east-1:000000000000:rule/cth-reconcile"],
  detail: {},
});

export async function benchReconcileScale(options: ReconcileScaleOptions): Promise<SweepRow[]> {
  const rows: SweepRow[] = [];
  for (const size of options.sizes) rows.push(await benchOneSize(size, options));
  return rows;
}

async function benchOneSize(size: number, options: ReconcileScaleOptions): Promise<SweepRow> {
  const log = options.log ?? (() => undefined);
  const hostCount = options.hosts ?? 10;
  const sweeps = options.sweeps ?? 5;
  const emu = await startEmulators();
  try {
    const config = emu.makeConfig();
    await emu.createTables(config);
    const hosts = Array.from({ length: hostCount }, (_, i) => `node-${i}`);
    for (const host of hosts) await emu.createNodeQueue(host);
    // Setup goes through its own clients; only the sweep's are counted.
    const setup = emu.clients(config);
    const setupStore = new DynamoRoutersStore(setup.dynamo, config.routersTable, { transactions: false });

    // One in-sync item per host as production writes it (desired write, then its host's settling report),
    // read back raw: the template every loaded router copies under its own id.
    const templates: Record<string, AttributeValue>[] = [];
    for (const host of hosts) {
      const record = routerRecord({
        bindings: qrouters(host),
        revision: 1,
        helpers: [storedHelper(), storedHelper()],
      });
      await setupStore.put(record, undefined);
      await setupStore.recordReplica({ routerId: record.routerId, host, status: replica(1), basis: record });
      const item = (
        await setup.dynamoRaw.send(
          new GetItemCommand({
            TableName: config.routersTable,
            Key: { router_id: { S: record.routerId } },
            ConsistentRead: true,
          }),
        )
      ).Item;
      if (!item || item[OUT_OF_SYNC_ATTRIBUTE])
        throw new Error("a settled router is still flagged out of sync");
      templates.push(item);
    }
    const started = performance.now();
    const limit = pLimit(8);
    let loaded = hostCount;
    const batches: Promise<void>[] = [];
    for (let start = hostCount; start < size; start += BATCH_WRITE_LIMIT) {
      const count = Math.min(BATCH_WRITE_LIMIT, size - start);
      batches.push(
        limit(async () => {
          let requests = Array.from({ length: count }, (_, i) => ({
            PutRequest: {
              Item: { ...templates[(start + i) % hostCount]!, router_id: { S: randomUUID() } },
            },
          }));
          for (let round = 0; requests.length > 0; round++) {
            if (round >= 10) throw new Error("BatchWriteItem left items unprocessed after 10 rounds");
            const result = await setup.dynamoRaw.send(
              new BatchWriteItemCommand({ RequestItems: { [config.routersTable]: requests } }),
            );
            requests = (result.UnprocessedItems?.[config.routersTable] ?? []) as typeof requests;
          }
          const before = loaded;
          loaded += count;
          if (Math.floor(loaded / 10_000) > Math.floor(before / 10_000)) {
            log(`    ${loaded} / ${size} routers loaded`);
          }
        }),
      );
    }
    await Promise.all(batches);
    // The routers out of sync: behind their desired revision (no report yet), spread over the hosts.
    for (let i = 0; i < options.outOfSync; i++) {
      await setupStore.put(
        routerRecord({ bindings: qrouters(hosts[i % hostCount]!), revision: 2, helpers: [storedHelper()] }),
        undefined,
      );
    }
    const loadSeconds = (performance.now() - started) / 1000;
    log(`  ${size} routers (+${options.outOfSync} out of sync) loaded in ${loadSeconds.toFixed(1)} s`);

    const swept = emu.clients(config);
    const dynamo = countDynamo(swept.dynamoRaw, {
      images: setup.dynamoRaw,
      tables: [routersTableDefinition(config.routersTable)],
    });
    const sqs = countSqs(swept.sqs);
    const store = new DynamoRoutersStore(swept.dynamo, config.routersTable, { transactions: false });
    const queue = new SqsCommandQueue(
      swept.sqs,
      (host) => queueUrlFromTemplate(config.nodeQueueUrlTemplate, host),
      testKey().signer,
    );
    const handler = makeHandler({ store, queue, clock: systemClock, logger: silent });
    const sweepMs: number[] = [];
    const signatures = new Set<string>();
    let summary: ReconcileSummary | undefined;
    for (let sweep = 0; sweep <= sweeps; sweep++) {
      dynamo.reset();
      sqs.reset();
      const t0 = performance.now();
      summary = await handler(scheduledEvent(), lambdaContext());
      const elapsed = performance.now() - t0;
      if (sweep === 0) continue;
      sweepMs.push(elapsed);
      signatures.add(JSON.stringify([dynamo.counts.requests, dynamo.counts.itemsRead, sqs.counts.requests]));
    }
    let queued = 0;
    for (const host of hosts) {
      queued += (await emu.drain(queueUrlFromTemplate(config.nodeQueueUrlTemplate, host))).length;
    }
    for (const client of [setup, swept]) {
      client.dynamoRaw.destroy();
      client.sqs.destroy();
    }
    const row: SweepRow = {
      routers: size,
      outOfSync: options.outOfSync,
      hosts: hostCount,
      sweeps,
      loadSeconds,
      medianSweepMs: median(sweepMs),
      sweepMs,
      dynamo: structuredClone(dynamo.counts),
      sqs: structuredClone(sqs.counts),
      summary: summary!,
      sweepsAlike: signatures.size === 1,
      queued,
    };
    log(
      `  sweep of ${size}: median ${row.medianSweepMs.toFixed(1)} ms, ${row.dynamo.itemsRead} items read, ` +
        `${JSON.stringify(row.dynamo.requests)}, ${row.dynamo.readUnits} RCU, SQS ${JSON.stringify(row.sqs.requests)}`,
    );
    return row;
  } finally {
    await emu.stop();
  }
}
