/**
 * GET /v1/routers/{router_id}, GET /v1/routers (sealed cursors) and If-Match on PUT, DELETE and POST, through
 * the HTTP function on dynalite and fauxqs. Each listing test uses projects of its own, so the suite's other
 * routers never show up in its pages.
 */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { RoutersStore } from "../../lib/ports.ts";
import * as api from "../../lib/schemas/api.ts";
import { type HttpCall, httpApiClaims, httpApiEvent, restApiEvent, withQuery } from "../support/events.ts";
import { newId, qrouters, replica, snats, storedHelper, wireHelper } from "../support/factories.ts";
import { bodyOf, type Core, startCore } from "./core-harness.ts";

let core: Core;
beforeAll(async () => {
  core = await startCore();
});
afterAll(async () => {
  await core?.stop();
});
beforeEach(async () => {
  for (const host of ["node-a", "node-b", "node-c"]) await core.queued(host);
});

const newProject = () => `p-${randomBytes(8).toString("hex")}`;
const adminClaims = httpApiClaims("operators", ["admin"]);

const call = (request: HttpCall & { query?: Record<string, string> }, build = httpApiEvent) =>
  core.call(withQuery(build(request), request.query ?? {}));

const getRouter = (routerId: string, claims: Record<string, unknown>) =>
  call({ method: "GET", path: `/v1/routers/${routerId}`, claims });
const list = (claims: Record<string, unknown>, query: Record<string, string> = {}) =>
  call({ method: "GET", path: "/v1/routers", claims, query });

/** Every page of a listing, following next_cursor; each page checked against the published schema. */
async function listAll(claims: Record<string, unknown>, query: Record<string, string>) {
  const ids: string[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const result = await list(claims, { ...query, ...(cursor ? { cursor } : {}) });
    expect(result.statusCode).toBe(200);
    const page = api.routerList.parse(bodyOf(result));
    ids.push(...page.routers.map((router) => router.router_id));
    cursor = page.next_cursor;
    pages += 1;
  } while (cursor !== null && pages < 50);
  return { ids, pages };
}

describe("GET /v1/routers/{router_id}", () => {
  it("shows a member its router: project, bindings without node names, revision, in_sync and an ETag", async () => {
    const project = newProject();
    const router = await core.seedRouter({
      projectId: project,
      bindings: qrouters("node-a", "node-b"),
      revision: 2,
      replicas: { "node-a": replica(2), "node-b": replica(2) },
    });
    const result = await getRouter(router.routerId, httpApiClaims(project));
    expect(result.statusCode).toBe(200);
    expect(api.routerView.parse(bodyOf(result))).toEqual({
      router_id: router.routerId,
      project_id: project,
      bindings: [{ namespace: "qrouter" }, { namespace: "qrouter" }],
      revision: 2,
      in_sync: true,
    });
    expect(result.headers.etag).toMatch(/^"r2-[0-9a-f]{16}"$/);
  });

  it("shows operators the node names, with the ETag the helpers route carries", async () => {
    const router = await core.seedRouter({ bindings: snats("node-c"), revision: 1 });
    for (const claims of [adminClaims, httpApiClaims(newProject(), ["service"])]) {
      const result = await getRouter(router.routerId, claims);
      expect(result.statusCode).toBe(200);
      expect(bodyOf(result)).toMatchObject({
        host: "node-c",
        bindings: [{ host: "node-c", namespace: "snat" }],
        in_sync: false,
      });
      const helpers = await call({
        method: "GET",
        path: `/v1/routers/${router.routerId}/conntrack-helpers`,
        claims,
      });
      expect(helpers.headers.etag).toBe(result.headers.etag);
    }
  });

  it("answers a foreign router exactly as an unknown one: 404, no ETag", async () => {
    const foreign = await core.seedRouter({ projectId: newProject() });
    const unknown = newId();
    const member = httpApiClaims(newProject());
    const a = await getRouter(foreign.routerId, member);
    const b = await getRouter(unknown, member);
    expect(a.statusCode).toBe(404);
    expect(b.statusCode).toBe(404);
    expect(a.headers.etag).toBeUndefined();
    expect(bodyOf(a)).toEqual(
      JSON.parse(JSON.stringify(bodyOf(b)).replaceAll(unknown, foreign.routerId)) as unknown,
    );
  });

  it("refuses a router id that is not a UUID with 422 and an undeclared query parameter with 422", async () => {
    const bad = await getRouter("not-a-uuid", adminClaims);
    expect(bad.statusCode).toBe(422);
    expect(bodyOf(bad).error.details).toEqual([{ path: "router_id", message: "must be a lowercase UUID" }]);
    const router = await core.seedRouter();
    const extra = await call({
      method: "GET",
      path: `/v1/routers/${router.routerId}`,
      claims: adminClaims,
      query: { verbose: "1" },
    });
    expect(extra.statusCode).toBe(422);
    expect(bodyOf(extra).error.details).toEqual([
      { path: "verbose", message: "is not a query parameter of this route" },
    ]);
  });
});

