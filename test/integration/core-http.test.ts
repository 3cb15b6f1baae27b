/**
 * The HTTP function end to end on dynalite and fauxqs: every rejection path leaves the tables and the queues
 * untouched; accepted changes land in the table and as snapshots on the right node's queue.
 */
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { COMMITTED_BUT_NOT_QUEUED } from "../../lib/domain/services.ts";
import { httpApiClaims, httpApiEvent, restApiEvent } from "../support/events.ts";
import {
  newId,
  PROJECT_A,
  PROJECT_B,
  qrouters,
  replica,
  storedHelper,
  wireHelper,
} from "../support/factories.ts";
import { bodyOf, type Core, startCore } from "./core-harness.ts";

let core: Core;
beforeAll(async () => {
  core = await startCore();
});
afterAll(async () => {
  await core?.stop();
});
beforeEach(async () => {
  await core.queued("node-a");
  await core.queued("node-b");
});

const memberA = httpApiClaims(PROJECT_A);
const post = (
  body: unknown,
  options: {
    claims?: Record<string, unknown> | undefined;
    headers?: Record<string, string>;
    base64?: boolean;
  } = {},
) =>
  core.call(
    httpApiEvent({
      method: "POST",
      path: "/v1/notifications",
      body,
      claims: "claims" in options ? options.claims : memberA,
      ...(options.headers ? { headers: options.headers } : {}),
      ...(options.base64 ? { base64: true } : {}),
    }),
  );
const created = (...helpers: Record<string, unknown>[]) => ({ event: "created", conntrack_helpers: helpers });

