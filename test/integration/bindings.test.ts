/**
 * Routers on several hosts (L3 HA replicas, DVR snat nodes): registration, fan-out, binding changes and
 * status per replica, through the real HTTP and status handlers against dynalite and fauxqs.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { Logger } from "@aws-lambda-powertools/logger";
import type { SQSEvent, SQSRecord } from "aws-lambda";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeHandler as makeEventsHandler } from "../../functions/events.ts";
import { makeHandler as makeReconcileHandler } from "../../functions/reconcile.ts";
import { makeHandler as makeStatusHandler } from "../../functions/status.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import type { StoredHelper } from "../../lib/ports.ts";
import { buildSchemas, type RouterSyncMessage } from "../../lib/schemas/index.ts";
import { eventBridgeEvent, httpApiClaims, httpApiEvent, lambdaContext } from "../support/events.ts";
import { fixedClock, newId, PROJECT_A, qrouters, snats, storedHelper } from "../support/factories.ts";
import { bodyOf, type Core, startCore } from "./core-harness.ts";

const sqsFixture = JSON.parse(
  readFileSync(new URL("../fixtures/aws-events/sqs-base.json", import.meta.url), "utf8"),
) as SQSEvent;
const TEMPLATE = "cth-test-node-{node}-status";

const adminClaims = httpApiClaims("operators", ["admin"]);
const memberClaims = httpApiClaims(PROJECT_A);
const silentLogger = new Logger({ serviceName: "cth-bindings-test", logLevel: "CRITICAL" });

let core: Core;

beforeAll(async () => {
  core = await startCore();
});
afterAll(async () => {
  await core?.stop();
});

const put = (routerId: string, body: unknown) =>
  core.call(httpApiEvent({ method: "PUT", path: `/v1/routers/${routerId}`, body, claims: adminClaims }));

const state = async (routerId: string, claims: Record<string, unknown> = adminClaims) =>
  bodyOf(
    await core.call(
      httpApiEvent({ method: "GET", path: `/v1/routers/${routerId}/conntrack-helpers`, claims }),
    ),
  );

async function addHelper(routerId: string, helper: StoredHelper = storedHelper()): Promise<StoredHelper> {
  const result = await core.call(
    httpApiEvent({
      method: "POST",
      path: "/v1/notifications",
      claims: memberClaims,
      body: { event: "created", conntrack_helpers: [{ ...helper, router_id: routerId }] },
    }),
  );
  expect(result.statusCode).toBe(202);
  return helper;
}

/** A router registered on `bindings` with one helper; every queue drained afterwards. */
async function registered(bindings: unknown): Promise<{ routerId: string; helper: StoredHelper }> {
  const routerId = newId();
  expect((await put(routerId, { project_id: PROJECT_A, bindings })).statusCode).toBe(201);
  const helper = await addHelper(routerId);
  for (const host of ["node-a", "node-b", "node-c"]) await core.queued(host);
  return { routerId, helper };
}

/** A report as `host`'s agent sends it on its own status queue. */
function reportFrom(host: string, body: Record<string, unknown>): SQSEvent {
  const template = sqsFixture.Records[0] as SQSRecord;
  return {
    Records: [
      {
        ...template,
        messageId: randomUUID(),
        eventSourceARN: `arn:aws:sqs:us-east-1:000000000000:${TEMPLATE.replace("{node}", host)}`,
        body: JSON.stringify(body),
      },
    ],
  };
}

const applied = (
  routerId: string,
  revision: number,
  helpers: readonly StoredHelper[],
  extra: Record<string, unknown> = {},
) => ({
  v: 1,
  kind: "applied",
  router_id: routerId,
  revision,
  digest: helperSetDigest(helpers),
  rules: { ipv4: helpers.length, ipv6: helpers.length },
  errors: [],
  ...extra,
});

const runStatus = (event: SQSEvent) =>
  makeStatusHandler({
    store: core.store,
    queue: core.queue,
    clock: fixedClock("2026-12-02T06:00:00.000Z"),
    schemas: buildSchemas(core.config.limits, core.config.catalog),
    logger: silentLogger,
    statusQueueNameTemplate: TEMPLATE,
    metrics: { count: () => undefined },
  })(event, lambdaContext());

/** The account the events function accepts lifecycle events from in these tests. */
const PUBLISHER = "123456789012";

/** The events function, and the error codes of the events it parked. */
function eventsFunction() {
  const parked: string[] = [];
  const handler = makeEventsHandler({
    ...core.deps(),
    metrics: { parked: (_type, code) => parked.push(code) },
    accounts: { lifecycle: new Set([PUBLISHER]), notification: new Set([PUBLISHER]) },
  });
  return { handler, parked };
}

