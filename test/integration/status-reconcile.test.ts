/**
 * The status consumer and the reconciler against dynalite and fauxqs through the real AWS SDK, with SQS
 * events in the shape Lambda delivers (test/fixtures/aws-events/sqs-base.json).
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { Logger } from "@aws-lambda-powertools/logger";
import type { SQSEvent, SQSRecord } from "aws-lambda";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { makeHandler as makeReconcileHandler } from "../../functions/reconcile.ts";
import { makeHandler as makeStatusHandler, type StatusDeps } from "../../functions/status.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { deleteRouter, upsertRouter } from "../../lib/domain/services.ts";
import type { RouterRecord, RoutersStore, StoredHelper } from "../../lib/ports.ts";
import { buildSchemas } from "../../lib/schemas/index.ts";
import { lambdaContext } from "../support/events.ts";
import { admin, fixedClock, qrouters, replica, storedHelper } from "../support/factories.ts";
import { type Core, startCore } from "./core-harness.ts";

const fixture = JSON.parse(
  readFileSync(new URL("../fixtures/aws-events/sqs-base.json", import.meta.url), "utf8"),
) as SQSEvent;

const TEMPLATE = "cth-test-node-{node}-status";
const arnOf = (host: string) => `arn:aws:sqs:us-east-1:000000000000:${TEMPLATE.replace("{node}", host)}`;

/** Records as Lambda's event source mapping delivers them from `host`'s own status queue. */
function sqsEventFrom(host: string, ...bodies: unknown[]): SQSEvent {
  const template = fixture.Records[0] as SQSRecord;
  return {
    Records: bodies.map((body) => ({
      ...template,
      messageId: randomUUID(),
      eventSourceARN: arnOf(host),
      body: typeof body === "string" ? body : JSON.stringify(body),
    })),
  };
}

const sqsEvent = (...bodies: unknown[]) => sqsEventFrom("node-a", ...bodies);

/** A report whose digest says the kernel holds `helpers` (the desired set by default). */
const applied = (
  router: RouterRecord,
  revision: number,
  helpers: readonly StoredHelper[] = router.helpers,
) => ({
  v: 1,
  kind: "applied",
  router_id: router.routerId,
  revision,
  digest: helperSetDigest(helpers),
  rules: { ipv4: helpers.length, ipv6: helpers.length },
  errors: [],
});

const silentLogger = new Logger({ serviceName: "cth-status-test", logLevel: "CRITICAL" });

let core: Core;
let counted: string[];

function statusDeps(store: RoutersStore = core.store): StatusDeps {
  return {
    store,
    queue: core.queue,
    clock: fixedClock("2026-11-24T06:00:00.000Z"),
    schemas: buildSchemas(core.config.limits, core.config.catalog),
    logger: silentLogger,
    statusQueueNameTemplate: TEMPLATE,
    metrics: { count: (name) => counted.push(name) },
  };
}

const runStatus = (event: SQSEvent, deps = statusDeps()) => makeStatusHandler(deps)(event, lambdaContext());

beforeAll(async () => {
  core = await startCore();
});
beforeEach(() => {
  counted = [];
});

const replicaOf = async (routerId: string, host = "node-a") =>
  (await core.store.get(routerId))?.replicas[host];
afterAll(async () => {
  await core?.stop();
});

