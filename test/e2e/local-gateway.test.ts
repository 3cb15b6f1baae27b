/**
 * The local stack's API Gateway stand-in: the JWT checks API Gateway's authorizer makes (every rejection is a
 * 401 in the project's error shape and the function is never invoked), event shape as recorded from a real
 * HTTP API, and response mapping. Real ES256 keys, real HTTP over loopback.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { APIGatewayProxyEventV2WithJWTAuthorizer } from "aws-lambda";
import { SignJWT } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { makeHandler } from "../../functions/http.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { loadLimits } from "../../lib/config.ts";
import { identityFromClaims } from "../../lib/domain/identity.ts";
import { buildSchemas } from "../../lib/schemas/index.ts";
import { loadOrCreateSigningKey, type SigningKey, signToken } from "../../scripts/local/auth.ts";
import {
  type Gateway,
  type GatewayOptions,
  type HttpResult,
  handleRequest,
  matchRoute,
  ROUTES,
  startGateway,
} from "../../scripts/local/gateway.ts";
import { REPO_ROOT, signingKeyFile } from "../../scripts/local/paths.ts";
import { parseTokenArgs } from "../../scripts/token.ts";
import {
  fixedClock,
  newId,
  PROJECT_A,
  PROJECT_B,
  qrouters,
  routerRecord,
  wireHelper,
} from "../support/factories.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../support/memory.ts";

const ROUTER = "0b3a4c3e-58a3-4f5e-9b61-2f0f0c6a9d11";
const fixture = JSON.parse(
  readFileSync(new URL("../fixtures/aws-events/apigw-http-jwt.json", import.meta.url), "utf8"),
) as APIGatewayProxyEventV2WithJWTAuthorizer;

let dir: string;
let key: SigningKey;
let otherKey: SigningKey;
let invocations: APIGatewayProxyEventV2WithJWTAuthorizer[];
let reply: (event: APIGatewayProxyEventV2WithJWTAuthorizer) => Promise<HttpResult>;

const options = (): GatewayOptions => ({
  key,
  port: 0,
  timeoutMs: 300,
  handler: async (event) => {
    invocations.push(event);
    return reply(event);
  },
});

const request = (token: string | undefined, init: { method?: string; url?: string; body?: string } = {}) =>
  handleRequest(options(), {
    method: init.method ?? "GET",
    url: init.url ?? `/v1/routers/${ROUTER}/conntrack-helpers`,
    headers: {
      host: "127.0.0.1:3000",
      "user-agent": "vitest",
      "content-type": "application/json",
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
    },
    body: Buffer.from(init.body ?? ""),
    sourceIp: "127.0.0.1",
  });

const json = (body: Buffer) => JSON.parse(body.toString("utf8"));

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "cth-gateway-"));
  key = await loadOrCreateSigningKey(join(dir, "key.json"));
  otherKey = await loadOrCreateSigningKey(join(dir, "other.json"));
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

beforeEach(() => {
  invocations = [];
  reply = async () => ({
    statusCode: 200,
    headers: { "Content-Type": "application/json" },
    body: '{"ok":true}',
  });
});

describe("dev signing key", () => {
  it("is created once, private to the owner, and reused by every later caller (even concurrent ones)", async () => {
    const file = join(dir, "shared", "dev-signing-key.json");
    const keys = await Promise.all(Array.from({ length: 5 }, () => loadOrCreateSigningKey(file)));
    expect(new Set(keys.map((k) => k.kid)).size).toBe(1);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect((await loadOrCreateSigningKey(file)).kid).toBe(keys[0]!.kid);
    // A token from one loaded copy verifies against another: same key material, not just the same kid.
    const token = await signToken(keys[3]!, { projectId: "demo" });
    const response = await handleRequest(
      { ...options(), key: keys[0]! },
      {
        method: "GET",
        url: `/v1/routers/${ROUTER}/conntrack-helpers`,
        headers: { authorization: `Bearer ${token}` },
        body: Buffer.alloc(0),
        sourceIp: "127.0.0.1",
      },
    );
    expect(response.statusCode).toBe(200);
  });
});

describe("JWT authorizer", () => {
  const rejected = async (token: string | undefined, reason: RegExp, header?: string) => {
    const response = header
      ? await handleRequest(options(), {
          method: "GET",
          url: `/v1/routers/${ROUTER}/conntrack-helpers`,
          headers: { authorization: header },
          body: Buffer.alloc(0),
          sourceIp: "127.0.0.1",
        })
      : await request(token);
    expect(response.statusCode).toBe(401);
    expect(json(response.body)).toEqual({
      error: { code: "unauthorized", message: expect.stringMatching(reason) },
    });
    expect(response.headers["www-authenticate"]).toMatch(/^Bearer error="invalid_token"/);
    // Nothing reached the function.
    expect(invocations).toEqual([]);
  };

  it("accepts a valid token and hands the claims over as API Gateway does: strings, arrays bracketed", async () => {
    const token = await signToken(key, {
      projectId: "demo",
      roles: ["admin", "service"],
      claims: { groups: ["a", "b c"] },
    });
    const response = await request(token);
    expect(response.statusCode).toBe(200);
    expect(invocations).toHaveLength(1);
    const { claims, scopes } = invocations[0]!.requestContext.authorizer.jwt;
    expect(claims.project_id).toBe("demo");
    expect(claims.scope).toBe("cth:admin cth:service");
    expect(claims.groups).toBe("[a b c]");
    expect(scopes).toEqual(["cth:admin", "cth:service"]);
    for (const value of Object.values(claims)) expect(typeof value).toBe("string");
    const identity = identityFromClaims(claims);
    expect([...identity.roles].sort()).toEqual(["admin", "service"]);
  });

  it("rejects an expired token", async () => {
    const now = Math.floor(Date.now() / 1000);
    await rejected(await signToken(key, { projectId: "demo", now: now - 7200, ttlSeconds: 60 }), /expired/);
  });

  it("rejects a token signed by another key (same kid header)", async () => {
    const forged = await new SignJWT({ project_id: "demo", roles: ["admin"] })
      .setProtectedHeader({ alg: "ES256", kid: key.kid })
      .setIssuer("https://cth.local/dev")
      .setAudience("cth-local")
      .setIssuedAt()
      .setExpirationTime("1h")
      .sign(otherKey.privateKey);
    await rejected(forged, /signature/);
  });

  it("rejects a token whose payload was altered after signing", async () => {
    const [header, , signature] = (await signToken(key, { projectId: "demo" })).split(".");
    const payload = Buffer.from(
      JSON.stringify({
        project_id: "demo",
        roles: ["admin"],
        iss: "https://cth.local/dev",
        aud: "cth-local",
      }),
    ).toString("base64url");
    await rejected(`${header}.${payload}.${signature}`, /signature|malformed/);
  });

  it("rejects a wrong issuer and a wrong audience", async () => {
    await rejected(await signToken(key, { projectId: "demo", issuer: "https://evil.example/" }), /issuer/);
    invocations = [];
    await rejected(await signToken(key, { projectId: "demo", audience: "other-api" }), /audience/);
  });

  it("rejects an unsigned (alg none) token, a missing header and a non-bearer scheme", async () => {
    const none = `${Buffer.from('{"alg":"none"}').toString("base64url")}.${Buffer.from(
      JSON.stringify({ project_id: "demo", roles: ["admin"], exp: 9_999_999_999 }),
    ).toString("base64url")}.`;
    await rejected(none, /malformed|not a bearer|algorithm/);
    await rejected(undefined, /missing/);
    await rejected(undefined, /not a bearer/, `Basic ${Buffer.from("demo:demo").toString("base64")}`);
  });

  it("matches the route before authorizing: unknown routes are 404 with or without a token", async () => {
    const token = await signToken(key, { projectId: "demo" });
    for (const [method, url] of [
      ["GET", "/v1/notifications"],
      ["POST", "/v1/routers"],
      ["GET", "/v1/routers//conntrack-helpers"],
      ["PATCH", `/v1/routers/${ROUTER}`],
    ] as const) {
      for (const auth of [token, undefined]) {
        const response = await request(auth, { method, url });
        expect(response.statusCode, `${method} ${url}`).toBe(404);
        expect(json(response.body).error.code).toBe("not_found");
      }
    }
    expect(invocations).toEqual([]);
  });
});

/** Tokens whose `roles` or `scope` tried to smuggle admin in (finding 4 of issue 8). */
const ATTACKS: readonly [string, Record<string, unknown>][] = [
  ["a role with a space", { roles: ["cloud admin"] }],
  ["a role element holding the admin scope", { roles: ["x cth:admin"] }],
  ["the old admin role", { roles: ["admin"] }],
  ["a scope array element with a space", { scope: ["x cth:admin"] }],
  ["a scope string that looks flattened", { scope: "[x cth:admin]" }],
  ["a substring of the scope", { scope: "cth:administrator" }],
];