/** One reconciler sweep, as the schedule runs it. */
const runReconcile = () =>
  makeReconcileHandler({
    store: core.store,
    queue: core.queue,
    clock: fixedClock("2026-12-02T06:00:00.000Z"),
    logger: silentLogger,
  })({} as never, lambdaContext());

const revisionOf = async (routerId: string) => (await core.store.get(routerId))!.revision;

const only = (messages: RouterSyncMessage[], routerId: string) =>
  messages.filter((message) => message.router_id === routerId);

describe("registering bindings", () => {
  it("an HA router on two hosts: both bound as qrouter, and the response lists them", async () => {
    const routerId = newId();
    const result = await put(routerId, { project_id: PROJECT_A, bindings: qrouters("node-a", "node-b") });
    expect(result.statusCode).toBe(201);
    expect(bodyOf(result)).toMatchObject({ bindings: qrouters("node-a", "node-b"), revision: 0 });
    expect((await core.store.get(routerId))?.bindings).toEqual(qrouters("node-a", "node-b"));
  });

  it("`host` alone still means one qrouter binding", async () => {
    const routerId = newId();
    expect((await put(routerId, { project_id: PROJECT_A, host: "node-c" })).statusCode).toBe(201);
    expect((await core.store.get(routerId))?.bindings).toEqual(qrouters("node-c"));
  });

  it("EventBridge Router Upserted accepts the same bindings", async () => {
    const routerId = newId();
    const { handler } = eventsFunction();
    const event = eventBridgeEvent(
      "Router Upserted",
      { router_id: routerId, project_id: PROJECT_A, bindings: snats("node-a", "node-b") },
      { account: PUBLISHER },
    );
    expect(await handler(event, lambdaContext())).toMatchObject({ outcome: "applied" });
    expect((await core.store.get(routerId))?.bindings).toEqual(snats("node-a", "node-b"));
  });

  it.each([
    ["no bindings", { bindings: [] }],
    [
      "more than 8",
      { bindings: Array.from({ length: 9 }, (_, i) => ({ host: `n${i}`, namespace: "snat" })) },
    ],
    ["an unknown kind", { bindings: [{ host: "node-a", namespace: "fip" }] }],
    ["host and bindings together", { host: "node-a", bindings: qrouters("node-b") }],
  ])("a Router Upserted event with %s is parked and changes nothing", async (_name, placement) => {
    const { handler, parked } = eventsFunction();
    const event = eventBridgeEvent(
      "Router Upserted",
      { router_id: newId(), project_id: PROJECT_A, ...placement },
      { account: PUBLISHER },
    );
    expect(await core.expectNothingWritten(() => handler(event, lambdaContext()))).toMatchObject({
      outcome: "parked",
    });
    expect(parked).toEqual(["validation_failed"]);
  });

  it("a Router Upserted event with bad bindings is parked and changes nothing", async () => {
    const { handler, parked } = eventsFunction();
    const routerId = newId();
    const event = eventBridgeEvent(
      "Router Upserted",
      { router_id: routerId, project_id: PROJECT_A, bindings: [...snats("node-a"), ...qrouters("node-a")] },
      { account: PUBLISHER },
    );
    const outcome = await core.expectNothingWritten(() => handler(event, lambdaContext()));
    expect(outcome).toMatchObject({ outcome: "parked" });
    expect(parked).toEqual(["validation_failed"]);
  });

  it("a host outside the deployed nodes (CTH_NODES) is a 422 on its path and changes nothing", async () => {
    const http = core.deps();
    const deployed = { ...http, domain: { ...http.domain, nodes: new Set(["node-a", "node-b"]) } };
    const routerId = newId();
    const result = await core.expectNothingWritten(() =>
      core.call(
        httpApiEvent({
          method: "PUT",
          path: `/v1/routers/${routerId}`,
          claims: adminClaims,
          body: { project_id: PROJECT_A, bindings: qrouters("node-a", "net-9") },
        }),
        deployed,
      ),
    );
    expect(result.statusCode).toBe(422);
    expect(bodyOf(result).error.details).toEqual([
      { path: "bindings.1.host", message: '"net-9" is not a deployed node (CTH_NODES): it has no queue' },
    ]);
  });

  const nine = Array.from({ length: 9 }, (_, index) => ({ host: `n${index}`, namespace: "qrouter" }));
  it.each([
    ["no bindings", { bindings: [] }, "bindings"],
    ["more than 8", { bindings: nine }, "bindings"],
    ["a duplicate host", { bindings: [...qrouters("node-a"), ...snats("node-a")] }, "bindings.1.host"],
    ["an unknown kind", { bindings: [{ host: "node-a", namespace: "fip" }] }, "bindings.0.namespace"],
    ["host and bindings together", { host: "node-a", bindings: qrouters("node-b") }, "bindings"],
    ["neither host nor bindings", {}, "bindings"],
    ["a bad host name", { bindings: [{ host: "node a", namespace: "qrouter" }] }, "bindings.0.host"],
    ["an unknown binding field", { bindings: [{ ...qrouters("node-a")[0], zone: "x" }] }, "bindings.0"],
  ])("%s is a 422 naming %s and changes nothing", async (_name, placement, path) => {
    const routerId = newId();
    const result = await core.expectNothingWritten(() =>
      put(routerId, { project_id: PROJECT_A, ...placement }),
    );
    expect(result.statusCode).toBe(422);
    const paths = (bodyOf(result).error.details as { path: string }[]).map((detail) => detail.path);
    expect(paths).toContain(path);
  });

  it("a bad binding of an existing router changes nothing either", async () => {
    const { routerId } = await registered(qrouters("node-a", "node-b"));
    const result = await core.expectNothingWritten(() =>
      put(routerId, { project_id: PROJECT_A, bindings: [...qrouters("node-a"), ...qrouters("node-a")] }),
    );
    expect(result.statusCode).toBe(422);
    expect((await core.store.get(routerId))?.bindings).toEqual(qrouters("node-a", "node-b"));
  });
});

