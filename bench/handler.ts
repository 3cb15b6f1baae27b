/**
 * (b) Handler CPU path: POST /v1/notifications through the real middy chain of functions/http.ts (byte cap,
 * JSON, claims, schema, authorization, merge, conditional write, snapshot) on the in-memory stores, inside the
 * recorded HTTP API v2 envelope. Floor, same run, same bodies: JSON.parse plus the zod parse of the body.
 */
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { closeSync, openSync, writeSync } from "node:fs";
import type { SQSClient } from "@aws-sdk/client-sqs";
import type { Context } from "aws-lambda";
import { makeHandler } from "../functions/http.ts";
import { SqsCommandQueue } from "../lib/aws/command-queue.ts";
import { HelperCatalog } from "../lib/catalog.ts";
import { type Limits, loadLimits } from "../lib/config.ts";
import { RevisionConflictError } from "../lib/errors.ts";
import { appLogger } from "../lib/http/middlewares.ts";
import type { CommandQueue, RouterRecord, RoutersStore } from "../lib/ports.ts";
import { systemClock } from "../lib/ports.ts";
import { type Observability, observability } from "../lib/production.ts";
import type { RouterSyncMessage } from "../lib/schemas/index.ts";
import { buildSchemas, parseNotificationBody, type Schemas } from "../lib/schemas/index.ts";
import type { SnapshotSigner } from "../lib/signing.ts";
import { keySigner, publicKeyFromPem, verifyBody } from "../lib/signing.ts";
import { httpApiClaims, httpApiEvent, lambdaContext } from "../test/support/events.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../test/support/memory.ts";
import { median, summarize } from "./stats.ts";

/**
 * Ports with no copying at all (records are frozen, so a domain that mutated one would throw): they isolate
 * the handler's own CPU cost from the test fakes' structuredClone, which dominates the "memory" rows.
 */
class LeanStore implements RoutersStore {
  private readonly rows = new Map<string, RouterRecord>();
  async get(id: string) {
    return this.rows.get(id);
  }
  async getMany(ids: readonly string[]) {
    const found = new Map<string, RouterRecord>();
    for (const id of ids) {
      const row = this.rows.get(id);
      if (row) found.set(id, row);
    }
    return found;
  }
  async put(next: RouterRecord, expected: number | undefined) {
    const row = this.rows.get(next.routerId);
    if (expected === undefined ? row !== undefined : row?.revision !== expected)
      throw new RevisionConflictError("conflict");
    this.rows.set(next.routerId, Object.freeze(next));
  }
  async delete(id: string) {
    this.rows.delete(id);
  }
  async tombstone() {
    return undefined;
  }
  async recordReplica() {
    return false;
  }
  async confirmDrained() {
    return false;
  }
  async listByHost() {
    return [];
  }
  async listPage() {
    return { records: [] };
  }
  async *listOutOfSync() {}
  async clearOutOfSync() {
    return false;
  }
  async *listAll() {}
}

class LeanQueue implements CommandQueue {
  readonly sent: RouterSyncMessage[] = [];
  async send(_host: string, commands: readonly RouterSyncMessage[]) {
    this.sent.push(...commands);
  }
  all() {
    return this.sent;
  }
}

export interface HandlerRow {
  /** "memory": test/support/memory.ts fakes (structuredClone on every call); "lean": no-copy ports. */
  readonly stores: "memory" | "lean";
  readonly helpers: number;
  readonly requests: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly floorPerSecond: number;
  readonly floorP50Ms: number;
  readonly floorP99Ms: number;
  readonly bodyBytes: number;
}

const PROJECT = "0f2c4a6e8b1d3f5a7c9e0b2d4f6a8c1e";

/** A queue the bench can count: what every accepted notification sent. */
type CountedQueue = CommandQueue & { all(): readonly RouterSyncMessage[] };

const silent = { info: () => undefined, warn: () => undefined, error: () => undefined };

interface Prepared {
  readonly handler: ReturnType<typeof makeHandler>;
  readonly events: readonly unknown[];
  readonly bodies: readonly string[];
  readonly queue: CountedQueue;
  readonly warmup: number;
}