describe("GET /v1/routers", () => {
  it("pages a member through its own project's routers to the end, each once", async () => {
    const project = newProject();
    const mine = new Set<string>();
    for (let index = 0; index < 5; index += 1)
      mine.add((await core.seedRouter({ projectId: project })).routerId);
    await core.seedRouter({ projectId: newProject() });
    const member = httpApiClaims(project);
    const { ids, pages } = await listAll(member, { limit: "2" });
    expect(new Set(ids)).toEqual(mine);
    expect(ids).toHaveLength(5);
    expect(pages).toBeGreaterThanOrEqual(3);
    // Without a filter a member still sees only its project (and never node names).
    const unfiltered = await listAll(member, {});
    expect(new Set(unfiltered.ids)).toEqual(mine);
    const first = api.routerList.parse(bodyOf(await list(member, { limit: "1" })));
    expect(first.routers[0]!.host).toBeUndefined();
    expect(first.routers[0]!.bindings).toEqual([{ namespace: "qrouter" }]);
  });

  it("answers a member's foreign project filter exactly as a project with no routers", async () => {
    const foreign = newProject();
    await core.seedRouter({ projectId: foreign });
    const project = newProject();
    await core.seedRouter({ projectId: project });
    const member = httpApiClaims(project);
    const filtered = await list(member, { project_id: foreign });
    const empty = newProject();
    const nothing = await list(httpApiClaims(empty), { project_id: empty });
    expect(filtered.statusCode).toBe(200);
    expect(bodyOf(filtered)).toEqual({ routers: [], next_cursor: null });
    expect(bodyOf(filtered)).toEqual(bodyOf(nothing));
  });

  it("refuses a member's host filter with 403 (node names are for operators)", async () => {
    const result = await list(httpApiClaims(newProject()), { host: "node-a" });
    expect(result.statusCode).toBe(403);
    expect(bodyOf(result).error.details).toEqual([
      { path: "host", message: "node names are shown to operators only" },
    ]);
  });

  it("lets admin and service filter by any project, by host and by out-of-sync", async () => {
    const project = newProject();
    const synced = await core.seedRouter({
      projectId: project,
      bindings: qrouters("node-b"),
      revision: 1,
      replicas: { "node-b": replica(1) },
    });
    const behind = await core.seedRouter({ projectId: project, bindings: qrouters("node-b"), revision: 1 });
    const elsewhere = await core.seedRouter({ projectId: project, bindings: qrouters("node-c") });
    const service = httpApiClaims(newProject(), ["service"]);
    for (const claims of [adminClaims, service]) {
      expect(new Set((await listAll(claims, { project_id: project })).ids)).toEqual(
        new Set([synced.routerId, behind.routerId, elsewhere.routerId]),
      );
      const onB = await listAll(claims, { project_id: project, host: "node-b" });
      expect(new Set(onB.ids)).toEqual(new Set([synced.routerId, behind.routerId]));
      const lagging = await listAll(claims, { project_id: project, host: "node-b", in_sync: "false" });
      expect(lagging.ids).toEqual([behind.routerId]);
    }
    const page = api.routerList.parse(
      bodyOf(await list(adminClaims, { project_id: project, host: "node-c" })),
    );
    expect(page.routers).toEqual([
      {
        router_id: elsewhere.routerId,
        project_id: project,
        host: "node-c",
        bindings: [{ host: "node-c", namespace: "qrouter" }],
        revision: 0,
        // No host has reported it yet.
        in_sync: false,
      },
    ]);
  });

  it("lets an admin list across every project, through a REST API (v1) event too", async () => {
    const router = await core.seedRouter({ projectId: newProject(), bindings: qrouters("node-c") });
    const { ids } = await listAll(adminClaims, { host: "node-c", limit: "100" });
    expect(ids).toContain(router.routerId);
    const rest = await call(
      { method: "GET", path: "/v1/routers", claims: adminClaims, query: { limit: "1" } },
      restApiEvent,
    );
    expect(rest.statusCode).toBe(200);
    expect(api.routerList.parse(bodyOf(rest)).routers).toHaveLength(1);
  });

  it("holds a member to its project even when the store answers other projects' routers", async () => {
    const project = newProject();
    const own = await core.seedRouter({ projectId: project });
    const foreign = await core.seedRouter({ projectId: newProject() });
    const lying: RoutersStore = Object.create(core.store, {
      listPage: { value: async () => ({ records: [own, foreign] }) },
    });
    const result = await core.call(
      httpApiEvent({ method: "GET", path: "/v1/routers", claims: httpApiClaims(project) }),
      core.deps({ store: lying }),
    );
    expect(result.statusCode).toBe(200);
    expect(bodyOf(result).routers.map((router: { router_id: string }) => router.router_id)).toEqual([
      own.routerId,
    ]);
  });

  it.each([
    [{ limit: "0" }, "limit"],
    [{ limit: "101" }, "limit"],
    [{ limit: "abc" }, "limit"],
    [{ limit: "1.5" }, "limit"],
    [{ limit: "" }, "limit"],
    [{ limit: "5,6" }, "limit"],
    [{ in_sync: "true" }, "in_sync"],
    [{ in_sync: "no" }, "in_sync"],
    [{ project_id: "a b" }, "project_id"],
    [{ host: "node a" }, "host"],
    [{ page: "2" }, "page"],
  ])("refuses %o with 422 naming %s", async (query, path) => {
    const result = await list(adminClaims, query);
    expect(result.statusCode).toBe(422);
    expect(bodyOf(result).error.code).toBe("validation_failed");
    expect(bodyOf(result).error.details.map((issue: { path: string }) => issue.path)).toEqual([path]);
  });

  describe("cursors", () => {
    const project = newProject();
    const member = httpApiClaims(project);
    let cursor: string;
    beforeAll(async () => {
      for (let index = 0; index < 3; index += 1) await core.seedRouter({ projectId: project });
      cursor = bodyOf(await list(member, { limit: "1" })).next_cursor;
      expect(cursor).toEqual(expect.any(String));
    });

    const refused = async (claims: Record<string, unknown>, query: Record<string, string>) => {
      const result = await list(claims, query);
      expect(result.statusCode).toBe(400);
      expect(bodyOf(result).error).toEqual({ code: "bad_request", message: "invalid cursor" });
    };

    it("continues the listing for the caller that got it", async () => {
      const next = await list(member, { limit: "1", cursor });
      expect(next.statusCode).toBe(200);
      expect(bodyOf(next).routers).toHaveLength(1);
    });

    it("refuses a forged or garbled cursor with 400", async () => {
      const raw = Buffer.from(cursor, "base64url");
      raw[raw.length - 1]! ^= 0xff;
      await refused(member, { cursor: raw.toString("base64url") });
      await refused(member, { cursor: "bm90IGEgY3Vyc29y" });
      await refused(member, { cursor: Buffer.from('{"router_id":"x"}').toString("base64url") });
    });

    it("refuses another caller's cursor with 400, even an admin's or a colleague's", async () => {
      await refused(httpApiClaims(project), { cursor });
      await refused(httpApiClaims(newProject()), { cursor });
      await refused(adminClaims, { cursor });
      await refused(adminClaims, { cursor, project_id: project });
    });

    it("refuses the cursor with other filters with 400", async () => {
      await refused(member, { cursor, in_sync: "false" });
      await refused(member, { cursor, project_id: project });
    });

    it("refuses a cursor from another deployment's key with 400", async () => {
      const other = await core.call(
        withQuery(httpApiEvent({ method: "GET", path: "/v1/routers", claims: member }), { limit: "1" }),
        core.deps(),
      );
      await refused(member, { cursor: bodyOf(other).next_cursor });
    });
  });
});