describe("route scopes (authorizationScopes)", () => {
  it("answers 403 before the function on PUT and DELETE without cth:admin, as API Gateway does", async () => {
    for (const [what, claims] of [["no scope", {}], ...ATTACKS] as const) {
      const token = await signToken(key, { projectId: "demo", claims });
      for (const method of ["PUT", "DELETE"]) {
        const response = await request(token, { method, url: `/v1/routers/${ROUTER}`, body: "{}" });
        expect(response.statusCode, `${what} ${method}`).toBe(403);
        expect(json(response.body)).toEqual({
          error: { code: "forbidden", message: "this route requires the scope cth:admin" },
        });
        expect(response.headers["www-authenticate"]).toMatch(
          /^Bearer scope="cth:admin" error="insufficient_scope"/,
        );
      }
    }
    expect(invocations).toEqual([]);
  });

  it("lets cth:admin through to the admin routes and needs no scope on the others", async () => {
    const adminToken = await signToken(key, { projectId: "ops", claims: { scope: "openid cth:admin" } });
    expect((await request(adminToken, { method: "DELETE", url: `/v1/routers/${ROUTER}` })).statusCode).toBe(
      200,
    );
    const memberToken = await signToken(key, { projectId: "demo" });
    expect((await request(memberToken)).statusCode).toBe(200);
    expect((await request(memberToken, { method: "POST", url: "/v1/notifications" })).statusCode).toBe(200);
    expect(invocations).toHaveLength(3);
  });
});