describe("POST /v1/notifications rejections (nothing is written)", () => {
  it("refuses a plain body over the byte cap with 413", async () => {
    const router = await core.seedRouter();
    const body =
      JSON.stringify(created(wireHelper(router.routerId))) + " ".repeat(core.config.limits.maxBodyBytes);
    const result = await core.expectNothingWritten(() => post(body));
    expect(result.statusCode).toBe(413);
    expect(bodyOf(result).error.code).toBe("payload_too_large");
  });

  it("refuses a base64 body whose decoded size is over the cap with 413", async () => {
    const router = await core.seedRouter();
    const body =
      JSON.stringify(created(wireHelper(router.routerId))) + " ".repeat(core.config.limits.maxBodyBytes);
    const result = await core.expectNothingWritten(() => post(body, { base64: true }));
    expect(result.statusCode).toBe(413);
  });

  it("counts a base64 body by its decoded size, not its encoded length", async () => {
    const router = await core.seedRouter();
    const text = JSON.stringify(created(wireHelper(router.routerId)));
    const padded = text + " ".repeat(core.config.limits.maxBodyBytes - text.length - 10);
    expect(Buffer.from(padded).toString("base64").length).toBeGreaterThan(core.config.limits.maxBodyBytes);
    const result = await post(padded, { base64: true });
    expect(result.statusCode).toBe(202);
  });

  it("refuses more helpers than one notification may carry with 422", async () => {
    const router = await core.seedRouter();
    const helpers = Array.from({ length: core.config.limits.maxHelpersPerNotification + 1 }, () =>
      wireHelper(router.routerId),
    );
    const result = await core.expectNothingWritten(() => post(created(...helpers)));
    expect(result.statusCode).toBe(422);
    expect(bodyOf(result).error.details[0].path).toBe("conntrack_helpers");
  });

  it("refuses an unknown key with 422 and names it", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId, { chain: "cth-x; rm -rf /" }))),
    );
    expect(result.statusCode).toBe(422);
    expect(JSON.stringify(bodyOf(result).error.details)).toContain("chain");
  });

  it("refuses a helper id that is not a UUID with 422", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId, { id: "not-a-uuid" }))),
    );
    expect(result.statusCode).toBe(422);
    expect(bodyOf(result).error.details[0].path).toBe("conntrack_helpers.0.id");
  });

  it.each([0, 65_536, "21", 21.5, -1])("refuses port %j with 422", async (port) => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId, { port }))),
    );
    expect(result.statusCode).toBe(422);
    expect(bodyOf(result).error.details[0].path).toBe("conntrack_helpers.0.port");
  });

  it("refuses an uppercase protocol with 422", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId, { protocol: "TCP" }))),
    );
    expect(result.statusCode).toBe(422);
    expect(bodyOf(result).error.details[0].path).toBe("conntrack_helpers.0.protocol");
  });

  it("refuses a helper the catalog does not hold with 422", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId, { helper: "quake3" }))),
    );
    expect(result.statusCode).toBe(422);
    expect(bodyOf(result).error.details[0].path).toBe("conntrack_helpers.0.helper");
  });

  it("refuses a helper on a protocol it does not speak (ftp over udp) with 422", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId, { protocol: "udp", helper: "ftp" }))),
    );
    expect(result.statusCode).toBe(422);
  });

  it("refuses Neutron's kernel-rejected amanda over tcp with 422", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId, { protocol: "tcp", helper: "amanda" }))),
    );
    expect(result.statusCode).toBe(422);
  });

  it("refuses an unknown router with 404", async () => {
    const result = await core.expectNothingWritten(() => post(created(wireHelper(newId()))));
    expect(result.statusCode).toBe(404);
    expect(bodyOf(result).error.code).toBe("not_found");
  });

  it("answers a foreign router exactly as an unknown one", async () => {
    const foreign = await core.seedRouter({ projectId: PROJECT_B });
    const unknownId = newId();
    const helper = wireHelper(foreign.routerId);
    const forForeign = await core.expectNothingWritten(() => post(created(helper)));
    const forUnknown = await post(created({ ...helper, router_id: unknownId }));
    expect(forForeign.statusCode).toBe(404);
    expect(forForeign.statusCode).toBe(forUnknown.statusCode);
    expect(forForeign.body.replace(foreign.routerId, "<id>")).toBe(
      forUnknown.body.replace(unknownId, "<id>"),
    );
    expect(forForeign.headers["content-type"]).toBe(forUnknown.headers["content-type"]);
  });

  it("refuses a service caller whose helper names another project than the router's owner", async () => {
    const router = await core.seedRouter({ projectId: PROJECT_A });
    const claims = httpApiClaims("control-plane", ["service"]);
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId, { project_id: PROJECT_B })), { claims }),
    );
    expect(result.statusCode).toBe(403);
    expect(bodyOf(result).error.details[0].path).toBe("conntrack_helpers.0.project_id");
  });

  it("refuses a request without authorizer claims with 401", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId)), { claims: undefined }),
    );
    expect(result.statusCode).toBe(401);
  });

  it.each([
    ["no project_id", { sub: "x", scope: "cth:admin" }],
    ["a project_id with spaces", { project_id: "a b", scope: "cth:admin" }],
    ["a flattened project_id array", { project_id: `[${PROJECT_A} ${PROJECT_B}]` }],
    ["a numeric project_id", { project_id: 7 }],
  ])("refuses garbled claims (%s) with 401", async (_what, claims) => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId)), { claims }),
    );
    expect(result.statusCode).toBe(401);
  });

  it("refuses malformed JSON with 400", async () => {
    const result = await core.expectNothingWritten(() => post('{"event":"created",'));
    expect(result.statusCode).toBe(400);
  });

  it("refuses a body that is not declared as JSON with 415", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId)), { headers: { "content-type": "text/plain" } }),
    );
    expect(result.statusCode).toBe(415);
  });

  it("refuses a second helper on the same protocol and port of a router with 409", async () => {
    const taken = storedHelper({ protocol: "tcp", port: 21 });
    const router = await core.seedRouter({ revision: 1, helpers: [taken] });
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId, { protocol: "tcp", port: 21, helper: "ftp" }))),
    );
    expect(result.statusCode).toBe(409);
  });
});

describe("per-router cap", () => {
  it("refuses to grow a router past its cap with 409 and writes nothing", async () => {
    const base = core.deps();
    const capped = {
      ...base,
      domain: { ...base.domain, limits: { ...base.domain.limits, maxHelpersPerRouter: 2 } },
    };
    const router = await core.seedRouter({ revision: 2, helpers: [storedHelper(), storedHelper()] });
    const result = await core.expectNothingWritten(() =>
      core.call(
        httpApiEvent({
          method: "POST",
          path: "/v1/notifications",
          body: created(wireHelper(router.routerId)),
          claims: memberA,
        }),
        capped,
      ),
    );
    expect(result.statusCode).toBe(409);
    expect(bodyOf(result).error.message).toContain("the limit is 2 per router");
  });
});