describe("If-Match", () => {
  const put = (routerId: string, body: unknown, headers: Record<string, string> = {}) =>
    call({ method: "PUT", path: `/v1/routers/${routerId}`, body, claims: adminClaims, headers });
  const del = (routerId: string, headers: Record<string, string> = {}) =>
    call({ method: "DELETE", path: `/v1/routers/${routerId}`, claims: adminClaims, headers });
  const etagOf = async (routerId: string) => (await getRouter(routerId, adminClaims)).headers.etag!;

  it("PUT answers an ETag that a later If-Match accepts, and changes it", async () => {
    const routerId = newId();
    const created = await put(routerId, { project_id: newProject(), host: "node-a" });
    expect(created.statusCode).toBe(201);
    expect(created.headers.etag).toBe(await etagOf(routerId));
    const moved = await put(
      routerId,
      bodyOf(created) && { project_id: bodyOf(created).project_id, host: "node-b" },
      {
        "if-match": created.headers.etag!,
      },
    );
    expect(moved.statusCode).toBe(200);
    expect(moved.headers.etag).not.toBe(created.headers.etag);
    expect(moved.headers.etag).toBe(await etagOf(routerId));
  });

  it("PUT with a stale If-Match is 412 with the current ETag, and writes nothing", async () => {
    const router = await core.seedRouter({ revision: 2 });
    const current = await etagOf(router.routerId);
    const result = await core.expectNothingWritten(() =>
      put(
        router.routerId,
        { project_id: router.projectId, host: "node-b" },
        { "if-match": '"r1-0000000000000000"' },
      ),
    );
    expect(result.statusCode).toBe(412);
    expect(result.headers.etag).toBe(current);
    expect(bodyOf(result).error.code).toBe("precondition_failed");
  });

  it("PUT with If-Match of a router that does not exist is 412 without an ETag; * admits any existing one", async () => {
    const absent = await core.expectNothingWritten(() =>
      put(newId(), { project_id: newProject(), host: "node-a" }, { "if-match": "*" }),
    );
    expect(absent.statusCode).toBe(412);
    expect(absent.headers.etag).toBeUndefined();
    const router = await core.seedRouter();
    const star = await put(
      router.routerId,
      { project_id: router.projectId, host: "node-b" },
      { "if-match": "*" },
    );
    expect(star.statusCode).toBe(200);
  });

  it("refuses an empty If-Match with 400", async () => {
    const router = await core.seedRouter();
    const result = await core.expectNothingWritten(() =>
      put(router.routerId, { project_id: router.projectId, host: "node-b" }, { "if-match": " " }),
    );
    expect(result.statusCode).toBe(400);
  });

  it("DELETE honours If-Match: 412 with the current ETag when stale, 204 when it matches", async () => {
    const router = await core.seedRouter({ revision: 1 });
    const current = await etagOf(router.routerId);
    const stale = await core.expectNothingWritten(() => del(router.routerId, { "if-match": `W/${current}` }));
    expect(stale.statusCode).toBe(412);
    expect(stale.headers.etag).toBe(current);
    expect((await del(router.routerId, { "if-match": current })).statusCode).toBe(204);
    expect(await core.store.get(router.routerId)).toBeUndefined();
  });

  describe("on POST /v1/notifications", () => {
    const post = (body: unknown, claims: Record<string, unknown>, ifMatch: string) =>
      call({ method: "POST", path: "/v1/notifications", body, claims, headers: { "if-match": ifMatch } });

    it("applies a single-router notification whose If-Match is the helpers route's ETag", async () => {
      const project = newProject();
      const router = await core.seedRouter({ projectId: project, helpers: [storedHelper()], revision: 1 });
      const claims = httpApiClaims(project);
      const before = await call({
        method: "GET",
        path: `/v1/routers/${router.routerId}/conntrack-helpers`,
        claims,
      });
      const result = await post(
        { event: "created", conntrack_helpers: [wireHelper(router.routerId)] },
        claims,
        before.headers.etag!,
      );
      expect(result.statusCode).toBe(202);
      expect((await core.store.get(router.routerId))?.revision).toBe(2);
    });

    it("refuses a stale If-Match with 412 and the current ETag, writing and queueing nothing", async () => {
      const project = newProject();
      const router = await core.seedRouter({ projectId: project, revision: 4 });
      const current = await etagOf(router.routerId);
      const result = await core.expectNothingWritten(() =>
        post(
          { event: "created", conntrack_helpers: [wireHelper(router.routerId)] },
          httpApiClaims(project),
          '"r3-0"',
        ),
      );
      expect(result.statusCode).toBe(412);
      expect(result.headers.etag).toBe(current);
    });

    it("refuses If-Match on a notification naming several routers with 400", async () => {
      const project = newProject();
      const a = await core.seedRouter({ projectId: project });
      const b = await core.seedRouter({ projectId: project });
      const result = await core.expectNothingWritten(() =>
        post(
          { event: "created", conntrack_helpers: [wireHelper(a.routerId), wireHelper(b.routerId)] },
          httpApiClaims(project),
          "*",
        ),
      );
      expect(result.statusCode).toBe(400);
      expect(bodyOf(result).error.message).toMatch(/exactly one router/);
    });

    it("answers a foreign router 404 whatever If-Match says, never 412 with its ETag", async () => {
      const foreign = await core.seedRouter({ projectId: newProject() });
      const result = await core.expectNothingWritten(() =>
        post(
          { event: "created", conntrack_helpers: [wireHelper(foreign.routerId)] },
          httpApiClaims(newProject()),
          '"x"',
        ),
      );
      expect(result.statusCode).toBe(404);
      expect(result.headers.etag).toBeUndefined();
    });
  });

  it("a write landing between the If-Match check and the conditional write makes the request 412", async () => {
    const router = await core.seedRouter({ revision: 1 });
    const tag = await etagOf(router.routerId);
    let raced = false;
    // The first conditional write is preceded by another writer's commit: it fails, the re-plan sees 412.
    const racing: RoutersStore = Object.create(core.store, {
      put: {
        value: async (...args: Parameters<RoutersStore["put"]>) => {
          if (!raced) {
            raced = true;
            const current = (await core.store.get(router.routerId))!;
            await core.store.put(
              { ...current, revision: current.revision + 1, projectId: "someone-else" },
              current.revision,
            );
          }
          return core.store.put(...args);
        },
      },
    });
    const result = await core.call(
      httpApiEvent({
        method: "PUT",
        path: `/v1/routers/${router.routerId}`,
        body: { project_id: router.projectId, host: "node-b" },
        claims: adminClaims,
        headers: { "if-match": tag },
      }),
      core.deps({ store: racing }),
    );
    expect(raced).toBe(true);
    expect(result.statusCode).toBe(412);
    expect(result.headers.etag).toBe(await etagOf(router.routerId));
    expect((await core.store.get(router.routerId))?.projectId).toBe("someone-else");
  });
});