/** A handler on fresh ports with `count` + warm-up accepted notifications of `size` new helpers each. */
async function prepare(options: {
  kind: "memory" | "lean";
  size: number;
  count: number;
  schemas: Schemas;
  limits: Limits;
  queue?: () => CountedQueue;
  observability?: Observability;
}): Promise<Prepared> {
  const { kind, size, count, schemas, limits } = options;
  const store = kind === "memory" ? new MemoryRoutersStore() : new LeanStore();
  const queue = options.queue?.() ?? (kind === "memory" ? new MemoryCommandQueue() : new LeanQueue());
  const log = options.observability ? appLogger(options.observability.logger) : silent;
  const handler = makeHandler({
    domain: { store, queue, clock: systemClock, limits, log },
    schemas,
    logger: log,
    idempotency: undefined,
    ...(options.observability ? { observability: options.observability } : {}),
  });
  // Each request creates `size` new helpers; spread them so no router passes its cap.
  const perRouter = Math.max(1, Math.floor(limits.maxHelpersPerRouter / size));
  const warmup = Math.min(500, Math.floor(count / 5));
  const total = count + warmup;
  const routers: string[] = [];
  for (let i = 0; i < Math.ceil(total / perRouter); i++) {
    const routerId = randomUUID();
    routers.push(routerId);
    await store.put(
      {
        routerId,
        projectId: PROJECT,
        bindings: [{ host: "node-a", namespace: "qrouter" }],
        revision: 0,
        helpers: [],
        replicas: {},
        draining: {},
        updatedAt: new Date().toISOString(),
      },
      undefined,
    );
  }
  const claims = httpApiClaims(PROJECT);
  const bodies: string[] = [];
  for (let i = 0; i < total; i++) {
    const routerId = routers[Math.floor(i / perRouter)]!;
    const base = (i % perRouter) * size;
    bodies.push(
      JSON.stringify({
        event: "created",
        conntrack_helpers: Array.from({ length: size }, (_, k) => ({
          id: randomUUID(),
          router_id: routerId,
          protocol: "tcp",
          port: 1024 + base + k,
          helper: "ftp",
        })),
      }),
    );
  }
  const events = bodies.map((body) =>
    httpApiEvent({ method: "POST", path: "/v1/notifications", body, claims }),
  );
  return { handler, events, bodies, queue, warmup };
}

/** One request through a prepared handler; milliseconds. A request that is not accepted fails the bench. */
async function timeRequest(prepared: Prepared, i: number, context: Context): Promise<number> {
  const started = performance.now();
  const response = await prepared.handler(prepared.events[i] as never, context);
  const elapsed = performance.now() - started;
  if (response.statusCode !== 202)
    throw new Error(`handler answered ${response.statusCode}: ${response.body}`);
  return elapsed;
}

export async function benchHandler(options: {
  requests: Record<number, number>;
  stores?: readonly ("memory" | "lean")[];
  /** Overrides the queue (signing rows); default: the store kind's own fake. */
  queue?: () => CountedQueue;
}): Promise<HandlerRow[]> {
  const limits = loadLimits();
  const schemas = buildSchemas(limits, new HelperCatalog());
  const rows: HandlerRow[] = [];
  for (const kind of options.stores ?? ["memory", "lean"])
    for (const [sizeText, count] of Object.entries(options.requests)) {
      const size = Number(sizeText);
      const prepared = await prepare({
        kind,
        size,
        count,
        schemas,
        limits,
        ...(options.queue ? { queue: options.queue } : {}),
      });
      const { bodies, warmup, queue } = prepared;
      const total = bodies.length;
      const context = lambdaContext();

      // Floor first on its own copy of the bodies: same work the chain must do at least.
      const floorTimes: number[] = [];
      for (let i = 0; i < total; i++) {
        const started = performance.now();
        parseNotificationBody(schemas, JSON.parse(bodies[i]!));
        if (i >= warmup) floorTimes.push(performance.now() - started);
      }
      const floorStats = summarize(floorTimes);
      const floorTotal = floorTimes.reduce((a, b) => a + b, 0);

      const times: number[] = [];
      for (let i = 0; i < total; i++) {
        const elapsed = await timeRequest(prepared, i, context);
        if (i >= warmup) times.push(elapsed);
      }
      const stats = summarize(times);
      const busy = times.reduce((a, b) => a + b, 0);
      if (queue.all().length !== total)
        throw new Error("not every accepted notification queued its snapshot");
      rows.push({
        stores: kind,
        helpers: size,
        requests: count,
        perSecond: (count / busy) * 1000,
        p50Ms: stats.p50,
        p99Ms: stats.p99,
        floorPerSecond: (count / floorTotal) * 1000,
        floorP50Ms: floorStats.p50,
        floorP99Ms: floorStats.p99,
        bodyBytes: Buffer.byteLength(bodies[0]!),
      });
    }
  return rows;
}