describe("POST /v1/notifications accepted", () => {
  it("stores the helper, bumps the revision and queues a snapshot on the router's node", async () => {
    const router = await core.seedRouter({ bindings: qrouters("node-b") });
    const helper = wireHelper(router.routerId, { protocol: "udp", port: 69, helper: "tftp" });
    const result = await post(created(helper));
    expect(result.statusCode).toBe(202);
    expect(bodyOf(result)).toEqual({ routers: [{ router_id: router.routerId, revision: 1 }] });
    expect((await core.store.get(router.routerId))?.helpers).toEqual([
      { id: helper.id, protocol: "udp", port: 69, helper: "tftp" },
    ]);
    const [snapshot, ...rest] = await core.queued("node-b");
    expect(rest).toEqual([]);
    expect(snapshot).toMatchObject({
      v: 1,
      kind: "router-sync",
      router_id: router.routerId,
      revision: 1,
      namespace: "qrouter",
    });
    expect(snapshot?.helpers).toEqual([{ id: helper.id, protocol: "udp", port: 69, helper: "tftp" }]);
    expect(await core.queued("node-a")).toEqual([]);
  });

  it("accepts Neutron's own push payload", async () => {
    const push = JSON.parse(
      readFileSync(new URL("../fixtures/neutron-push-created.json", import.meta.url), "utf8"),
    ) as { resource_list: { "versioned_object.data": { router_id: string } }[] };
    const routerId = push.resource_list[0]!["versioned_object.data"].router_id;
    if (!(await core.store.get(routerId))) await core.seedRouter({ routerId });
    const result = await post(push);
    expect(result.statusCode).toBe(202);
    const stored = await core.store.get(routerId);
    expect(stored?.helpers.map((h) => `${h.helper}/${h.protocol}/${h.port}`).sort()).toEqual([
      "ftp/tcp/21",
      "tftp/udp/69",
    ]);
  });

  it("resolves Neutron's h323 alias to the kernel's RAS on udp", async () => {
    const router = await core.seedRouter();
    const result = await post(
      created(wireHelper(router.routerId, { protocol: "udp", port: 1719, helper: "h323" })),
    );
    expect(result.statusCode).toBe(202);
    expect((await core.store.get(router.routerId))?.helpers[0]?.helper).toBe("RAS");
  });

  it("lets a service act on any project's router when the helper names the owner", async () => {
    const router = await core.seedRouter({ projectId: PROJECT_B });
    const claims = httpApiClaims("control-plane", ["service"]);
    const result = await post(created(wireHelper(router.routerId, { project_id: PROJECT_B })), { claims });
    expect(result.statusCode).toBe(202);
  });

  it("sets security headers on success and on errors", async () => {
    const router = await core.seedRouter();
    const ok = await post(created(wireHelper(router.routerId)));
    const refused = await post(created(wireHelper(newId())));
    for (const result of [ok, refused]) {
      expect(result.headers["x-content-type-options"]).toBe("nosniff");
      expect(result.headers["cache-control"]).toBe("no-store");
      expect(result.headers["x-correlation-id"]).toMatch(/^[A-Za-z0-9_.:-]+$/);
    }
  });

  it("works the same through a REST API (v1) event with claims under authorizer.claims", async () => {
    const router = await core.seedRouter();
    const helper = wireHelper(router.routerId);
    const claims = { project_id: PROJECT_A, roles: "member" };
    const result = await core.call(
      restApiEvent({ method: "POST", path: "/v1/notifications", body: created(helper), claims }),
    );
    expect(result.statusCode).toBe(202);
    const read = await core.call(
      restApiEvent({ method: "GET", path: `/v1/routers/${router.routerId}/conntrack-helpers`, claims }),
    );
    expect(read.statusCode).toBe(200);
    expect(bodyOf(read).helpers.map((h: { id: string }) => h.id)).toEqual([helper.id]);
  });
});

