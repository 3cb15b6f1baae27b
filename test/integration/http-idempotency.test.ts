/**
 * Idempotency-Key replays never cross identities (finding 6 of issue 8): the real handler with Powertools'
 * DynamoDBPersistenceLayer over dynalite. A caller who would be refused gets, with an admin's key and body,
 * exactly the answer (status and body) the same request without the key gets, and nothing changes.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { ApiGatewayResult } from "../../lib/http/api-event.ts";
import { type Claims, httpApiClaims, httpApiEvent, restApiEvent } from "../support/events.ts";
import { newId, PROJECT_A, PROJECT_B, qrouters, wireHelper } from "../support/factories.ts";
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

type Build = typeof httpApiEvent;
const post = (claims: Claims, body: unknown, key?: string, build: Build = httpApiEvent) =>
  core.call(
    build({
      method: "POST",
      path: "/v1/notifications",
      body,
      claims,
      ...(key === undefined ? {} : { headers: { "idempotency-key": key } }),
    }),
  );
const created = (routerId: string) => ({ event: "created", conntrack_helpers: [wireHelper(routerId)] });
const answer = (result: ApiGatewayResult) => ({ status: result.statusCode, body: result.body });

/** Claims as an identity provider would issue them to one person, who may hold several powers. */
const person = (projectId: string, sub: string, roles: string[] = []) => ({
  ...httpApiClaims(projectId, roles),
  sub,
});

describe.each([
  ["HTTP API (v2)", httpApiEvent],
  ["REST API (v1)", restApiEvent],
])("an admin's Idempotency-Key replayed by someone else (%s)", (_name, build) => {
  it.each([
    ["a member of another project", PROJECT_A, "member-sub", []],
    ["a member of the admin's own project", "operators", "member-sub", []],
    ["a member sharing the admin's project and sub (local dev tokens)", "operators", "dev:operators", []],
    ["a service sharing the admin's project and sub", "operators", "dev:operators", ["service"]],
    ["a member without a sub", PROJECT_A, undefined, []],
  ] as const)("%s gets the fresh answer, not the admin's 202", async (_who, project, sub, roles) => {
    const theirs = await core.seedRouter({ projectId: PROJECT_B, bindings: qrouters("node-b") });
    const body = created(theirs.routerId);
    const key = `key-${newId()}`;
    const admin = person("operators", "dev:operators", ["admin"]);
    const original = await post(admin, body, key, build);
    expect(original.statusCode).toBe(202);
    expect((await core.queued("node-b")).map((m) => m.revision)).toEqual([1]);

    const caller: Record<string, string> = { ...person(project, sub ?? "", [...roles]) };
    if (sub === undefined) delete caller.sub;
    const fresh = await core.expectNothingWritten(() => post(caller, body, undefined, build));
    expect(fresh.statusCode).toBeGreaterThanOrEqual(400);
    const replayed = await core.expectNothingWritten(() => post(caller, body, key, build));
    expect(answer(replayed)).toEqual(answer(fresh));
    expect(replayed.body).not.toBe(original.body);
    expect((await core.store.get(theirs.routerId))?.revision).toBe(1);

    // The admin's own replay still answers what it answered, and changes nothing.
    const again = await core.expectNothingWritten(() => post(admin, body, key, build));
    expect(answer(again)).toEqual(answer(original));
  });
});

describe("a replay by the same caller", () => {
  it("answers exactly as the original, with one change and one snapshot", async () => {
    const mine = await core.seedRouter({ projectId: PROJECT_A });
    const body = created(mine.routerId);
    const key = `key-${newId()}`;
    const claims = person(PROJECT_A, "user-1");
    const original = await post(claims, body, key);
    expect(original.statusCode).toBe(202);
    const replayed = await core.expectNothingWritten(() => post({ ...claims }, body, key));
    expect(answer(replayed)).toEqual(answer(original));
    expect(bodyOf(replayed)).toEqual({ routers: [{ router_id: mine.routerId, revision: 1 }] });
    expect(await core.queued("node-a")).toHaveLength(1);
  });

  it("is not shared with a colleague of the same project (another sub): theirs runs afresh", async () => {
    const mine = await core.seedRouter({ projectId: PROJECT_A });
    const key = `key-${newId()}`;
    await post(person(PROJECT_A, "user-1"), created(mine.routerId), key);
    const colleague = await post(person(PROJECT_A, "user-2"), created(mine.routerId), key);
    expect(colleague.statusCode).toBe(202);
    expect(bodyOf(colleague)).toEqual({ routers: [{ router_id: mine.routerId, revision: 2 }] });
  });
});

describe("an Idempotency-Key with If-Match", () => {
  const postIf = (claims: Claims, body: unknown, key: string, ifMatch: string) =>
    core.call(
      httpApiEvent({
        method: "POST",
        path: "/v1/notifications",
        body,
        claims,
        headers: { "idempotency-key": key, "if-match": ifMatch },
      }),
    );

  it("replays the original for the same If-Match, and refuses another If-Match with 409", async () => {
    const mine = await core.seedRouter({ projectId: PROJECT_A });
    const claims = person(PROJECT_A, "user-1");
    const etag = (
      await core.call(
        httpApiEvent({ method: "GET", path: `/v1/routers/${mine.routerId}/conntrack-helpers`, claims }),
      )
    ).headers.etag!;
    const body = created(mine.routerId);
    const key = `key-${newId()}`;
    const original = await postIf(claims, body, key, etag);
    expect(original.statusCode).toBe(202);
    // The tag is stale now, but the replay answers what the request answered, not a 412.
    const replayed = await core.expectNothingWritten(() => postIf({ ...claims }, body, key, etag));
    expect(answer(replayed)).toEqual(answer(original));
    const other = await core.expectNothingWritten(() => postIf({ ...claims }, body, key, "*"));
    expect(other.statusCode).toBe(409);
  });

  it("runs a request refused with 412 afresh on retry: the refusal is not remembered", async () => {
    const mine = await core.seedRouter({ projectId: PROJECT_A, revision: 2 });
    const claims = person(PROJECT_A, "user-1");
    const body = created(mine.routerId);
    const key = `key-${newId()}`;
    const stale = await core.expectNothingWritten(() => postIf(claims, body, key, '"r1-0"'));
    expect(stale.statusCode).toBe(412);
    const again = await postIf({ ...claims }, body, `${key}-2`, stale.headers.etag!);
    expect(again.statusCode).toBe(202);
    const retried = await postIf({ ...claims }, body, key, '"r1-0"');
    expect(retried.statusCode).toBe(412);
    expect(retried.headers.etag).not.toBe(stale.headers.etag);
  });
});
