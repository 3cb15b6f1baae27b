/**
 * The local stack's API Gateway stand-in: the JWT checks API Gateway's authorizer makes (every rejection is
 * API Gateway's own 401 or 403 and the function is never invoked), the gateway's other answers (404, 413,
 * 429, 500) in API Gateway's shape, routes from the one route table, event shape as recorded from a real HTTP
 * API, and response mapping. Real RS256 keys, real HTTP over loopback.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { APIGatewayProxyEventV2WithJWTAuthorizer } from "aws-lambda";
import {
  createLocalJWKSet,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  jwtVerify,
  SignJWT,
} from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { makeHandler } from "../../functions/http.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { loadLimits } from "../../lib/config.ts";
import { identityFromClaims } from "../../lib/domain/identity.ts";
import { ROUTES, routeKey } from "../../lib/http/routes.ts";
import { buildSchemas } from "../../lib/schemas/index.ts";
import {
  LOCAL_AUDIENCE,
  LOCAL_ISSUER,
  loadOrCreateSigningKey,
  publicJwks,
  type SigningKey,
  signToken,
} from "../../scripts/local/auth.ts";
import {
  DEFAULT_THROTTLE,
  GATEWAY_MAX_BODY_BYTES,
  type Gateway,
  type GatewayOptions,
  type GatewayResponse,
  type HttpResult,
  handleRequest,
  OPENAPI_PATH,
  resolveRoute,
  startGateway,
  TokenBucket,
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
/** API Gateway's request id: 11 random bytes in base64, as in the recorded event. */
const REQUEST_ID = /^[A-Za-z0-9+/]{15}=$/;

/** An answer API Gateway makes itself: exactly `{"message"}`, JSON, stamped with apigw-requestid. */
const expectGatewayAnswer = (response: GatewayResponse, status: number, message: string) => {
  expect(response.statusCode).toBe(status);
  expect(json(response.body)).toEqual({ message });
  expect(response.headers["content-type"]).toBe("application/json");
  expect(response.headers["apigw-requestid"]).toMatch(REQUEST_ID);
};