describe("concurrency and atomicity", () => {
  it("applies 50 concurrent notifications to one router without losing any", async () => {
    const router = await core.seedRouter();
    const helpers = Array.from({ length: 50 }, (_, i) => wireHelper(router.routerId, { port: 10_000 + i }));
    const results = await Promise.all(helpers.map((helper) => post(created(helper))));
    expect(results.map((r) => r.statusCode)).toEqual(Array(50).fill(202));
    const stored = await core.store.get(router.routerId);
    expect(stored?.revision).toBe(50);
    expect(stored?.helpers).toHaveLength(50);
    const snapshots = await core.queued("node-a");
    // One snapshot per revision. Their queue order may differ from commit order (50 writers race from commit
    // to send), which is harmless: agents apply the newest revision and drop older ones.
    expect(snapshots.map((s) => s.revision).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 50 }, (_, i) => i + 1),
    );
    expect(
      snapshots
        .find((s) => s.revision === 50)
        ?.helpers.map((h) => h.id)
        .sort(),
    ).toEqual(helpers.map((h) => String(h.id)).sort());
  });

  it("updates every router of a multi-router notification or none", async () => {
    const first = await core.seedRouter({ bindings: qrouters("node-a") });
    const taken = storedHelper({ protocol: "udp", port: 5060, helper: "sip" });
    const second = await core.seedRouter({ bindings: qrouters("node-b"), revision: 1, helpers: [taken] });
    const body = created(
      wireHelper(first.routerId, { protocol: "tcp", port: 6667, helper: "irc" }),
      wireHelper(second.routerId, { protocol: "udp", port: 5060, helper: "sip" }),
    );
    const result = await core.expectNothingWritten(() => post(body));
    expect(result.statusCode).toBe(409);
  });

  it("touches each router of a multi-router notification once and queues per node", async () => {
    const first = await core.seedRouter({ bindings: qrouters("node-a") });
    const second = await core.seedRouter({ bindings: qrouters("node-b") });
    const result = await post(
      created(wireHelper(first.routerId), wireHelper(second.routerId), wireHelper(first.routerId)),
    );
    expect(result.statusCode).toBe(202);
    expect(bodyOf(result).routers).toEqual([
      { router_id: first.routerId, revision: 1 },
      { router_id: second.routerId, revision: 1 },
    ]);
    expect((await core.queued("node-a")).map((s) => [s.router_id, s.helpers.length])).toEqual([
      [first.routerId, 2],
    ]);
    expect((await core.queued("node-b")).map((s) => [s.router_id, s.helpers.length])).toEqual([
      [second.routerId, 1],
    ]);
  });
});

