/**
 * What one notification costs in AWS requests, for the cost model in RESULTS.md: a single router, one helper
 * "created", through the production handlers in process against dynalite and fauxqs, every request counted
 * by SDK middleware (bench/aws-counters.ts). Measured: the HTTP function (with and without an
 * Idempotency-Key), the agent's status report (lib/aws/sqs-status-sink.ts, the agent's sender) and the status
 * function on that very message as Lambda's event source mapping delivers it. Not run here: the agent's own
 * receive and delete of the snapshot, which the cost model takes from the poller's request pattern.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { DynamoDBPersistenceLayer } from "@aws-lambda-powertools/idempotency/dynamodb";
import { Logger } from "@aws-lambda-powertools/logger";
import type { SQSEvent, SQSRecord } from "aws-lambda";
import { makeHandler as makeHttpHandler } from "../functions/http.ts";
import { makeHandler as makeStatusHandler } from "../functions/status.ts";
import { queueUrlFromTemplate, SqsCommandQueue } from "../lib/aws/command-queue.ts";
import { DynamoRoutersStore } from "../lib/aws/routers-store.ts";
import { SqsStatusSink } from "../lib/aws/sqs-status-sink.ts";
import { idempotencyTableDefinition, routersTableDefinition } from "../lib/aws/tables.ts";
import { helperSetDigest } from "../lib/digest.ts";
import { inSync, systemClock } from "../lib/ports.ts";
import { buildSchemas } from "../lib/schemas/index.ts";
import { startEmulators } from "../test/support/emulators.ts";
import { httpApiClaims, httpApiEvent, lambdaContext } from "../test/support/events.ts";
import { PROJECT_A, replica, routerRecord, storedHelper, wireHelper } from "../test/support/factories.ts";
import { testKey } from "../test/support/signing.ts";
import { countDynamo, countSqs, type DynamoCounts, type SqsCounts } from "./aws-counters.ts";
import { median } from "./stats.ts";

/** One step of a notification's path, counted per notification. */
export interface StepCounts {
  readonly dynamo: DynamoCounts;
  readonly sqs: SqsCounts;
  readonly medianMs: number;
  /** Every measured notification made the same requests. */
  readonly alike: boolean;
}

export interface CostCounts {
  readonly notifications: number;
  /** POST /v1/notifications without an Idempotency-Key. */
  readonly http: StepCounts;
  /** The same with an Idempotency-Key (Powertools' records in the idempotency table). */
  readonly httpIdempotent: StepCounts;
  /** The agent's applied report onto its status queue. */
  readonly statusReport: StepCounts;
  /** The status function handling that report (one record per invocation). */
  readonly status: StepCounts;
  /** The snapshot's size on the node queue (body and attributes), bytes. */
  readonly snapshotBytes: number;
  /** The router item after the notification and its report, bytes (DynamoDB's sizing). */
  readonly routerItemBytes: number;
}

const silentApp = { info: () => undefined, warn: () => undefined, error: () => undefined };
const silentLogger = new Logger({ serviceName: "cth-bench-cost", logLevel: "CRITICAL" });
const sqsFixture = JSON.parse(
  readFileSync(new URL("../test/fixtures/aws-events/sqs-base.json", import.meta.url), "utf8"),
) as SQSEvent;

interface Sample {
  dynamo: DynamoCounts;
  sqs: SqsCounts;
  ms: number;
}

type Step = "http" | "httpIdempotent" | "statusReport" | "status";

/** Counts from the counted wiring, time from the uncounted one. */
function step(counted: readonly Sample[], timed: readonly Sample[]): StepCounts {
  const last = counted.at(-1)!;
  const signature = (sample: Sample) =>
    JSON.stringify([sample.dynamo.requests, sample.dynamo.itemsRead, sample.sqs.requests]);
  return {
    dynamo: last.dynamo,
    sqs: last.sqs,
    medianMs: median(timed.map((sample) => sample.ms)),
    alike: new Set(counted.map(signature)).size === 1,
  };
}

