/**
 * The status consumer and the reconciler against dynalite and fauxqs through the real AWS SDK, with SQS
 * events in the shape Lambda delivers (test/fixtures/aws-events/sqs-base.json).
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { Logger } from "@aws-lambda-powertools/logger";
import type { SQSEvent, SQSRecord } from "aws-lambda";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeHandler as makeReconcileHandler } from "../../functions/reconcile.ts";
import { makeHandler as makeStatusHandler, type StatusDeps } from "../../functions/status.ts";
import type { RoutersStore } from "../../lib/ports.ts";
import { buildSchemas } from "../../lib/schemas/index.ts";
import { lambdaContext } from "../support/events.ts";
import { fixedClock, storedHelper } from "../support/factories.ts";
import { type Core, startCore } from "./core-harness.ts";

const fixture = JSON.parse(
  readFileSync(new URL("../fixtures/aws-events/sqs-base.json", import.meta.url), "utf8"),
) as SQSEvent;

function sqsEvent(...bodies: unknown[]): SQSEvent {
  const template = fixture.Records[0] as SQSRecord;
  return {
    Records: bodies.map((body) => ({
      ...template,
      messageId: randomUUID(),
      body: typeof body === "string" ? body : JSON.stringify(body),
    })),
  };
}

const applied = (routerId: string, revision: number, host = "node-a") => ({
  v: 1,
  kind: "applied",
  router_id: routerId,
  revision,
  host,
  rules: { ipv4: 1, ipv6: 1 },
  errors: [],
});

const silentLogger = new Logger({ serviceName: "cth-status-test", logLevel: "CRITICAL" });

let core: Core;
let invalid: string[];

function statusDeps(store: RoutersStore = core.store): StatusDeps {
  return {
    store,
    queue: core.queue,
    clock: fixedClock("2026-11-24T06:00:00.000Z"),
    schemas: buildSchemas(core.config.limits, core.config.catalog),
    logger: silentLogger,
    onInvalid: (id) => invalid.push(id),
  };
}

const runStatus = (event: SQSEvent, deps = statusDeps()) => makeStatusHandler(deps)(event, lambdaContext());

beforeAll(async () => {
  core = await startCore();
});
afterAll(async () => {
  await core?.stop();
});

describe("status consumer", () => {
  it("records an applied revision reported by the router's own host", async () => {
    const router = await core.seedRouter({ revision: 3, helpers: [storedHelper()] });
    const result = await runStatus(sqsEvent(applied(router.routerId, 3)));
    expect(result.batchItemFailures).toEqual([]);
    const stored = await core.store.get(router.routerId);
    expect(stored?.appliedRevision).toBe(3);
    expect(stored?.appliedHost).toBe("node-a");
  });

  it("ignores a report from a host that does not carry the router", async () => {
    const router = await core.seedRouter({ revision: 2 });
    await runStatus(sqsEvent(applied(router.routerId, 2, "node-b")));
    expect((await core.store.get(router.routerId))?.appliedRevision).toBe(0);
  });

  it("ignores a report of a revision the router never had", async () => {
    const router = await core.seedRouter({ revision: 2 });
    await runStatus(sqsEvent(applied(router.routerId, 9)));
    expect((await core.store.get(router.routerId))?.appliedRevision).toBe(0);
  });

  it("never lowers the applied revision when reports arrive out of order", async () => {
    const router = await core.seedRouter({ revision: 5 });
    await runStatus(sqsEvent(applied(router.routerId, 5), applied(router.routerId, 4)));
    expect((await core.store.get(router.routerId))?.appliedRevision).toBe(5);
  });

  it("counts and drops invalid records without failing the batch or writing anything", async () => {
    invalid = [];
    const router = await core.seedRouter({ revision: 1 });
    const event = sqsEvent(
      "not json",
      { ...applied(router.routerId, 1), extra: true },
      { v: 2, kind: "applied" },
    );
    const result = await core.expectNothingWritten(() => runStatus(event));
    expect(result.batchItemFailures).toEqual([]);
    expect(invalid).toEqual(event.Records.map((record) => record.messageId));
  });

  it("returns only the records that hit a transient fault for retry", async () => {
    const healthy = await core.seedRouter({ revision: 1 });
    const broken = await core.seedRouter({ revision: 1 });
    const flaky: RoutersStore = Object.create(core.store, {
      get: {
        value: async (id: string) => {
          if (id === broken.routerId) throw new Error("throttled");
          return core.store.get(id);
        },
      },
    });
    const event = sqsEvent(applied(healthy.routerId, 1), applied(broken.routerId, 1));
    const result = await runStatus(event, statusDeps(flaky));
    expect(result.batchItemFailures).toEqual([{ itemIdentifier: event.Records[1]?.messageId }]);
    expect((await core.store.get(healthy.routerId))?.appliedRevision).toBe(1);
  });

  it("answers a resync request with the current snapshot of every router on that host only", async () => {
    await core.queued("node-a");
    await core.queued("node-b");
    const a1 = await core.seedRouter({
      host: "node-a",
      revision: 4,
      helpers: [storedHelper(), storedHelper()],
    });
    const a2 = await core.seedRouter({ host: "node-a", revision: 1, helpers: [storedHelper()] });
    await core.seedRouter({ host: "node-b", revision: 1, helpers: [storedHelper()] });
    await runStatus(sqsEvent({ v: 1, kind: "resync-request", host: "node-a" }));
    const sent = await core.queued("node-a");
    const mine = sent.filter((message) => [a1.routerId, a2.routerId].includes(message.router_id));
    expect(
      mine.map((message) => [message.router_id, message.revision, message.helpers.length]).sort(),
    ).toEqual(
      [
        [a1.routerId, 4, 2],
        [a2.routerId, 1, 1],
      ].sort(),
    );
    expect(await core.queued("node-b")).toEqual([]);
  });
});

const reconcileAt = (iso: string) =>
  makeReconcileHandler({
    store: core.store,
    queue: core.queue,
    clock: fixedClock(iso),
    staleAfterSeconds: 900,
    logger: silentLogger,
  })({ id: randomUUID() } as never, lambdaContext());

describe("reconciler", () => {
  it("re-sends routers that are behind and leaves fresh, in-sync routers alone", async () => {
    await core.queued("node-b");
    const behind = await core.seedRouter({
      host: "node-b",
      revision: 3,
      appliedRevision: 2,
      helpers: [storedHelper()],
    });
    const inSync = await core.seedRouter({
      host: "node-b",
      revision: 2,
      appliedRevision: 2,
      appliedAt: "2026-11-24T05:59:00.000Z",
    });
    await reconcileAt("2026-11-24T06:00:00.000Z");
    const ids = (await core.queued("node-b")).map((message) => message.router_id);
    expect(ids).toContain(behind.routerId);
    expect(ids).not.toContain(inSync.routerId);
  });

  it("re-sends an in-sync router whose agent has been silent past the bound", async () => {
    await core.queued("node-a");
    const silent = await core.seedRouter({
      host: "node-a",
      revision: 7,
      appliedRevision: 7,
      appliedAt: "2026-11-24T05:00:00.000Z",
    });
    await reconcileAt("2026-11-24T06:00:00.000Z");
    const resent = (await core.queued("node-a")).find((message) => message.router_id === silent.routerId);
    expect(resent?.revision).toBe(7);
  });
});

describe("reconciler and reports together", () => {
  it("stops re-sending once the agent reports the re-sent revision again", async () => {
    await core.queued("node-a");
    const router = await core.seedRouter({
      host: "node-a",
      revision: 2,
      appliedRevision: 2,
      appliedAt: "2026-11-24T04:00:00.000Z",
    });
    await reconcileAt("2026-11-24T06:00:00.000Z");
    expect((await core.queued("node-a")).map((m) => m.router_id)).toContain(router.routerId);
    await runStatus(sqsEvent(applied(router.routerId, 2)));
    await reconcileAt("2026-11-24T06:00:10.000Z");
    expect((await core.queued("node-a")).map((m) => m.router_id)).not.toContain(router.routerId);
  });

  it("never re-sends a router that was registered but never given a helper", async () => {
    await core.queued("node-b");
    const empty = await core.seedRouter({ host: "node-b", revision: 0 });
    await reconcileAt("2026-11-24T06:00:00.000Z");
    expect((await core.queued("node-b")).map((m) => m.router_id)).not.toContain(empty.routerId);
  });

  it("a resync re-send is delivered even right after the same revision was sent", async () => {
    await core.queued("node-a");
    const router = await core.seedRouter({ host: "node-a", revision: 1, helpers: [storedHelper()] });
    const snapshot = (await core.store.get(router.routerId))!;
    const { buildSnapshot } = await import("../../lib/domain/snapshot.ts");
    await core.queue.send("node-a", [buildSnapshot(snapshot, "first", fixedClock())]);
    expect((await core.queued("node-a")).map((m) => m.router_id)).toEqual([router.routerId]);
    await runStatus(sqsEvent({ v: 1, kind: "resync-request", host: "node-a" }));
    expect((await core.queued("node-a")).map((m) => m.router_id)).toContain(router.routerId);
  });
});