describe("Idempotency-Key", () => {
  it("changes the state once when the same key is sent twice", async () => {
    const router = await core.seedRouter();
    const body = created(wireHelper(router.routerId));
    const headers = { "idempotency-key": `key-${newId()}` };
    const first = await post(body, { headers });
    const second = await post(body, { headers });
    expect(first.statusCode).toBe(202);
    expect(second.statusCode).toBe(202);
    expect(second.body).toBe(first.body);
    expect((await core.store.get(router.routerId))?.revision).toBe(1);
    expect(await core.queued("node-a")).toHaveLength(1);
  });

  it("changes the state once when the same key arrives concurrently", async () => {
    const router = await core.seedRouter();
    const body = created(wireHelper(router.routerId));
    const headers = { "idempotency-key": `key-${newId()}` };
    const results = await Promise.all(Array.from({ length: 5 }, () => post(body, { headers })));
    const statuses = results.map((r) => r.statusCode);
    expect(statuses).toContain(202);
    expect(statuses.every((status) => status === 202 || status === 409)).toBe(true);
    expect((await core.store.get(router.routerId))?.revision).toBe(1);
    expect(await core.queued("node-a")).toHaveLength(1);
  });

  it("bounds a key's in-progress lock by the invocation's deadline, not the whole TTL", async () => {
    const router = await core.seedRouter();
    const before = Date.now();
    await post(created(wireHelper(router.routerId)), { headers: { "idempotency-key": `key-${newId()}` } });
    const after = Date.now();
    const deadlines = (await core.tables())
      .map((item) => (item as { in_progress_expiration?: number }).in_progress_expiration)
      .filter((deadline): deadline is number => typeof deadline === "number");
    // lambdaContext() reports 30 s left: the lock ends then, not after the 24 h record TTL.
    expect(deadlines.some((d) => d >= before + 29_000 && d <= after + 31_000)).toBe(true);
  });

  it("refuses the same key with a different body with 409", async () => {
    const router = await core.seedRouter();
    const headers = { "idempotency-key": `key-${newId()}` };
    await post(created(wireHelper(router.routerId)), { headers });
    const result = await core.expectNothingWritten(() =>
      post(created(wireHelper(router.routerId)), { headers }),
    );
    expect(result.statusCode).toBe(409);
    expect(bodyOf(result).error.message).toContain("Idempotency-Key");
  });

  it("scopes keys to the caller's project", async () => {
    const mine = await core.seedRouter({ projectId: PROJECT_A });
    const theirs = await core.seedRouter({ projectId: PROJECT_B });
    const headers = { "idempotency-key": "shared-key-1" };
    const a = await post(created(wireHelper(mine.routerId)), { headers });
    const b = await post(created(wireHelper(theirs.routerId)), { headers, claims: httpApiClaims(PROJECT_B) });
    expect([a.statusCode, b.statusCode]).toEqual([202, 202]);
    expect((await core.store.get(theirs.routerId))?.revision).toBe(1);
  });

  it("refuses an oversized or garbled key with 400", async () => {
    const router = await core.seedRouter();
    for (const key of ["x".repeat(129), "a key with spaces"]) {
      const result = await core.expectNothingWritten(() =>
        post(created(wireHelper(router.routerId)), { headers: { "idempotency-key": key } }),
      );
      expect(result.statusCode).toBe(400);
    }
  });

  it("re-sends the snapshot when a request is retried after the queue failed", async () => {
    const router = await core.seedRouter();
    const body = created(wireHelper(router.routerId));
    const headers = { "idempotency-key": `key-${newId()}` };
    const queueDown = { send: () => Promise.reject(new Error("queue endpoint unreachable")) };
    const failing = await core.call(
      httpApiEvent({ method: "POST", path: "/v1/notifications", body, claims: memberA, headers }),
      core.deps({ queue: queueDown }),
    );
    expect(failing.statusCode).toBe(503);
    expect(bodyOf(failing).error.message).toBe(COMMITTED_BUT_NOT_QUEUED);
    expect(failing.body).not.toContain("unreachable");
    expect((await core.store.get(router.routerId))?.revision).toBe(1);
    expect(await core.depth()).toBe(0);
    const retried = await post(body, { headers });
    expect(retried.statusCode).toBe(202);
    expect(bodyOf(retried)).toEqual({ routers: [{ router_id: router.routerId, revision: 1 }] });
    expect((await core.store.get(router.routerId))?.revision).toBe(1);
    expect((await core.queued("node-a")).map((s) => [s.revision, s.helpers.length])).toEqual([[1, 1]]);
  });
});