describe("the real HTTP function behind the gateway: an attack token is a plain member", () => {
  const limits = loadLimits();
  const catalog = new HelperCatalog();
  let store: MemoryRoutersStore;
  let queue: MemoryCommandQueue;
  let gateway: Gateway;
  const foreign = newId();
  const own = newId();

  beforeAll(async () => {
    store = new MemoryRoutersStore();
    queue = new MemoryCommandQueue();
    await store.put(
      routerRecord({ routerId: foreign, projectId: PROJECT_B, bindings: qrouters("node-a") }),
      undefined,
    );
    await store.put(
      routerRecord({ routerId: own, projectId: PROJECT_A, bindings: qrouters("node-a") }),
      undefined,
    );
    const log = { info: () => undefined, warn: () => undefined, error: () => undefined };
    const handler = makeHandler({
      domain: { store, queue, clock: fixedClock(), limits, log },
      schemas: buildSchemas(limits, catalog),
      logger: log,
      idempotency: undefined,
    });
    gateway = await startGateway({ key, port: 0, handler: handler as GatewayOptions["handler"] });
  });
  afterAll(async () => gateway.close());

  const call = async (token: string, method: string, path: string, body?: unknown) => {
    const response = await fetch(`${gateway.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };
  const notify = (routerId: string) => ({ event: "created", conntrack_helpers: [wireHelper(routerId)] });

  it.each(ATTACKS)("%s: no foreign router, no admin route, nothing written", async (_what, claims) => {
    const token = await signToken(key, { projectId: PROJECT_A, claims });
    const writes = store.writes;
    // Admin powers would reach project B's router; a member gets the unknown-router 404.
    const read = await call(token, "GET", `/v1/routers/${foreign}/conntrack-helpers`);
    expect(read.status).toBe(404);
    expect((await call(token, "POST", "/v1/notifications", notify(foreign))).status).toBe(404);
    const put = await call(token, "PUT", `/v1/routers/${newId()}`, { project_id: PROJECT_A, host: "node-a" });
    expect(put.status).toBe(403);
    expect((await call(token, "DELETE", `/v1/routers/${own}`)).status).toBe(403);
    expect(store.writes).toBe(writes);
    expect(queue.all()).toEqual([]);
    // ...while it still acts as a member of its own project.
    expect((await call(token, "GET", `/v1/routers/${own}/conntrack-helpers`)).status).toBe(200);
  });

  it("a token from npm run token --role admin is admin end to end", async () => {
    const token = await signToken(key, { projectId: "ops", roles: ["admin"] });
    expect((await call(token, "GET", `/v1/routers/${foreign}/conntrack-helpers`)).status).toBe(200);
    const created = newId();
    const put = await call(token, "PUT", `/v1/routers/${created}`, { project_id: PROJECT_B, host: "node-b" });
    expect(put.status).toBe(201);
    expect(await store.get(created)).toMatchObject({ projectId: PROJECT_B, bindings: qrouters("node-b") });
  });
});

describe("event and response mapping", () => {
  it("builds events with the recorded HTTP API shape, route key and path parameters", async () => {
    const token = await signToken(key, { projectId: "p1", roles: ["admin"] });
    await request(token, {
      method: "PUT",
      url: `/v1/routers/${ROUTER}?a=1&a=2`,
      body: '{"project_id":"p1"}',
    });
    const event = invocations[0]!;
    for (const name of Object.keys(fixture)) expect(event).toHaveProperty(name);
    for (const name of Object.keys(fixture.requestContext)) expect(event.requestContext).toHaveProperty(name);
    expect(Object.keys(event.requestContext.authorizer)).toEqual(["jwt"]);
    expect(event).toMatchObject({
      version: "2.0",
      routeKey: "PUT /v1/routers/{router_id}",
      rawPath: `/v1/routers/${ROUTER}`,
      rawQueryString: "a=1&a=2",
      queryStringParameters: { a: "1,2" },
      pathParameters: { router_id: ROUTER },
      body: '{"project_id":"p1"}',
      isBase64Encoded: false,
      requestContext: { http: { method: "PUT", path: `/v1/routers/${ROUTER}` }, stage: "$default" },
    });
    expect(event.headers.authorization).toBe(`Bearer ${token}`);
    expect(event.requestContext.time).toMatch(/^\d{2}\/[A-Z][a-z]{2}\/\d{4}:\d{2}:\d{2}:\d{2} \+0000$/);
  });

  it("base64-encodes non-text bodies, as API Gateway does", async () => {
    const token = await signToken(key, { projectId: "p1" });
    await handleRequest(options(), {
      method: "POST",
      url: "/v1/notifications",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/octet-stream" },
      body: Buffer.from([0, 1, 2, 255]),
      sourceIp: "127.0.0.1",
    });
    expect(invocations[0]).toMatchObject({
      isBase64Encoded: true,
      body: Buffer.from([0, 1, 2, 255]).toString("base64"),
    });
  });

  it("maps structured, bare and base64 results; a throwing or hanging function never leaks internals", async () => {
    const token = await signToken(key, { projectId: "p1" });
    reply = async () => ({ statusCode: 202, headers: { "X-A": 1 }, body: "aGk=", isBase64Encoded: true });
    let response = await request(token);
    expect(response).toMatchObject({ statusCode: 202, headers: { "x-a": "1" } });
    expect(response.body.toString()).toBe("hi");

    reply = async () => ({ routers: [] });
    response = await request(token);
    expect(response.statusCode).toBe(200);
    expect(json(response.body)).toEqual({ routers: [] });

    reply = async () => {
      throw new Error("secret table name cth-prod-routers");
    };
    response = await request(token);
    expect(response.statusCode).toBe(500);
    expect(response.body.toString()).not.toContain("secret");
    expect(json(response.body).error.code).toBe("internal_error");

    reply = () => new Promise(() => undefined);
    response = await request(token);
    expect(response.statusCode).toBe(503);
    expect(json(response.body).error.code).toBe("service_unavailable");
  });

  it("declares exactly the routes the contract names", () => {
    expect(ROUTES.map((r) => `${r.method} ${r.path}`)).toEqual([
      "POST /v1/notifications",
      "GET /v1/routers/{router_id}/conntrack-helpers",
      "PUT /v1/routers/{router_id}",
      "DELETE /v1/routers/{router_id}",
    ]);
    expect(matchRoute("GET", `/v1/routers/${ROUTER}/conntrack-helpers`)?.pathParameters).toEqual({
      router_id: ROUTER,
    });
  });
});

describe("over a real loopback socket", () => {
  let gateway: Gateway;
  beforeAll(async () => {
    gateway = await startGateway(options());
  });
  afterAll(async () => gateway.close());

  it("serves 401 without a token and the function's answer with one", async () => {
    expect(gateway.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const anonymous = await fetch(`${gateway.url}/v1/routers/${ROUTER}/conntrack-helpers`);
    expect(anonymous.status).toBe(401);
    expect(await anonymous.json()).toMatchObject({ error: { code: "unauthorized" } });
    expect(invocations).toEqual([]);
    const token = await signToken(key, { projectId: "demo" });
    const ok = await fetch(`${gateway.url}/v1/routers/${ROUTER}/conntrack-helpers`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ ok: true });
    expect(invocations).toHaveLength(1);
  });
});

describe("npm run token", () => {
  it("--role admin mints a token the admin routes accept; without it the same routes answer 403", async () => {
    const local = join(dir, "token-script");
    const mint = async (...args: string[]) =>
      (
        await promisify(execFile)("npm", ["run", "-s", "token", "--", "--project", "ops", ...args], {
          cwd: REPO_ROOT,
          env: { ...process.env, CTH_LOCAL_DIR: local },
        })
      ).stdout.trim();
    const admin = await mint("--role", "admin");
    const member = await mint();
    const scriptKey = await loadOrCreateSigningKey(signingKeyFile(local));
    const put = (token: string) =>
      handleRequest(
        { ...options(), key: scriptKey },
        {
          method: "PUT",
          url: `/v1/routers/${ROUTER}`,
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: Buffer.from("{}"),
          sourceIp: "127.0.0.1",
        },
      );
    expect((await put(member)).statusCode).toBe(403);
    expect(invocations).toEqual([]);
    expect((await put(admin)).statusCode).toBe(200);
    const claims = invocations[0]!.requestContext.authorizer.jwt.claims;
    expect(claims).toMatchObject({ project_id: "ops", scope: "cth:admin", sub: "dev:ops" });
    expect(claims.roles).toBeUndefined();
  }, 60_000);
});

describe("npm run token arguments", () => {
  it("accepts a project, roles and a TTL; rejects anything else", () => {
    expect(parseTokenArgs(["--project", "demo", "--role", "admin", "--ttl", "60"])).toEqual({
      help: false,
      projectId: "demo",
      roles: ["admin"],
      ttlSeconds: 60,
    });
    expect(() => parseTokenArgs([])).toThrow(/--project/);
    expect(() => parseTokenArgs(["--project", "a b"])).toThrow(/--project/);
    expect(() => parseTokenArgs(["--project", "demo", "--role", "root"])).toThrow(/--role/);
    expect(() => parseTokenArgs(["--project", "demo", "--ttl", "0"])).toThrow(/--ttl/);
    expect(() => parseTokenArgs(["--project", "demo", "--bogus"])).toThrow();
  });
});