describe("status consumer", () => {
  it("records what the router's own host reports, and the kernel holding the desired set is in sync", async () => {
    const router = await core.seedRouter({ revision: 3, helpers: [storedHelper()] });
    const result = await runStatus(sqsEvent(applied(router, 3)));
    expect(result.batchItemFailures).toEqual([]);
    expect(await replicaOf(router.routerId)).toMatchObject({ revision: 3, content: "match", errors: [] });
    expect(counted).toEqual([]);
  });

  it("takes the host from the queue, never from the body: node B's agent cannot report for node A", async () => {
    const router = await core.seedRouter({
      bindings: qrouters("node-a"),
      revision: 2,
      helpers: [storedHelper()],
    });
    // The report names node-a in its body but arrives on node-b's queue.
    const forged = { ...applied(router, 2), host: "node-a", errors: [{ code: "x", message: "chosen text" }] };
    await runStatus(sqsEventFrom("node-b", forged, { ...forged, host: undefined }));
    expect((await core.store.get(router.routerId))?.replicas).toEqual({});
    expect(counted).toEqual(["UnboundReports", "UnboundReports"]);
  });

  it("ignores a body whose host disagrees with the queue it came in on", async () => {
    const router = await core.seedRouter({
      bindings: qrouters("node-a"),
      revision: 1,
      helpers: [storedHelper()],
    });
    await runStatus(sqsEventFrom("node-a", { ...applied(router, 1), host: "node-b" }));
    expect((await core.store.get(router.routerId))?.replicas).toEqual({});
    expect(counted).toEqual(["UnboundReports"]);
  });

  it("drops records from a queue that names no node", async () => {
    const router = await core.seedRouter({ revision: 1, helpers: [storedHelper()] });
    const event = sqsEvent(applied(router, 1));
    event.Records[0] = { ...event.Records[0]!, eventSourceARN: "arn:aws:sqs:us-east-1:000000000000:other" };
    await core.expectNothingWritten(() => runStatus(event));
    expect(counted).toEqual(["UnboundReports"]);
  });

  it("a digest that differs from the desired set is a content mismatch: not in sync, counted, re-sent", async () => {
    const wanted = storedHelper();
    const router = await core.seedRouter({ bindings: qrouters("node-a"), revision: 4, helpers: [wanted] });
    const other = storedHelper({ id: wanted.id, port: wanted.port + 1 });
    await runStatus(sqsEvent(applied(router, 4, [other])));
    const status = await replicaOf(router.routerId);
    expect(status).toMatchObject({ revision: 4, content: "mismatch" });
    expect(status?.errors.map((error) => error.code)).toEqual(["content_mismatch"]);
    expect(counted).toEqual(["ContentMismatches"]);
    await core.queued("node-a");
    await reconcileAt("2026-11-24T06:00:01.000Z");
    expect((await core.queued("node-a")).map((m) => [m.router_id, m.revision])).toContainEqual([
      router.routerId,
      4,
    ]);
  });

  it("a kernel that lacks a helper's module holds the rest: partial, not in sync, not an alarm", async () => {
    const ftp = storedHelper();
    const irc = storedHelper({ helper: "irc" });
    const router = await core.seedRouter({ revision: 1, helpers: [ftp, irc] });
    const errors = [{ helper_id: irc.id, code: "helper_unavailable", message: "kernel lacks irc" }];
    await runStatus(sqsEvent({ ...applied(router, 1, [ftp]), errors }));
    expect(await replicaOf(router.routerId)).toMatchObject({ content: "partial", errors });
    expect(counted).toEqual([]);
  });

  it("ignores a report of a revision the router never had", async () => {
    const router = await core.seedRouter({ revision: 2 });
    await runStatus(sqsEvent(applied(router, 9)));
    expect((await core.store.get(router.routerId))?.replicas).toEqual({});
    expect(counted).toEqual(["UnboundReports"]);
  });

  it("never lowers a host's revision when reports arrive out of order", async () => {
    const router = await core.seedRouter({ revision: 5 });
    await runStatus(sqsEvent(applied(router, 5), applied(router, 4)));
    expect((await replicaOf(router.routerId))?.revision).toBe(5);
  });

  it("counts and drops invalid records without failing the batch or writing anything", async () => {
    const router = await core.seedRouter({ revision: 1 });
    const event = sqsEvent(
      "not json",
      { ...applied(router, 1), extra: true },
      { ...applied(router, 1), digest: "not-a-digest" },
      { ...applied(router, 1), namespace: "fip" },
      { v: 2, kind: "applied" },
    );
    const result = await core.expectNothingWritten(() => runStatus(event));
    expect(result.batchItemFailures).toEqual([]);
    expect(counted).toEqual(event.Records.map(() => "InvalidStatusMessages"));
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
    const event = sqsEvent(applied(healthy, 1), applied(broken, 1));
    const result = await runStatus(event, statusDeps(flaky));
    expect(result.batchItemFailures).toEqual([{ itemIdentifier: event.Records[1]?.messageId }]);
    expect((await replicaOf(healthy.routerId))?.revision).toBe(1);
  });

  it("answers a resync request with the current snapshot of every router on that host only", async () => {
    await core.queued("node-a");
    await core.queued("node-b");
    const a1 = await core.seedRouter({
      bindings: qrouters("node-a"),
      revision: 4,
      helpers: [storedHelper(), storedHelper()],
    });
    const a2 = await core.seedRouter({
      bindings: qrouters("node-a"),
      revision: 1,
      helpers: [storedHelper()],
    });
    await core.seedRouter({ bindings: qrouters("node-b"), revision: 1, helpers: [storedHelper()] });
    await runStatus(sqsEvent({ v: 1, kind: "resync-request" }));
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

  it("a resync request naming another host re-sends nothing", async () => {
    await core.queued("node-b");
    await core.seedRouter({ bindings: qrouters("node-b"), revision: 1, helpers: [storedHelper()] });
    await runStatus(sqsEventFrom("node-a", { v: 1, kind: "resync-request", host: "node-b" }));
    expect(await core.queued("node-b")).toEqual([]);
    expect(counted).toEqual(["UnboundReports"]);
  });
});

const reconcileAt = (iso: string, id: string = randomUUID()) =>
  makeReconcileHandler({
    store: core.store,
    queue: core.queue,
    clock: fixedClock(iso),
    logger: silentLogger,
  })({ id } as never, lambdaContext());

describe("reconciler", () => {
  it("re-sends routers that are behind and leaves fresh, in-sync routers alone", async () => {
    await core.queued("node-b");
    const behind = await core.seedRouter({
      bindings: qrouters("node-b"),
      revision: 3,
      replicas: { "node-b": replica(2, { content: "behind" }) },
      helpers: [storedHelper()],
    });
    const inSync = await core.seedRouter({
      bindings: qrouters("node-b"),
      revision: 2,
      replicas: { "node-b": replica(2, { at: "2026-11-24T05:59:00.000Z" }) },
    });
    await reconcileAt("2026-11-24T06:00:00.000Z");
    const ids = (await core.queued("node-b")).map((message) => message.router_id);
    expect(ids).toContain(behind.routerId);
    expect(ids).not.toContain(inSync.routerId);
  });

  it("leaves an in-sync router alone however long its agent has been silent (drift checks and resync heal it)", async () => {
    await core.queued("node-a");
    const silent = await core.seedRouter({
      bindings: qrouters("node-a"),
      revision: 7,
      replicas: { "node-a": replica(7, { at: "2026-11-24T05:00:00.000Z" }) },
    });
    await reconcileAt("2026-11-24T06:00:00.000Z");
    expect((await core.queued("node-a")).map((m) => m.router_id)).not.toContain(silent.routerId);
  });
});

describe("reconciler and reports together", () => {
  it("stops re-sending once the agent reports the re-sent revision again", async () => {
    await core.queued("node-a");
    const router = await core.seedRouter({
      bindings: qrouters("node-a"),
      revision: 2,
      replicas: { "node-a": replica(1, { content: "behind" }) },
    });
    await reconcileAt("2026-11-24T06:00:00.000Z");
    expect((await core.queued("node-a")).map((m) => m.router_id)).toContain(router.routerId);
    await runStatus(sqsEvent(applied(router, 2)));
    await reconcileAt("2026-11-24T06:00:10.000Z");
    expect((await core.queued("node-a")).map((m) => m.router_id)).not.toContain(router.routerId);
  });

  it("never re-sends a router that was registered but never given a helper", async () => {
    await core.queued("node-b");
    const empty = await core.seedRouter({ bindings: qrouters("node-b"), revision: 0 });
    await reconcileAt("2026-11-24T06:00:00.000Z");
    expect((await core.queued("node-b")).map((m) => m.router_id)).not.toContain(empty.routerId);
  });

  it("a resync re-send is delivered even right after the same revision was sent", async () => {
    await core.queued("node-a");
    const router = await core.seedRouter({
      bindings: qrouters("node-a"),
      revision: 1,
      helpers: [storedHelper()],
    });
    const snapshot = (await core.store.get(router.routerId))!;
    const { buildSnapshot } = await import("../../lib/domain/snapshot.ts");
    await core.queue.send("node-a", [buildSnapshot(snapshot, snapshot.bindings[0]!, "first", fixedClock())]);
    expect((await core.queued("node-a")).map((m) => m.router_id)).toEqual([router.routerId]);
    await runStatus(sqsEvent({ v: 1, kind: "resync-request", host: "node-a" }));
    expect((await core.queued("node-a")).map((m) => m.router_id)).toContain(router.routerId);
  });

  it("a manual invoke with a free-text id still sends snapshots the agents accept", async () => {
    await core.queued("node-a");
    const router = await core.seedRouter({
      bindings: qrouters("node-a"),
      revision: 1,
      helpers: [storedHelper()],
    });
    await reconcileAt("2026-11-24T06:00:00.000Z", "re-send please, ops ticket #42");
    const sent = (await core.queued("node-a")).find((m) => m.router_id === router.routerId);
    expect(sent).toBeDefined();
    expect(buildSchemas(core.config.limits, core.config.catalog).routerSync.safeParse(sent).success).toBe(
      true,
    );
  });
});

/** The host's queued snapshots of one router (the table holds other tests' routers too). */
const queuedFor = async (host: string, routerId: string) =>
  (await core.queued(host)).filter((message) => message.router_id === routerId);

describe("hosts a router left, and deleted routers", () => {
  it("re-sends a deleted router's empty snapshot until its host confirms it, then stops", async () => {
    await core.queued("node-a");
    const router = await core.seedRouter({
      bindings: qrouters("node-a"),
      revision: 2,
      helpers: [storedHelper()],
    });
    await deleteRouter(core.deps().domain, admin(), router.routerId, "delete-1");
    expect(
      (await queuedFor("node-a", router.routerId)).map((m) => [m.router_id, m.revision, m.helpers.length]),
    ).toEqual([[router.routerId, 3, 0]]);
    // That empty snapshot was lost (purged from a DLQ): the reconciler sends it again, sweep after sweep.
    for (const at of ["2026-11-24T06:00:00.000Z", "2026-11-24T06:05:00.000Z"]) {
      await reconcileAt(at);
      expect(
        (await queuedFor("node-a", router.routerId)).map((m) => [m.router_id, m.revision, m.helpers.length]),
      ).toEqual([[router.routerId, 3, 0]]);
    }
    // A report from another host, or of a non-empty set, confirms nothing.
    await runStatus(sqsEventFrom("node-b", { ...applied(router, 3, []) }));
    await runStatus(sqsEvent(applied(router, 3, [storedHelper()])));
    expect((await core.store.tombstone(router.routerId))?.draining).toEqual({ "node-a": 3 });
    await runStatus(sqsEvent(applied(router, 3, [])));
    expect((await core.store.tombstone(router.routerId))?.draining).toEqual({});
    await reconcileAt("2026-11-24T06:10:00.000Z");
    expect((await core.queued("node-a")).map((m) => m.router_id)).not.toContain(router.routerId);
  });

  it("a move keeps re-sending the old host its empty snapshot until it confirms", async () => {
    await core.queued("node-a");
    await core.queued("node-b");
    const router = await core.seedRouter({
      bindings: qrouters("node-a"),
      revision: 1,
      helpers: [storedHelper()],
    });
    await upsertRouter(
      core.deps().domain,
      admin(),
      router.routerId,
      { project_id: router.projectId, bindings: qrouters("node-b") },
      "move-1",
    );
    expect((await queuedFor("node-a", router.routerId)).map((m) => [m.revision, m.helpers.length])).toEqual([
      [2, 0],
    ]);
    expect((await queuedFor("node-b", router.routerId)).map((m) => [m.revision, m.helpers.length])).toEqual([
      [2, 1],
    ]);
    await runStatus(sqsEventFrom("node-b", applied(router, 2)));
    await reconcileAt("2026-11-24T06:00:00.000Z");
    expect((await queuedFor("node-a", router.routerId)).map((m) => [m.revision, m.helpers.length])).toEqual([
      [2, 0],
    ]);
    expect((await core.queued("node-b")).map((m) => m.router_id)).not.toContain(router.routerId);
    await runStatus(sqsEvent(applied(router, 2, [])));
    expect((await core.store.get(router.routerId))?.draining).toEqual({});
    await reconcileAt("2026-11-24T06:01:00.000Z");
    expect((await core.queued("node-a")).map((m) => m.router_id)).not.toContain(router.routerId);
  });
});