describe("GET /v1/routers/{router_id}/conntrack-helpers", () => {
  const get = (routerId: string, claims: Record<string, unknown> = memberA) =>
    core.call(httpApiEvent({ method: "GET", path: `/v1/routers/${routerId}/conntrack-helpers`, claims }));

  it("returns desired helpers, revisions and whether the node is in sync", async () => {
    const helpers = [
      storedHelper({ port: 2121 }),
      storedHelper({ protocol: "udp", port: 69, helper: "tftp" }),
    ];
    const router = await core.seedRouter({
      revision: 3,
      helpers,
      replicas: { "node-a": replica(2, { content: "behind" }) },
    });
    const result = await get(router.routerId);
    expect(result.statusCode).toBe(200);
    expect(bodyOf(result)).toMatchObject({
      router_id: router.routerId,
      revision: 3,
      applied_revision: 2,
      in_sync: false,
    });
    expect(bodyOf(result).helpers.map((h: { port: number }) => h.port)).toEqual([2121, 69]);
    expect(bodyOf(result).host).toBeUndefined();
  });

  it("reports in sync once the node's kernel holds the desired set at the desired revision", async () => {
    const router = await core.seedRouter({ revision: 1, helpers: [storedHelper()] });
    await core.store.recordReplica({
      routerId: router.routerId,
      host: router.bindings[0]!.host,
      status: replica(1),
    });
    expect(bodyOf(await get(router.routerId)).in_sync).toBe(true);
  });

  it("is not in sync when the node reported the revision but its kernel holds other content", async () => {
    const router = await core.seedRouter({ revision: 1, helpers: [storedHelper()] });
    const errors = [{ code: "content_mismatch", message: "differs" }];
    await core.store.recordReplica({
      routerId: router.routerId,
      host: router.bindings[0]!.host,
      status: replica(1, { content: "mismatch", errors }),
    });
    expect(bodyOf(await get(router.routerId))).toMatchObject({
      applied_revision: 1,
      in_sync: false,
      applied_errors: errors,
    });
  });

  it("answers a foreign router exactly as an unknown one", async () => {
    const foreign = await core.seedRouter({ projectId: PROJECT_B });
    const unknownId = newId();
    const a = await get(foreign.routerId);
    const b = await get(unknownId);
    expect(a.statusCode).toBe(404);
    expect(a.body.replace(foreign.routerId, "<id>")).toBe(b.body.replace(unknownId, "<id>"));
  });

  it("refuses a router id that is not a UUID with 422", async () => {
    const result = await get("not-a-router-id");
    expect(result.statusCode).toBe(422);
    expect(bodyOf(result).error.details[0].path).toBe("router_id");
  });
});

describe("PUT and DELETE /v1/routers/{router_id}", () => {
  const adminClaims = httpApiClaims("operators", ["admin"]);
  const put = (routerId: string, body: unknown, claims: Record<string, unknown> = adminClaims) =>
    core.call(httpApiEvent({ method: "PUT", path: `/v1/routers/${routerId}`, body, claims }));
  const del = (routerId: string, claims: Record<string, unknown> = adminClaims) =>
    core.call(httpApiEvent({ method: "DELETE", path: `/v1/routers/${routerId}`, claims }));

  it("creates a router at revision 0 for an admin", async () => {
    const routerId = newId();
    const result = await put(routerId, { project_id: PROJECT_A, host: "node-a" });
    expect(result.statusCode).toBe(201);
    expect(await core.store.get(routerId)).toMatchObject({
      projectId: PROJECT_A,
      bindings: qrouters("node-a"),
      revision: 0,
    });
  });

  it("refuses a member with 403 and writes nothing", async () => {
    const result = await core.expectNothingWritten(() =>
      put(newId(), { project_id: PROJECT_A, host: "node-a" }, memberA),
    );
    expect(result.statusCode).toBe(403);
  });

  it("refuses a host name that is not a queue name with 422", async () => {
    const result = await core.expectNothingWritten(() =>
      put(newId(), { project_id: PROJECT_A, host: "node a/../b" }),
    );
    expect(result.statusCode).toBe(422);
  });

  it("moves a router: the old node gets an empty snapshot, the new node the full set", async () => {
    const helper = storedHelper();
    const router = await core.seedRouter({ bindings: qrouters("node-a"), revision: 2, helpers: [helper] });
    const result = await put(router.routerId, { project_id: router.projectId, host: "node-b" });
    expect(result.statusCode).toBe(200);
    expect(bodyOf(result)).toMatchObject({ host: "node-b", bindings: qrouters("node-b"), revision: 3 });
    expect((await core.queued("node-a")).map((s) => [s.revision, s.helpers.length])).toEqual([[3, 0]]);
    expect((await core.queued("node-b")).map((s) => [s.revision, s.helpers])).toEqual([[3, [helper]]]);
  });

  it("deletes a router after sending its node an empty snapshot at the next revision", async () => {
    const router = await core.seedRouter({ revision: 4, helpers: [storedHelper()] });
    const result = await del(router.routerId);
    expect(result.statusCode).toBe(204);
    expect(await core.store.get(router.routerId)).toBeUndefined();
    expect((await core.queued("node-a")).map((s) => [s.router_id, s.revision, s.helpers.length])).toEqual([
      [router.routerId, 5, 0],
    ]);
  });

  it("refuses a member's delete with 403 and writes nothing", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() => del(router.routerId, memberA));
    expect(result.statusCode).toBe(403);
  });

  it("answers 404 for deleting an unknown router", async () => {
    const result = await core.expectNothingWritten(() => del(newId()));
    expect(result.statusCode).toBe(404);
  });
});