export async function benchCostCounts(options: {
  notifications: number;
  log?: (line: string) => void;
}): Promise<CostCounts> {
  const log = options.log ?? (() => undefined);
  const emu = await startEmulators();
  try {
    const config = emu.makeConfig();
    await emu.createTables(config);
    const host = "node-a";
    const nodeQueue = await emu.createNodeQueue(host);
    const statusQueue = await emu.createNodeStatusQueue(host);
    const setup = emu.clients(config);
    const setupStore = new DynamoRoutersStore(setup.dynamo, config.routersTable, { transactions: false });
    // Two wirings of the same handlers: one counted (its image reads would skew times), one timed.
    const counted = emu.clients(config);
    const dynamo = countDynamo(counted.dynamoRaw, {
      images: setup.dynamoRaw,
      tables: [
        routersTableDefinition(config.routersTable),
        idempotencyTableDefinition(config.idempotencyTable),
      ],
    });
    const sqs = countSqs(counted.sqs);
    const timed = emu.clients(config);
    const schemas = buildSchemas(config.limits, config.catalog);
    const signer = testKey().signer;
    const wire = (clients: typeof counted) => {
      const store = new DynamoRoutersStore(clients.dynamo, config.routersTable, { transactions: false });
      const queue = new SqsCommandQueue(
        clients.sqs,
        (node) => queueUrlFromTemplate(config.nodeQueueUrlTemplate, node),
        signer,
      );
      return {
        http: makeHttpHandler({
          domain: { store, queue, clock: systemClock, limits: config.limits, log: silentApp },
          schemas,
          logger: silentApp,
          idempotency: new DynamoDBPersistenceLayer({
            tableName: config.idempotencyTable,
            awsSdkV3Client: clients.dynamoRaw,
          }),
        }),
        status: makeStatusHandler({
          store,
          queue,
          clock: systemClock,
          schemas,
          logger: silentLogger,
          statusQueueNameTemplate: config.statusQueueNameTemplate,
          metrics: { count: () => undefined },
        }),
        sink: new SqsStatusSink(clients.sqs, statusQueue.url),
      };
    };
    const wirings = { counted: wire(counted), timed: wire(timed) };
    const claims = httpApiClaims(PROJECT_A);

    const samples: Record<keyof typeof wirings, Record<Step, Sample[]>> = {
      counted: { http: [], httpIdempotent: [], statusReport: [], status: [] },
      timed: { http: [], httpIdempotent: [], statusReport: [], status: [] },
    };
    let snapshotBytes = 0;
    let routerItemBytes = 0;
    const notification = async (
      kind: keyof typeof wirings,
      idempotent: boolean,
      into?: Record<Step, Sample[]>,
    ) => {
      const { http, status, sink } = wirings[kind];
      const take = async (name: Step, action: () => Promise<void>) => {
        dynamo.reset();
        sqs.reset();
        const t0 = performance.now();
        await action();
        const ms = performance.now() - t0;
        into?.[name].push({ dynamo: structuredClone(dynamo.counts), sqs: structuredClone(sqs.counts), ms });
      };
      // A router in sync with two helpers, as a tenant's router usually is before the change.
      const seeded = routerRecord({ revision: 1, helpers: [storedHelper(), storedHelper()] });
      await setupStore.put(seeded, undefined);
      await setupStore.recordReplica({ routerId: seeded.routerId, host, status: replica(1), basis: seeded });
      const event = httpApiEvent({
        method: "POST",
        path: "/v1/notifications",
        body: { event: "created", conntrack_helpers: [wireHelper(seeded.routerId)] },
        claims,
        ...(idempotent ? { headers: { "idempotency-key": randomUUID() } } : {}),
      });
      await take(idempotent ? "httpIdempotent" : "http", async () => {
        const result = await http(event, lambdaContext());
        if (result.statusCode !== 202) throw new Error(`notification answered ${result.statusCode}`);
      });
      if (kind === "counted") snapshotBytes = sqs.counts.payloadBytes;
      const [snapshot] = await emu.drain(nodeQueue.url);
      const desired = await setupStore.get(seeded.routerId);
      if (!snapshot || !desired) throw new Error("the notification left no snapshot or no router");

      // The agent applied it and reports what the kernel holds: the desired set at the new revision.
      await take("statusReport", () =>
        sink.send({
          v: 1,
          kind: "applied",
          router_id: desired.routerId,
          revision: desired.revision,
          digest: helperSetDigest(desired.helpers),
          rules: { ipv4: desired.helpers.length, ipv6: desired.helpers.length },
          errors: [],
        }),
      );
      const [report] = await emu.drain(statusQueue.url);
      if (!report) throw new Error("the report did not reach the status queue");
      const record: SQSRecord = {
        ...(sqsFixture.Records[0] as SQSRecord),
        messageId: report.MessageId!,
        body: report.Body!,
        eventSourceARN: statusQueue.arn,
      };
      await take("status", async () => {
        const result = await status({ Records: [record] }, lambdaContext());
        if (result.batchItemFailures.length > 0) throw new Error("the status function failed the record");
      });
      const settled = await setupStore.get(seeded.routerId);
      if (!settled || !inSync(settled)) throw new Error("the router is not in sync after its report");
      if (kind === "counted") routerItemBytes = dynamo.counts.largestItemBytes;
    };
    // A warm-up fifth first (JIT, connections), then the measured ones, alternating kinds and wirings.
    const warmup = Math.max(2, Math.floor(options.notifications / 5));
    for (let i = 0; i < warmup + 2 * options.notifications; i++) {
      for (const kind of ["counted", "timed"] as const) {
        await notification(kind, i % 2 === 1, i >= warmup ? samples[kind] : undefined);
      }
    }
    for (const client of [setup, counted, timed]) {
      client.dynamoRaw.destroy();
      client.sqs.destroy();
    }
    const result: CostCounts = {
      notifications: options.notifications,
      http: step(samples.counted.http, samples.timed.http),
      httpIdempotent: step(samples.counted.httpIdempotent, samples.timed.httpIdempotent),
      statusReport: step(samples.counted.statusReport, samples.timed.statusReport),
      status: step(samples.counted.status, samples.timed.status),
      snapshotBytes,
      routerItemBytes,
    };
    log(
      `  per notification: HTTP ${JSON.stringify(result.http.dynamo.requests)} + SQS ${JSON.stringify(result.http.sqs.requests)}; ` +
        `status ${JSON.stringify(result.status.dynamo.requests)}`,
    );
    return result;
  } finally {
    await emu.stop();
  }
}