export interface ObservabilityRow {
  readonly helpers: number;
  readonly requests: number;
  /** The production chain: Powertools Logger (Lambda context, correlation id) and Metrics, as deployed. */
  readonly observedPerSecond: number;
  readonly observedP50Ms: number;
  readonly observedP99Ms: number;
  /** The same chain and ports without them (what the handler rows measure). */
  readonly plainPerSecond: number;
  readonly plainP50Ms: number;
  readonly plainP99Ms: number;
  /** Bytes the observed handler wrote to stdout (log and EMF lines), all requests. */
  readonly stdoutBytes: number;
}

/**
 * What metrics and logging cost on the accepted path: the no-copy handler with and without the production
 * Powertools Logger and Metrics, requests alternating between the two so the machine's noise hits both
 * alike. stdout goes to /dev/null through a real write(2) per line, as a Lambda's log pipe costs a write.
 */
export async function benchObservability(options: {
  requests: Record<number, number>;
}): Promise<ObservabilityRow[]> {
  const limits = loadLimits();
  const schemas = buildSchemas(limits, new HelperCatalog());
  const rows: ObservabilityRow[] = [];
  for (const [sizeText, count] of Object.entries(options.requests)) {
    const size = Number(sizeText);
    const plain = await prepare({ kind: "lean", size, count, schemas, limits });
    const observed = await prepare({
      kind: "lean",
      size,
      count,
      schemas,
      limits,
      observability: observability("cth-http", "http", { logLevel: "info" }),
    });
    const context = lambdaContext();
    const plainTimes: number[] = [];
    const observedTimes: number[] = [];
    const sink = openSync("/dev/null", "w");
    const write = process.stdout.write;
    let stdoutBytes = 0;
    process.stdout.write = ((chunk: string | Uint8Array) => {
      stdoutBytes += writeSync(sink, typeof chunk === "string" ? Buffer.from(chunk) : chunk);
      return true;
    }) as typeof process.stdout.write;
    try {
      for (let i = 0; i < plain.events.length; i++) {
        // Alternate which goes first, so neither always runs on a warmer cache.
        const pair = i % 2 === 0 ? [plain, observed] : [observed, plain];
        for (const prepared of pair) {
          const elapsed = await timeRequest(prepared, i, context);
          if (i >= plain.warmup) (prepared === plain ? plainTimes : observedTimes).push(elapsed);
        }
      }
    } finally {
      process.stdout.write = write;
      closeSync(sink);
    }
    const plainStats = summarize(plainTimes);
    const observedStats = summarize(observedTimes);
    const sum = (times: readonly number[]) => times.reduce((a, b) => a + b, 0);
    rows.push({
      helpers: size,
      requests: count,
      observedPerSecond: (count / sum(observedTimes)) * 1000,
      observedP50Ms: observedStats.p50,
      observedP99Ms: observedStats.p99,
      plainPerSecond: (count / sum(plainTimes)) * 1000,
      plainP50Ms: plainStats.p50,
      plainP99Ms: plainStats.p99,
      stdoutBytes,
    });
  }
  return rows;
}

export interface SigningRow {
  readonly helpers: number;
  readonly requests: number;
  /** Handler with SqsCommandQueue signing every entry (ECDSA P-256), over an SQS client that answers at once. */
  readonly signedPerSecond: number;
  readonly signedP50Ms: number;
  /** The same queue and client with a signer that returns a constant: everything but the signature. */
  readonly baselinePerSecond: number;
  readonly baselineP50Ms: number;
  /** Mean time per request, signed minus baseline: the added cost per snapshot (one per request here). */
  readonly addedUsPerSnapshot: number;
  /** keySigner.sign over this size's snapshot body alone, and the agent's verifyBody for comparison. */
  readonly signP50Us: number;
  readonly signMeanUs: number;
  readonly verifyMeanUs: number;
  readonly snapshotBytes: number;
}