describe("fan-out", () => {
  it("a change sends the snapshot to every bound host, each with its namespace kind", async () => {
    const routerId = newId();
    await put(routerId, {
      project_id: PROJECT_A,
      bindings: [...qrouters("node-a"), ...snats("node-b")],
    });
    const helper = await addHelper(routerId);
    const [onA] = only(await core.queued("node-a"), routerId);
    const [onB] = only(await core.queued("node-b"), routerId);
    expect(onA).toMatchObject({ revision: 1, namespace: "qrouter", helpers: [helper] });
    expect(onB).toMatchObject({ revision: 1, namespace: "snat", helpers: [helper] });
    expect(only(await core.queued("node-c"), routerId)).toEqual([]);
  });
});

describe("binding changes converge", () => {
  it("a host added gets the current snapshot at once", async () => {
    const { routerId, helper } = await registered(qrouters("node-a"));
    await put(routerId, { project_id: PROJECT_A, bindings: qrouters("node-a", "node-b") });
    const [onB] = only(await core.queued("node-b"), routerId);
    expect(onB).toMatchObject({ revision: 2, namespace: "qrouter", helpers: [helper] });
  });

  it("a host removed gets an empty snapshot, is listed under draining, and leaves replicas", async () => {
    const { routerId } = await registered(qrouters("node-a", "node-b"));
    await put(routerId, { project_id: PROJECT_A, bindings: qrouters("node-a") });
    const [onB] = only(await core.queued("node-b"), routerId);
    expect(onB).toMatchObject({ revision: 2, helpers: [] });
    const body = await state(routerId);
    expect(body.replicas.map((replica: { host: string }) => replica.host)).toEqual(["node-a"]);
    expect(body.draining).toEqual([{ host: "node-b", revision: 2 }]);
  });

  it("a removed host's empty snapshot is re-sent by the reconciler until that host confirms it", async () => {
    const { routerId } = await registered(qrouters("node-a", "node-b"));
    await put(routerId, { project_id: PROJECT_A, bindings: qrouters("node-a") });
    await core.queued("node-a");
    await core.queued("node-b"); // the empty snapshot is lost
    await runReconcile();
    expect(only(await core.queued("node-b"), routerId)).toMatchObject([{ revision: 2, helpers: [] }]);
    await runStatus(reportFrom("node-b", applied(routerId, 2, [])));
    expect((await state(routerId)).draining).toEqual([]);
    await runReconcile();
    expect(only(await core.queued("node-b"), routerId)).toEqual([]);
  });

  it("deleting an HA router sends every replica the empty set, and each drains until it confirms", async () => {
    const { routerId } = await registered([...qrouters("node-a"), ...snats("node-b")]);
    const deleted = await core.call(
      httpApiEvent({ method: "DELETE", path: `/v1/routers/${routerId}`, claims: adminClaims }),
    );
    expect(deleted.statusCode).toBe(204);
    expect(only(await core.queued("node-a"), routerId)).toMatchObject([{ revision: 2, helpers: [] }]);
    expect(only(await core.queued("node-b"), routerId)).toMatchObject([{ revision: 2, helpers: [] }]);
    expect((await core.store.tombstone(routerId))?.draining).toEqual({ "node-a": 2, "node-b": 2 });
    await runStatus(reportFrom("node-b", applied(routerId, 2, [])));
    expect((await core.store.tombstone(routerId))?.draining).toEqual({ "node-a": 2 });
  });

  it("a removed host's report of an older revision, or of a non-empty set, does not clear its drain", async () => {
    const { routerId, helper } = await registered(qrouters("node-a", "node-b"));
    await put(routerId, { project_id: PROJECT_A, bindings: qrouters("node-a") });
    await runStatus(reportFrom("node-b", applied(routerId, 1, [])));
    await runStatus(reportFrom("node-b", applied(routerId, 2, [helper])));
    expect((await state(routerId)).draining).toEqual([{ host: "node-b", revision: 2 }]);
  });

  it("a kind changed on one host (legacy to DVR) sends that host the set for its new namespace", async () => {
    const { routerId, helper } = await registered(qrouters("node-a"));
    await put(routerId, { project_id: PROJECT_A, bindings: snats("node-a") });
    expect(only(await core.queued("node-a"), routerId)).toMatchObject([
      { revision: 2, namespace: "snat", helpers: [helper] },
    ]);
    expect((await state(routerId)).draining).toEqual([]);
  });
});