describe("routing", () => {
  it("answers an unknown path with 404", async () => {
    const result = await core.call(httpApiEvent({ method: "GET", path: "/v1/secrets", claims: memberA }));
    expect(result.statusCode).toBe(404);
  });

  it("answers a wrong method on a known path with 404", async () => {
    const result = await core.call(
      httpApiEvent({ method: "GET", path: "/v1/notifications", claims: memberA }),
    );
    expect(result.statusCode).toBe(404);
  });

  it.each([
    ["PATCH", "/v1/routers/0f2c4a6e-8b1d-4f5a-8c9e-0b2d4f6a8c1e"],
    ["GET", "/v1/routers/"],
    ["GET", "/v1/routers//conntrack-helpers"],
    ["GET", "/v1/routers/0f2c4a6e-8b1d-4f5a-8c9e-0b2d4f6a8c1e/conntrack-helpers/extra"],
    ["DELETE", "/v1/routers"],
    ["GET", "/v1/notifications/"],
  ])("matches the route table's segments exactly: %s %s is 404", async (method, path) => {
    const result = await core.expectNothingWritten(() =>
      core.call(httpApiEvent({ method, path, claims: httpApiClaims("operators", ["admin"]) })),
    );
    expect(result.statusCode).toBe(404);
    expect(bodyOf(result).error.code).toBe("not_found");
  });

  it("refuses a query parameter the route does not declare, on a write too, with 422 naming it", async () => {
    const router = await core.seedRouter();
    const event = httpApiEvent({
      method: "POST",
      path: "/v1/notifications",
      body: created(wireHelper(router.routerId)),
      claims: memberA,
    });
    const result = await core.expectNothingWritten(() =>
      core.call({ ...event, queryStringParameters: { dry_run: "true" } }),
    );
    expect(result.statusCode).toBe(422);
    expect(bodyOf(result).error.details).toEqual([
      { path: "dry_run", message: "is not a query parameter of this route" },
    ]);
  });
});

describe.each([
  ["HTTP API (v2)", httpApiEvent],
  ["REST API (v1)", restApiEvent],
])("both API Gateway payload versions: %s", (_name, build) => {
  const send = (body: unknown, claims: Record<string, unknown> | undefined, base64 = false) =>
    core.call(build({ method: "POST", path: "/v1/notifications", body, claims, base64 }));

  it("accepts a valid notification", async () => {
    const router = await core.seedRouter();
    expect((await send(created(wireHelper(router.routerId)), memberA)).statusCode).toBe(202);
  });

  it("refuses a missing authorizer with 401 and writes nothing", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      send(created(wireHelper(router.routerId)), undefined),
    );
    expect(result.statusCode).toBe(401);
  });

  it("refuses an oversize base64 body with 413 and writes nothing", async () => {
    const router = await core.seedRouter();
    const body =
      JSON.stringify(created(wireHelper(router.routerId))) + " ".repeat(core.config.limits.maxBodyBytes);
    const result = await core.expectNothingWritten(() => send(body, memberA, true));
    expect(result.statusCode).toBe(413);
  });

  it("answers a foreign router exactly as an unknown one", async () => {
    const foreign = await core.seedRouter({ projectId: PROJECT_B });
    const unknownId = newId();
    const a = await core.expectNothingWritten(() => send(created(wireHelper(foreign.routerId)), memberA));
    const b = await send(created(wireHelper(unknownId)), memberA);
    expect(a.statusCode).toBe(404);
    expect(a.body.replace(foreign.routerId, "<id>")).toBe(b.body.replace(unknownId, "<id>"));
  });
});
