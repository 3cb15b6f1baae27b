/**
 * (b) Handler CPU path: POST /v1/notifications through the real middy chain of functions/http.ts (byte cap,
 * JSON, claims, schema, authorization, merge, conditional write, snapshot) on the in-memory stores, inside the
 * recorded HTTP API v2 envelope. Floor, same run, same bodies: JSON.parse plus the zod parse of the body.
 */
import { randomUUID } from "node:crypto";
import { makeHandler } from "../functions/http.ts";
import { HelperCatalog } from "../lib/catalog.ts";
import { loadLimits } from "../lib/config.ts";
import { RevisionConflictError } from "../lib/errors.ts";
import type { CommandQueue, RouterRecord, RoutersStore } from "../lib/ports.ts";
import { systemClock } from "../lib/ports.ts";
import type { RouterSyncMessage } from "../lib/schemas/index.ts";
import { buildSchemas, parseNotificationBody } from "../lib/schemas/index.ts";
import { httpApiClaims, httpApiEvent, lambdaContext } from "../test/support/events.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../test/support/memory.ts";
import { summarize } from "./stats.ts";

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
  async lastRevision(id: string) {
    return this.rows.get(id)?.revision ?? 0;
  }
  async recordApplied() {
    return false;
  }
  async listByHost() {
    return [];
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

export async function benchHandler(options: {
  requests: Record<number, number>;
  stores?: readonly ("memory" | "lean")[];
}): Promise<HandlerRow[]> {
  const limits = loadLimits();
  const schemas = buildSchemas(limits, new HelperCatalog());
  const silent = { info: () => undefined, warn: () => undefined, error: () => undefined };
  const rows: HandlerRow[] = [];
  for (const kind of options.stores ?? ["memory", "lean"])
    for (const [sizeText, count] of Object.entries(options.requests)) {
      const size = Number(sizeText);
      const store = kind === "memory" ? new MemoryRoutersStore() : new LeanStore();
      const queue = kind === "memory" ? new MemoryCommandQueue() : new LeanQueue();
      const handler = makeHandler({
        domain: { store, queue, clock: systemClock, limits, log: silent },
        schemas,
        logger: silent,
        idempotency: undefined,
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
            host: "node-a",
            revision: 0,
            helpers: [],
            appliedRevision: 0,
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
        const started = performance.now();
        const response = await handler(events[i]! as never, context);
        const elapsed = performance.now() - started;
        if (response.statusCode !== 202)
          throw new Error(`handler answered ${response.statusCode}: ${response.body}`);
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