describe("status per replica", () => {
  it("in_sync only when every binding reported the revision with the desired content", async () => {
    const { routerId, helper } = await registered(qrouters("node-a", "node-b"));
    const revision = await revisionOf(routerId);
    await runStatus(reportFrom("node-a", applied(routerId, revision, [helper])));
    let body = await state(routerId);
    expect(body.in_sync).toBe(false);
    expect(body.replicas).toMatchObject([
      { host: "node-a", namespace: "qrouter", applied_revision: revision, in_sync: true },
      { host: "node-b", namespace: "qrouter", applied_revision: 0, in_sync: false },
    ]);
    // The top-level applied fields speak of the replica that holds in_sync back.
    expect(body.applied_revision).toBe(0);
    await runStatus(reportFrom("node-b", applied(routerId, revision, [helper])));
    body = await state(routerId);
    expect(body.in_sync).toBe(true);
    expect(body.applied_revision).toBe(revision);
  });

  it("a plain member sees replicas and draining without host names", async () => {
    const { routerId } = await registered(qrouters("node-a", "node-b"));
    await put(routerId, { project_id: PROJECT_A, bindings: qrouters("node-a") });
    const body = await state(routerId, memberClaims);
    expect(body.host).toBeUndefined();
    expect(body.replicas).toEqual([
      { namespace: "qrouter", applied_revision: 0, in_sync: false, applied_errors: [] },
    ]);
    expect(body.draining).toEqual([{ revision: 2 }]);
  });

  it("a report applied in the other namespace kind is not in sync", async () => {
    const { routerId, helper } = await registered(snats("node-a"));
    const revision = await revisionOf(routerId);
    await runStatus(reportFrom("node-a", applied(routerId, revision, [helper], { namespace: "qrouter" })));
    const body = await state(routerId);
    expect(body.in_sync).toBe(false);
    expect(body.replicas[0]).toMatchObject({ applied_revision: revision, in_sync: false });
  });

  it("an agent that cannot place the router (namespace_unsupported) leaves that replica out of sync", async () => {
    const { routerId } = await registered(snats("node-a"));
    const revision = await revisionOf(routerId);
    const refused = applied(routerId, revision, [], {
      namespace: "snat",
      errors: [{ code: "namespace_unsupported", message: "no {namespace} in the pattern" }],
    });
    await runStatus(reportFrom("node-a", refused));
    const body = await state(routerId);
    expect(body.in_sync).toBe(false);
    expect(body.replicas[0].applied_errors.map((error: { code: string }) => error.code)).toContain(
      "namespace_unsupported",
    );
  });

  it("the reconciler re-sends only the replica that is behind", async () => {
    const { routerId, helper } = await registered(qrouters("node-a", "node-b"));
    const revision = await revisionOf(routerId);
    await runStatus(reportFrom("node-a", applied(routerId, revision, [helper])));
    await runReconcile();
    expect(only(await core.queued("node-a"), routerId)).toEqual([]);
    expect(only(await core.queued("node-b"), routerId)).toMatchObject([{ revision, helpers: [helper] }]);
  });

  it("a resync request from one host re-sends that host's copy of each router bound to it", async () => {
    const { routerId } = await registered([...qrouters("node-b"), ...snats("node-c")]);
    await runStatus(reportFrom("node-c", { v: 1, kind: "resync-request" }));
    expect(only(await core.queued("node-c"), routerId)).toMatchObject([{ namespace: "snat" }]);
    expect(only(await core.queued("node-b"), routerId)).toEqual([]);
  });
});