/** SendMessageBatch answered in process: the bench measures our CPU, not a network. */
const instantSqs = {
  send: async (command: { input: { Entries?: { Id?: string }[] } }) => ({
    Successful: (command.input.Entries ?? []).map((entry) => ({ Id: entry.Id })),
    Failed: [],
  }),
} as unknown as SQSClient;

class CountingQueue implements CountedQueue {
  private readonly sent: RouterSyncMessage[] = [];
  private readonly inner: SqsCommandQueue;
  constructor(signer: SnapshotSigner) {
    this.inner = new SqsCommandQueue(
      instantSqs,
      (host) => `https://sqs.invalid/000000000000/cth-${host}.fifo`,
      signer,
    );
  }
  async send(host: string, commands: readonly RouterSyncMessage[]) {
    await this.inner.send(host, commands);
    this.sent.push(...commands);
  }
  all() {
    return this.sent;
  }
}

/**
 * The added cost of signing per snapshot, in one run: the handler (no-copy stores) with a signing
 * SqsCommandQueue against the same queue with a constant signer, alternated `rounds` times so drift hits
 * both alike; then signing (and verifying) a snapshot body alone.
 */
export async function benchSigning(options: {
  requests: Record<number, number>;
  rounds: number;
  signs: number;
}): Promise<SigningRow[]> {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const pem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
  const signer = keySigner("bench-key", pem);
  const constant: SnapshotSigner = { sign: async () => ({ keyId: "bench-key", signature: "AAAA" }) };
  const keys = new Map([
    ["bench-key", publicKeyFromPem(publicKey.export({ format: "pem", type: "spki" }).toString())],
  ]);
  const rows: SigningRow[] = [];
  for (const [sizeText, count] of Object.entries(options.requests)) {
    const size = Number(sizeText);
    const signed: HandlerRow[] = [];
    const baseline: HandlerRow[] = [];
    for (let round = 0; round < options.rounds; round++) {
      const one = { [size]: count };
      baseline.push(
        ...(await benchHandler({
          requests: one,
          stores: ["lean"],
          queue: () => new CountingQueue(constant),
        })),
      );
      signed.push(
        ...(await benchHandler({ requests: one, stores: ["lean"], queue: () => new CountingQueue(signer) })),
      );
    }
    const meanMs = (list: HandlerRow[]) => median(list.map((row) => 1000 / row.perSecond));
    const body = JSON.stringify({
      v: 1,
      kind: "router-sync",
      router_id: randomUUID(),
      revision: 42,
      helpers: Array.from({ length: size }, (_, k) => ({
        id: randomUUID(),
        protocol: "tcp",
        port: 1024 + k,
        helper: "ftp",
      })),
      correlation_id: randomUUID(),
      issued_at: new Date().toISOString(),
    });
    const signTimes: number[] = [];
    const verifyTimes: number[] = [];
    for (let i = 0; i < options.signs; i++) {
      const started = performance.now();
      const { signature } = await signer.sign(body);
      const signedAt = performance.now();
      if (!verifyBody(keys, body, "bench-key", signature).ok)
        throw new Error("bench signature does not verify");
      verifyTimes.push(performance.now() - signedAt);
      signTimes.push(signedAt - started);
    }
    const sign = summarize(signTimes);
    rows.push({
      helpers: size,
      requests: count,
      signedPerSecond: 1000 / meanMs(signed),
      signedP50Ms: median(signed.map((row) => row.p50Ms)),
      baselinePerSecond: 1000 / meanMs(baseline),
      baselineP50Ms: median(baseline.map((row) => row.p50Ms)),
      addedUsPerSnapshot: (meanMs(signed) - meanMs(baseline)) * 1000,
      signP50Us: sign.p50 * 1000,
      signMeanUs: sign.mean * 1000,
      verifyMeanUs: summarize(verifyTimes).mean * 1000,
      snapshotBytes: Buffer.byteLength(body),
    });
  }
  return rows;
}