/** A token signed some other way than the local issuer's RS256 key, with the issuer's kid and claims. */
const foreignToken = (alg: string, kid: string) =>
  new SignJWT({ project_id: "demo", scope: "cth:admin" })
    .setProtectedHeader({ alg, kid })
    .setIssuer(LOCAL_ISSUER)
    .setAudience(LOCAL_AUDIENCE)
    .setIssuedAt()
    .setExpirationTime("1h");

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

  it("is an RSA 2048 key whose JWKS carries kty RSA, alg RS256 and no private part", async () => {
    const data = JSON.parse(readFileSync(join(dir, "key.json"), "utf8"));
    expect(data.alg).toBe("RS256");
    const { keys } = publicJwks(key);
    expect(keys).toHaveLength(1);
    expect(keys[0]).toMatchObject({ kty: "RSA", alg: "RS256", use: "sig", kid: key.kid });
    expect(Buffer.from(keys[0]!.n!, "base64url")).toHaveLength(256);
    for (const name of ["d", "p", "q", "dp", "dq", "qi"]) expect(keys[0]).not.toHaveProperty(name);
  });

  it("round trip: tokens are RS256 with the key's kid and verify against the published JWKS", async () => {
    const token = await signToken(key, { projectId: "demo", roles: ["admin"] });
    expect(decodeProtectedHeader(token)).toEqual({ alg: "RS256", kid: key.kid, typ: "JWT" });
    const { payload } = await jwtVerify(token, createLocalJWKSet(publicJwks(key)), {
      algorithms: ["RS256"],
      issuer: LOCAL_ISSUER,
      audience: LOCAL_AUDIENCE,
    });
    expect(payload).toMatchObject({ project_id: "demo", scope: "cth:admin", sub: "dev:demo" });
    expect((await request(token)).statusCode).toBe(200);
  });

  it("replaces a key file of another algorithm (a pre-RS256 ES256 key), keeping the old one aside", async () => {
    const file = join(dir, "legacy", "dev-signing-key.json");
    const { privateKey, publicKey } = await generateKeyPair("ES256", { extractable: true });
    const legacy = {
      kid: "legacy",
      alg: "ES256",
      privateJwk: await exportJWK(privateKey),
      publicJwk: await exportJWK(publicKey),
    };
    await loadOrCreateSigningKey(join(dir, "legacy", "warm-up.json"));
    writeFileSync(file, JSON.stringify(legacy), { mode: 0o600 });
    const replaced = await loadOrCreateSigningKey(file);
    expect(replaced.kid).not.toBe("legacy");
    expect(JSON.parse(readFileSync(file, "utf8")).alg).toBe("RS256");
    expect(existsSync(`${file}.ES256.old`)).toBe(true);
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
    expectGatewayAnswer(response, 401, "Unauthorized");
    const challenge = response.headers["www-authenticate"] ?? "";
    expect(challenge).toMatch(/^Bearer scope="" error="invalid_token" error_description="([^"]*)"$/);
    expect(/error_description="([^"]*)"/.exec(challenge)?.[1]).toMatch(reason);
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
    await rejected(
      await signToken(key, { projectId: "demo", now: now - 7200, ttlSeconds: 60 }),
      /^the token has expired$/,
    );
  });

  it("accepts the bare token too: the identity source may hold it with or without `Bearer `", async () => {
    const token = await signToken(key, { projectId: "demo" });
    const response = await handleRequest(options(), {
      method: "GET",
      url: `/v1/routers/${ROUTER}/conntrack-helpers`,
      headers: { authorization: token },
      body: Buffer.alloc(0),
      sourceIp: "127.0.0.1",
    });
    expect(response.statusCode).toBe(200);
    expect(invocations).toHaveLength(1);
  });

  it("rejects an ES256 token and an HS256 one keyed with the public key: RS256 only", async () => {
    const { privateKey } = await generateKeyPair("ES256");
    await rejected(
      await foreignToken("ES256", key.kid).sign(privateKey),
      /^the token's signing algorithm is not RS256$/,
    );
    const hmacKey = new TextEncoder().encode(JSON.stringify(publicJwks(key).keys[0]));
    await rejected(
      await foreignToken("HS256", key.kid).sign(hmacKey),
      /^the token's signing algorithm is not RS256$/,
    );
  });

  it("rejects a token signed by another RS256 key (same kid header): a bad signature", async () => {
    const forged = await foreignToken("RS256", key.kid).sign(otherKey.privateKey);
    await rejected(forged, /^signature verification failed$/);
  });

  it("rejects a kid the JWKS does not hold, a token not valid yet and one without iat", async () => {
    await rejected(
      await foreignToken("RS256", otherKey.kid).sign(otherKey.privateKey),
      /^no key in the issuer's JWKS matches the token$/,
    );
    const later = Math.floor(Date.now() / 1000) + 3600;
    await rejected(
      await signToken(key, { projectId: "demo", claims: { nbf: later } }),
      /^the token is not valid yet$/,
    );
    const noIat = await new SignJWT({ project_id: "demo" })
      .setProtectedHeader({ alg: "RS256", kid: key.kid })
      .setIssuer(LOCAL_ISSUER)
      .setAudience(LOCAL_AUDIENCE)
      .setExpirationTime("1h")
      .sign(key.privateKey);
    await rejected(noIat, /^the token's iat claim is invalid$/);
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
    await rejected(`${header}.${payload}.${signature}`, /^signature verification failed$/);
  });

  it("rejects a wrong issuer and a wrong audience", async () => {
    await rejected(
      await signToken(key, { projectId: "demo", issuer: "https://evil.example/" }),
      /^the token does not have a valid issuer$/,
    );
    invocations = [];
    // The one description AWS's documentation quotes.
    await rejected(
      await signToken(key, { projectId: "demo", audience: "other-api" }),
      /^the token does not have a valid audience$/,
    );
  });

  it("rejects an unsigned (alg none) token and a non-bearer scheme", async () => {
    const none = `${Buffer.from('{"alg":"none"}').toString("base64url")}.${Buffer.from(
      JSON.stringify({ project_id: "demo", scope: "cth:admin", exp: 9_999_999_999 }),
    ).toString("base64url")}.`;
    await rejected(none, /^the token's signing algorithm is not RS256$|^malformed token$/);
    await rejected(undefined, /^not a bearer token$/, `Basic ${Buffer.from("demo:demo").toString("base64")}`);
  });

  it("answers a request without the Authorization header 401 with no JWT challenge", async () => {
    const response = await request(undefined);
    expectGatewayAnswer(response, 401, "Unauthorized");
    expect(response.headers["www-authenticate"]).toBeUndefined();
    expect(invocations).toEqual([]);
  });

  it("matches the route before authorizing: unknown routes are 404 with or without a token", async () => {
    const token = await signToken(key, { projectId: "demo" });
    for (const [method, url] of [
      ["GET", "/v1/notifications"],
      ["POST", "/v1/routers"],
      ["GET", "/v1/routers/%E0%A4%A/conntrack-helpers"],
      ["GET", "/v1/routers//conntrack-helpers"],
      ["PATCH", `/v1/routers/${ROUTER}`],
    ] as const) {
      for (const auth of [token, undefined]) {
        const response = await request(auth, { method, url });
        expectGatewayAnswer(response, 404, "Not Found");
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
        expectGatewayAnswer(response, 403, "Forbidden");
        expect(response.headers["www-authenticate"]).toBe(
          'Bearer scope="cth:admin" error="insufficient_scope" error_description="the token has none of the route\'s scopes"',
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
    expect(event.requestContext.requestId).toMatch(REQUEST_ID);
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

    // A function's own answer, error or not, passes through in the function's shape.
    reply = async () => ({ statusCode: 409, body: '{"error":{"code":"conflict","message":"x"}}' });
    response = await request(token);
    expect(response.statusCode).toBe(409);
    expect(json(response.body)).toEqual({ error: { code: "conflict", message: "x" } });
    expect(response.headers["apigw-requestid"]).toMatch(REQUEST_ID);

    // A failed invocation (the function threw, or Lambda ended it at its timeout) is API Gateway's 500.
    reply = async () => {
      throw new Error("secret table name cth-prod-routers");
    };
    response = await request(token);
    expectGatewayAnswer(response, 500, "Internal Server Error");

    reply = () => new Promise(() => undefined);
    response = await request(token);
    expectGatewayAnswer(response, 500, "Internal Server Error");
  });

  it("routes every entry of the route table, with its route key, scopes and decoded parameters", () => {
    for (const route of ROUTES) {
      const path = route.path.replace("{router_id}", "r%2Fx");
      const resolved = resolveRoute(route.method, path);
      expect(resolved, routeKey(route)).toEqual({
        routeKey: routeKey(route),
        pathParameters: route.path.includes("{router_id}") ? { router_id: "r/x" } : undefined,
        scopes: route.scopes,
      });
    }
    expect(resolveRoute("PATCH", `/v1/routers/${ROUTER}`)).toBeUndefined();
  });
});

describe("over a real loopback socket", () => {
  const document = { openapi: "3.1.0", info: { title: "t", version: "1" }, paths: {} };
  let gateway: Gateway;
  beforeAll(async () => {
    gateway = await startGateway({ ...options(), openapi: async () => document });
  });
  afterAll(async () => gateway.close());

  it("serves 401 without a token and the function's answer with one", async () => {
    expect(gateway.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const anonymous = await fetch(`${gateway.url}/v1/routers/${ROUTER}/conntrack-helpers`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get("content-type")).toBe("application/json");
    expect(anonymous.headers.get("apigw-requestid")).toMatch(REQUEST_ID);
    expect(await anonymous.json()).toEqual({ message: "Unauthorized" });
    expect(invocations).toEqual([]);
    const token = await signToken(key, { projectId: "demo" });
    const ok = await fetch(`${gateway.url}/v1/routers/${ROUTER}/conntrack-helpers`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ ok: true });
    expect(invocations).toHaveLength(1);
    // The event's request id is the one the client sees.
    expect(ok.headers.get("apigw-requestid")).toBe(invocations[0]!.requestContext.requestId);
  });

  it(`serves the OpenAPI document at GET ${OPENAPI_PATH}, no token needed`, async () => {
    const response = await fetch(`${gateway.url}${OPENAPI_PATH}`);
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("application/json");
    expect(await response.json()).toEqual(document);
    expect(invocations).toEqual([]);
  });

  it("answers a body over the gateway's 10 MB limit 413 without invoking the function; at the limit it passes", async () => {
    const token = await signToken(key, { projectId: "demo" });
    const post = (size: number) =>
      fetch(`${gateway.url}/v1/notifications`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: Buffer.alloc(size, 0x20),
      });
    const over = await post(GATEWAY_MAX_BODY_BYTES + 1);
    expect(over.status).toBe(413);
    expect(over.headers.get("apigw-requestid")).toMatch(REQUEST_ID);
    expect(await over.json()).toEqual({ message: "Request Entity Too Large" });
    expect(invocations).toEqual([]);
    expect((await post(GATEWAY_MAX_BODY_BYTES)).status).toBe(200);
    expect(invocations[0]!.body).toHaveLength(GATEWAY_MAX_BODY_BYTES);
  }, 30_000);
});

describe("throttling", () => {
  it("is a token bucket: burst deep, refilled at rate per second, never above burst", () => {
    let now = 0;
    const bucket = new TokenBucket(2, 3, () => now);
    expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
    now = 499;
    expect(bucket.take()).toBe(false);
    now = 500;
    expect(bucket.take()).toBe(true);
    expect(bucket.take()).toBe(false);
    now = 60_000;
    expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
  });

  it("defaults to serverless.yml's httpThrottleRate and httpThrottleBurst", () => {
    const template = readFileSync(join(REPO_ROOT, "serverless.yml"), "utf8");
    expect(template).toMatch(new RegExp(`httpThrottleRate: ${DEFAULT_THROTTLE.rate}\\n`));
    expect(template).toMatch(new RegExp(`httpThrottleBurst: ${DEFAULT_THROTTLE.burst}\\n`));
  });

  it("answers 429 Too Many Requests past the burst, before route or token are looked at", async () => {
    const gateway = await startGateway({ ...options(), throttle: { rate: 1, burst: 2 } });
    try {
      const token = await signToken(key, { projectId: "demo" });
      const get = () =>
        fetch(`${gateway.url}/v1/routers/${ROUTER}/conntrack-helpers`, {
          headers: { authorization: `Bearer ${token}` },
        });
      expect((await get()).status).toBe(200);
      expect((await get()).status).toBe(200);
      const throttled = await get();
      expect(throttled.status).toBe(429);
      expect(throttled.headers.get("content-type")).toBe("application/json");
      expect(throttled.headers.get("apigw-requestid")).toMatch(REQUEST_ID);
      expect(await throttled.json()).toEqual({ message: "Too Many Requests" });
      // Even an unknown route or a request without a token is throttled first.
      expect((await fetch(`${gateway.url}/nowhere`)).status).toBe(429);
      expect(invocations).toHaveLength(2);
    } finally {
      await gateway.close();
    }
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
