/**
 * Hostile input against the HTTP function (functions/http.ts makeHandler, the real middy chain) inside the
 * recorded API Gateway envelopes (HTTP API v2 and REST v1), with the stateful in-memory routers store and
 * queue, and idempotency records on the production DynamoDBPersistenceLayer over dynalite.
 * Properties: never a 5xx; a rejected request changes neither the routers table, the idempotency table nor
 * the queue; the byte cap holds exactly; identity and ownership are never guessed; what is accepted queues
 * snapshots that the agent's schema accepts and that render to rules the real kernel takes (kernel part
 * below, on a sample). A request with an Idempotency-Key is sent again, by the same caller or another one:
 * the same caller's replay answers exactly as the original and changes nothing; anyone else gets exactly
 * what the same request without the key gets.
 */
import { DynamoDBPersistenceLayer } from "@aws-lambda-powertools/idempotency/dynamodb";
import { DeleteCommand, ScanCommand } from "@aws-sdk/lib-dynamodb";
import * as fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeHandler } from "../../functions/http.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { loadLimits } from "../../lib/config.ts";
import { isTombstone, type RouterRecord, type Tombstone } from "../../lib/ports.ts";
import { FAMILIES, planFamily } from "../../lib/rules.ts";
import { buildSchemas, type RouterSyncMessage } from "../../lib/schemas/index.ts";
import { type Emulators, startEmulators } from "../support/emulators.ts";
import { httpApiClaims, httpApiEvent, lambdaContext, restApiEvent, withQuery } from "../support/events.ts";
import { fixedClock, PROJECT_A, PROJECT_B, qrouters, routerRecord } from "../support/factories.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../support/memory.ts";
import {
  allStrings,
  fcParams,
  hostileValueArb,
  METACHARACTERS,
  mutate,
  mutationArb,
  rawTwistArb,
  twistJson,
  uuidArb,
  validHelperArb,
} from "./arbitraries.ts";
import { describeAcceptedInKernel } from "./kernel-check.ts";

const limits = loadLimits();
const catalog = new HelperCatalog();
const schemas = buildSchemas(limits, catalog);
const RUNS = Number(process.env.CTH_HOSTILE_HTTP_RUNS ?? 10_000);

// Routers in every fresh table: two of project A on node-a, one of A on node-b, one of B; one id unknown.
const R_A1 = "a1a1a1a1-0000-4000-8000-000000000001";
const R_A2 = "a2a2a2a2-0000-4000-8000-000000000002";
const R_A3 = "a3a3a3a3-0000-4000-8000-000000000003";
const R_B = "b0b0b0b0-0000-4000-8000-000000000004";
const R_UNKNOWN = "deadbeef-0000-4000-8000-000000000005";
const ROUTERS = [R_A1, R_A2, R_A3, R_B, R_UNKNOWN];
/** Helper already on R_A1 at revision 3 (so updates, deletes and conflicts have something to hit). */
const EXISTING = {
  id: "e0e0e0e0-0000-4000-8000-0000000000e1",
  protocol: "tcp" as const,
  port: 21,
  helper: "ftp",
};

const NEAR_CAP = Array.from({ length: limits.maxHelpersPerRouter - 2 }, (_, i) => ({
  id: `c0000000-0000-4000-8000-${i.toString(16).padStart(12, "0")}`,
  protocol: "udp" as const,
  port: 40_000 + i,
  helper: "tftp",
}));

const SEED: readonly RouterRecord[] = [
  routerRecord({
    routerId: R_A1,
    projectId: PROJECT_A,
    bindings: qrouters("node-a"),
    revision: 3,
    helpers: [EXISTING],
    updatedAt: "2026-11-24T00:00:00.000Z",
  }),
  routerRecord({
    routerId: R_A2,
    projectId: PROJECT_A,
    bindings: qrouters("node-a"),
    revision: 0,
    helpers: [],
    updatedAt: "2026-11-24T00:00:00.000Z",
  }),
  routerRecord({
    routerId: R_A3,
    projectId: PROJECT_A,
    bindings: qrouters("node-b"),
    revision: 7,
    // Two below the per-router cap: creates of one or two fit, three or more must be refused whole.
    helpers: NEAR_CAP,
    updatedAt: "2026-11-24T00:00:00.000Z",
  }),
  routerRecord({
    routerId: R_B,
    projectId: PROJECT_B,
    bindings: qrouters("node-a"),
    revision: 1,
    helpers: [],
    updatedAt: "2026-11-24T00:00:00.000Z",
  }),
];

async function seedStore(rows: readonly RouterRecord[] = SEED): Promise<MemoryRoutersStore> {
  const store = new MemoryRoutersStore();
  // Seeding goes through the port like any writer; the write counter is compared, not its absolute value.
  for (const row of rows) await store.put(row, undefined);
  return store;
}

async function dump(store: MemoryRoutersStore): Promise<(RouterRecord | Tombstone)[]> {
  const rows: (RouterRecord | Tombstone)[] = [];
  for await (const row of store.listAll()) rows.push(row);
  return rows.sort((a, b) => (a.routerId < b.routerId ? -1 : 1));
}

// ---- generators -------------------------------------------------------------------------------------------

/** `value` one time in `odds`, undefined otherwise. */
const rarely = <T>(value: fc.Arbitrary<T>, odds: number): fc.Arbitrary<T | undefined> =>
  fc.oneof({ weight: odds - 1, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: value });

const routerIdArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...ROUTERS) },
  { weight: 1, arbitrary: uuidArb },
);

const helperWireArb = fc
  .record({
    helper: validHelperArb(true),
    router: routerIdArb,
    project: fc.constantFrom(undefined, undefined, undefined, PROJECT_A, PROJECT_B),
  })
  .map(({ helper, router, project }) => ({
    id: helper.id,
    router_id: router,
    protocol: helper.pair.protocol,
    port: helper.port,
    helper: helper.pair.helper,
    ...(project === undefined ? {} : { project_id: project }),
  }));

const existingWireArb = fc.constantFrom(
  { id: EXISTING.id, router_id: R_A1, protocol: "tcp", port: 21, helper: "ftp" },
  { id: EXISTING.id, router_id: R_A1, protocol: "tcp", port: 2121, helper: "ftp" },
);

const helperCountArb = fc.oneof(
  { weight: 10, arbitrary: fc.integer({ min: 1, max: 4 }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      0,
      limits.maxHelpersPerNotification - 1,
      limits.maxHelpersPerNotification,
      limits.maxHelpersPerNotification + 1,
    ),
  },
);

const notificationArb = fc
  .record({
    event: fc.constantFrom("created", "created", "created", "updated", "deleted"),
    count: helperCountArb,
    primary: fc.constantFrom(R_A1, R_A2, R_A3, R_A2, R_A3, R_B),
    helpers: fc.array(fc.tuple(helperWireArb, fc.nat(9)), {
      minLength: limits.maxHelpersPerNotification + 1,
      maxLength: limits.maxHelpersPerNotification + 1,
    }),
    existing: rarely(existingWireArb, 4),
    neutron: fc.boolean(),
  })
  .map(({ event, count, primary, helpers, existing, neutron }) => {
    // Mostly one router per notification (as Neutron sends them), sometimes a stray one.
    const list: Record<string, unknown>[] = helpers
      .slice(0, count)
      .map(([helper, dice]) => (dice === 0 ? helper : { ...helper, router_id: primary }));
    if (existing && list.length > 0) list[0] = existing;
    if (!neutron) return { event, conntrack_helpers: list };
    return {
      event_type: event,
      resource_list: list.map((data) => ({
        "versioned_object.name": "ConntrackHelper",
        "versioned_object.namespace": "versionedobjects",
        "versioned_object.version": "1.0",
        "versioned_object.data": data,
      })),
    };
  });

const upsertArb = fc.record({
  project_id: fc.constantFrom(PROJECT_A, PROJECT_B, "p-new"),
  host: fc.constantFrom("node-a", "node-b", "node-c"),
});

/** Valid, mutated, twisted or unrelated bodies. */
const bodyTextArb = (base: fc.Arbitrary<unknown>): fc.Arbitrary<string> =>
  fc.oneof(
    { weight: 10, arbitrary: base.map((value) => JSON.stringify(value)) },
    {
      weight: 5,
      arbitrary: fc
        .tuple(base, fc.array(mutationArb, { minLength: 1, maxLength: 3 }))
        .map(([value, m]) => JSON.stringify(mutate(value, m)) ?? "null"),
    },
    { weight: 2, arbitrary: fc.tuple(base, rawTwistArb).map(([value, twist]) => twistJson(value, twist)) },
    {
      weight: 1,
      arbitrary: fc.oneof(
        fc.constantFrom(
          "",
          "null",
          "[]",
          "{}",
          "1",
          "true",
          '"x"',
          "{",
          "{}}",
          "\ufeff{}",
          "{'event':'created'}",
          ...METACHARACTERS,
        ),
        fc.string({ maxLength: 300 }),
        fc.json({ maxDepth: 4 }),
      ),
    },
  );

/** Pads a body to a byte size around the cap, with JSON whitespace or a multi-byte unknown key. */
const sizedArb = (text: fc.Arbitrary<string>) =>
  fc
    .tuple(text, rarely(fc.record({ delta: fc.integer({ min: -3, max: 3 }), multibyte: fc.boolean() }), 6))
    .map(([body, pad]) => {
      if (!pad || !body.endsWith("}")) return body;
      const target = limits.maxBodyBytes + pad.delta;
      const current = Buffer.byteLength(body, "utf8");
      if (current >= target) return body;
      if (!pad.multibyte) return `${body.slice(0, -1)}${" ".repeat(target - current)}}`;
      // "é" is 2 bytes: counting characters instead of bytes would let this through.
      const room = target - current - `,"pad":""`.length;
      if (room < 2) return body;
      return `${body.slice(0, -1)},"pad":"${"é".repeat(Math.floor(room / 2))}${room % 2 ? " " : ""}"}`;
    });

const claimsArb: fc.Arbitrary<Record<string, unknown> | undefined> = fc.oneof(
  { weight: 12, arbitrary: fc.constant(httpApiClaims(PROJECT_A)) },
  { weight: 2, arbitrary: fc.constant(httpApiClaims(PROJECT_B)) },
  { weight: 2, arbitrary: fc.constant(httpApiClaims("adminproject", ["admin"])) },
  { weight: 2, arbitrary: fc.constant(httpApiClaims(PROJECT_A, ["service"])) },
  { weight: 1, arbitrary: fc.constant(undefined) },
  {
    weight: 3,
    arbitrary: fc
      .record({
        project_id: fc.oneof(fc.constantFrom(PROJECT_A, PROJECT_B), hostileValueArb),
        // Where powers might hide: the old roles claim, scope (the one that counts), scp. API Gateway hands
        // an array claim over flattened, "[a b]"; an element with a space makes that ambiguous.
        claim: fc.constantFrom("roles", "scope", "scope", "scope", "scp"),
        value: fc.oneof(
          fc.constantFrom(
            "[cloud admin]",
            "[x cth:admin]",
            "[cth:admin]",
            "[ cth:admin ]",
            "[cth:admin cth:service]",
            "[a cth:admin b]",
            "[admin service]",
            "admin",
            "cth:administrator",
            "not-cth:admin",
            "CTH:ADMIN",
            "cth:admin\u0000",
            "x\tcth:admin",
            "x  cth:admin",
            "x,cth:admin",
            '["cth:admin"]',
            "cth:admin",
            "openid cth:admin",
            "cth:service",
            "[]",
            "",
          ),
          hostileValueArb,
          fc.array(fc.constantFrom("cth:admin", "cth:service", "x", "x cth:admin", "cth:admin "), {
            maxLength: 3,
          }),
        ),
        ownProto: fc.boolean(),
      })
      .map(({ project_id, claim, value, ownProto }) => {
        const claims: Record<string, unknown> = { project_id, [claim]: value };
        // An own "__proto__" claim (JSON.parse makes those) must not smuggle powers in.
        if (ownProto)
          Object.defineProperty(claims, "__proto__", { value: { scope: "cth:admin" }, enumerable: true });
        return claims;
      }),
  },
);

const pathSegmentArb = fc.oneof(
  { weight: 6, arbitrary: routerIdArb },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      "%2e%2e",
      "..",
      "%00",
      "A1A1A1A1-0000-4000-8000-000000000001",
      `${R_A1}%0a`,
      `${R_A1}/x`,
      "%E0%A4%A",
      " ",
      "__proto__",
      "constructor",
    ),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 50 }).map(encodeURIComponent) },
);

const requestArb = fc.record({
  route: fc.oneof(
    {
      weight: 8,
      arbitrary: fc.record({
        kind: fc.constant("notify" as const),
        body: sizedArb(bodyTextArb(notificationArb)),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant("upsert" as const),
        router: pathSegmentArb,
        body: sizedArb(bodyTextArb(upsertArb)),
      }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("read" as const), router: pathSegmentArb }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("delete" as const), router: pathSegmentArb }) },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant("odd" as const),
        method: fc.constantFrom("GET", "PATCH", "OPTIONS", "post", "TRACE", ""),
        path: fc.constantFrom(
          "/v1/notifications",
          "/v1/notifications/",
          "/v1/routers",
          "/",
          "/v1/routers//conntrack-helpers",
          "//v1/notifications",
        ),
        body: fc.option(fc.string({ maxLength: 50 }), { nil: undefined }),
      }),
    },
  ),
  claims: claimsArb,
  v1: fc.boolean(),
  base64: fc.oneof(
    { weight: 5, arbitrary: fc.constant(false as const) },
    { weight: 1, arbitrary: fc.constant(true as const) },
    { weight: 1, arbitrary: fc.constant("broken" as const) },
  ),
  contentType: fc.oneof(
    { weight: 8, arbitrary: fc.constant("application/json") },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        "text/plain",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/jsonx",
        "",
      ),
    },
  ),
  idempotencyKey: rarely(
    fc.oneof(
      { weight: 4, arbitrary: fc.constantFrom("k-1", "k.2:x_y", "x".repeat(128)) },
      { weight: 1, arbitrary: fc.constantFrom("x".repeat(129), "", "a b", "k\u0000") },
      { weight: 1, arbitrary: fc.string({ maxLength: 20 }) },
    ),
    2,
  ),
  /** With a key: who sends the same request again (the same caller mostly, or anyone). */
  again: fc.oneof(
    { weight: 3, arbitrary: fc.constant("same" as const) },
    { weight: 2, arbitrary: claimsArb },
  ),
});

type Req = typeof requestArb extends fc.Arbitrary<infer T> ? T : never;

function toEvent(req: Req) {
  const route = req.route;
  let method: string;
  let path: string;
  let body: string | undefined;
  switch (route.kind) {
    case "notify":
      [method, path, body] = ["POST", "/v1/notifications", route.body];
      break;
    case "upsert":
      [method, path, body] = ["PUT", `/v1/routers/${route.router}`, route.body];
      break;
    case "read":
      [method, path, body] = ["GET", `/v1/routers/${route.router}/conntrack-helpers`, undefined];
      break;
    case "delete":
      [method, path, body] = ["DELETE", `/v1/routers/${route.router}`, undefined];
      break;
    case "odd":
      [method, path, body] = [route.method, route.path, route.body];
      break;
  }
  const headers: Record<string, string> = {};
  if (body !== undefined) headers["content-type"] = req.contentType;
  if (req.idempotencyKey !== undefined) headers["idempotency-key"] = req.idempotencyKey;
  const build = req.v1 ? restApiEvent : httpApiEvent;
  const event = build({
    method,
    path,
    ...(body === undefined ? {} : { body }),
    headers,
    claims: req.claims,
    base64: req.base64 === true,
  }) as Record<string, unknown>;
  if (req.v1 && body !== undefined) {
    // The REST builder adds its own Content-Type; the generated one is the one under test.
    const h = event.headers as Record<string, string>;
    delete h["Content-Type"];
    h["content-type"] = req.contentType;
  }
  if (req.base64 === "broken" && typeof event.body === "string") {
    event.isBase64Encoded = true;
    event.body = `${event.body}!*`;
  }
  return { event, method, body };
}

const validProject = (value: unknown): value is string =>
  typeof value === "string" && /^[A-Za-z0-9_-]{1,64}$/.test(value);
/**
 * Necessary for a power: its scope token, whole, in a plain `scope` string (own property) that holds no
 * bracket (API Gateway's flattened arrays). Any other claim, `roles` included, grants nothing.
 */
const mayHave = (claims: Record<string, unknown> | undefined, scope: string): boolean => {
  const value = claims && Object.hasOwn(claims, "scope") ? claims.scope : undefined;
  return typeof value === "string" && !/[[\]]/.test(value) && value.split(" ").includes(scope);
};
const mayBeAdmin = (claims: Record<string, unknown> | undefined) => mayHave(claims, "cth:admin");

const acceptedSnapshots: RouterSyncMessage[] = [];

let emu: Emulators;
let idempotencyTable: string;
let idempotencyClient: ReturnType<Emulators["clients"]>;
beforeAll(async () => {
  emu = await startEmulators();
  const config = emu.makeConfig();
  await emu.createTables(config);
  idempotencyTable = config.idempotencyTable;
  idempotencyClient = emu.clients(config);
}, 60_000);
afterAll(async () => emu?.stop());

const idempotencyRecords = async (): Promise<Record<string, unknown>[]> =>
  (
    await idempotencyClient.dynamo.send(
      new ScanCommand({ TableName: idempotencyTable, ConsistentRead: true }),
    )
  ).Items ?? [];

/** Runs stay independent (and shrinking sound): each keyed run starts on an empty idempotency table. */
async function clearIdempotency(): Promise<void> {
  for (const item of await idempotencyRecords())
    await idempotencyClient.dynamo.send(
      new DeleteCommand({ TableName: idempotencyTable, Key: { id: item.id } }),
    );
}

type Log = { info: () => undefined; warn: () => undefined; error: (message: string) => void };
const handlerOn = (
  store: MemoryRoutersStore,
  queue: MemoryCommandQueue,
  log: Log,
  idempotency: DynamoDBPersistenceLayer | undefined,
) =>
  makeHandler({
    domain: {
      store,
      queue,
      clock: fixedClock(),
      limits,
      log,
      retry: { maxAttempts: 3, baseDelayMs: 0, maxDelayMs: 0 },
    },
    schemas,
    logger: log,
    idempotency,
  });

const answerOf = (response: { statusCode: number; body?: string }) => ({
  status: response.statusCode,
  body: response.body,
});

describe("hostile HTTP requests (functions/http.ts, real middy chain, in-memory stores, idempotency on dynalite)", () => {
  it(`never 5xx, rejected requests change nothing, accepted ones queue valid snapshots, replays answer as the original (${RUNS} requests)`, async () => {
    const statuses = new Map<number, number>();
    const tally = { replays: 0, crossed: 0, crossedRefused: 0 };
    await fc.assert(
      fc.asyncProperty(requestArb, async (req) => {
        if (req.idempotencyKey !== undefined) await clearIdempotency();
        const store = await seedStore();
        const queue = new MemoryCommandQueue();
        const errors: string[] = [];
        const log: Log = {
          info: () => undefined,
          warn: () => undefined,
          error: (message: string) => void errors.push(message),
        };
        // The production persistence layer on a real (emulated) table: Powertools' own idempotency logic
        // meets hostile Idempotency-Key headers, and completed records keep their validation hash.
        const idempotency = new DynamoDBPersistenceLayer({
          tableName: idempotencyTable,
          awsSdkV3Client: idempotencyClient.dynamoRaw,
        });
        const handler = handlerOn(store, queue, log, idempotency);
        const before = await dump(store);
        const writesBefore = store.writes;
        const { event, method, body } = toEvent(req);
        const response = await handler(event as never, lambdaContext());
        statuses.set(response.statusCode, (statuses.get(response.statusCode) ?? 0) + 1);

        // Never a 5xx, never an error logged: hostile input is the caller's problem, not an outage.
        expect(response.statusCode, response.body).toBeLessThan(500);
        expect(errors).toEqual([]);
        if (response.statusCode >= 400) {
          const parsed = JSON.parse(response.body) as { error: { code: unknown; message: unknown } };
          expect(typeof parsed.error.code).toBe("string");
          expect(typeof parsed.error.message).toBe("string");
          // A rejection changes nothing anywhere.
          expect(store.writes).toBe(writesBefore);
          expect(await dump(store)).toEqual(before);
          expect(queue.all()).toEqual([]);
        }
        // The byte cap: 413 exactly when the decoded body is over it (bodies are only read on POST and PUT).
        const bytes = body === undefined ? 0 : Buffer.byteLength(body, "utf8");
        if (req.base64 !== "broken" && body !== undefined && body !== "") {
          expect(response.statusCode === 413).toBe(bytes > limits.maxBodyBytes);
        }
        // Identity is never guessed.
        if (response.statusCode < 400) expect(validProject(req.claims?.project_id)).toBe(true);
        if ((method === "PUT" || method === "DELETE") && response.statusCode < 300)
          expect(mayBeAdmin(req.claims)).toBe(true);
        if (response.statusCode === 202) {
          const result = JSON.parse(response.body) as { routers: { router_id: string; revision: number }[] };
          const sent = queue.all();
          expect(sent.map((m) => [m.router_id, m.revision]).sort()).toEqual(
            result.routers.map((r) => [r.router_id, r.revision]).sort(),
          );
          const wasAdmin = mayBeAdmin(req.claims);
          for (const message of sent) {
            // What the cloud side queues, the agent's schema must accept, and the renderer must take.
            const reparsed = schemas.routerSync.parse(JSON.parse(JSON.stringify(message)));
            expect(reparsed.helpers.length).toBeLessThanOrEqual(limits.maxHelpersPerRouter);
            expect(allStrings(reparsed).filter((text) => !/^[A-Za-z0-9_.:-]*$/.test(text))).toEqual([]);
            for (const family of FAMILIES) planFamily(reparsed.helpers, family, catalog);
            const owner = before.find(
              (row): row is RouterRecord => !isTombstone(row) && row.routerId === message.router_id,
            );
            expect(owner, "a snapshot for a router that is not in the table").toBeDefined();
            // A change is revision + 1; a request that changes nothing re-sends the current snapshot unchanged.
            const after = (await dump(store)).find((row) => row.routerId === message.router_id);
            if (message.revision === owner!.revision) expect(after).toEqual(owner);
            else expect(message.revision).toBe(owner!.revision + 1);
            expect(after?.revision).toBe(message.revision);
            // A plain member only ever touches its own project's routers.
            if (!wasAdmin && !mayHave(req.claims, "cth:service"))
              expect(owner!.projectId).toBe(req.claims?.project_id);
            if (acceptedSnapshots.length < 3_000) acceptedSnapshots.push(reparsed);
          }
        }

        if (req.idempotencyKey === undefined) return;
        // Only an accepted notification leaves a record, completed with its validation hash.
        const records = await idempotencyRecords();
        const recorded = req.route.kind === "notify" && response.statusCode === 202;
        expect(records.map((r) => [r.status, typeof r.validation])).toEqual(
          recorded ? [["COMPLETED", "string"]] : [],
        );
        // A malformed key is refused (400) whoever sends it; only a usable key can be replayed.
        if (req.route.kind !== "notify" || !/^[A-Za-z0-9_.:-]{1,128}$/.test(req.idempotencyKey)) return;

        // The same request again, with the same key.
        const same = req.again === "same";
        const caller = req.again === "same" ? req.claims : req.again;
        const afterFirst = await dump(store);
        expect(afterFirst.filter(isTombstone)).toEqual([]);
        const writesAfterFirst = store.writes;
        const sentAfterFirst = queue.all().length;
        // The oracle: the second caller's request without the key, on a copy of the state it meets.
        const copy = await seedStore(afterFirst.filter((row): row is RouterRecord => !isTombstone(row)));
        const fresh = answerOf(
          await handlerOn(
            copy,
            new MemoryCommandQueue(),
            log,
            undefined,
          )(toEvent({ ...req, claims: caller, idempotencyKey: undefined }).event as never, lambdaContext()),
        );
        const second = answerOf(
          await handler(toEvent({ ...req, claims: caller }).event as never, lambdaContext()),
        );
        expect(errors).toEqual([]);
        expect(second.status, second.body).toBeLessThan(500);
        const first = answerOf(response);
        if (same && recorded) {
          // A replay: exactly the original answer, and nothing changes.
          expect(second).toEqual(first);
          expect(store.writes).toBe(writesAfterFirst);
          expect(await dump(store)).toEqual(afterFirst);
          expect(queue.all()).toHaveLength(sentAfterFirst);
          tally.replays++;
          return;
        }
        if (!same) tally.crossed++;
        // Someone refused (no identity, no power, not the owner) gets exactly the refusal, never the replay.
        if ([401, 403, 404].includes(fresh.status)) {
          if (!same && recorded) tally.crossedRefused++;
          expect(second).toEqual(fresh);
          expect(store.writes).toBe(writesAfterFirst);
          expect(queue.all()).toHaveLength(sentAfterFirst);
          return;
        }
        // Anyone else either holds the same authority (the stored answer) or ran afresh.
        if (recorded && second.status === first.status && second.body === first.body) return;
        expect(second).toEqual(fresh);
      }),
      fcParams("http requests", RUNS),
    );
    const summary = [...statuses]
      .sort(([a], [b]) => a - b)
      .map(([status, count]) => `${status}:${count}`)
      .join(" ");
    console.log(
      `[hostile] http status mix: ${summary}; replays ${tally.replays}, keys sent again by another caller ${tally.crossed} (${tally.crossedRefused} of them refused after an accepted original)`,
    );
    // The generator must reach every layer: accepted, each rejection class, the byte cap, real replays.
    for (const status of [202, 400, 401, 403, 404, 413, 422])
      expect(statuses.get(status) ?? 0, `status ${status}`).toBeGreaterThan(0);
    expect(statuses.get(202)!).toBeGreaterThan(RUNS / 50);
    expect(tally.replays, "successful replays").toBeGreaterThan(RUNS / 500);
    expect(tally.crossedRefused, "refused replays of another caller's key").toBeGreaterThan(0);
  }, 600_000);
});

const LIST_RUNS = Number(process.env.CTH_HOSTILE_LIST_RUNS ?? 2_000);
const LIST_PARAMETERS = ["project_id", "host", "in_sync", "limit", "cursor"] as const;

/** Query strings as a gateway hands them over: known and unknown names, hostile and plausible values. */
const queryArb = fc.dictionary(
  fc.oneof(
    fc.constantFrom(...LIST_PARAMETERS, "__proto__", "constructor", "page"),
    fc.string({ maxLength: 12 }),
  ),
  fc.oneof(
    hostileValueArb.map(String),
    fc.constantFrom(PROJECT_A, PROJECT_B, "node-a", "node-b", "false", "true", "1", "2", "100", "101", "0"),
    fc
      .base64String({ maxLength: 120 })
      .map((text) => text.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")),
  ),
  { maxKeys: 6 },
);
const listClaimsArb = fc.constantFrom(
  httpApiClaims(PROJECT_A),
  httpApiClaims(PROJECT_B),
  httpApiClaims(PROJECT_A, ["admin"]),
  httpApiClaims(PROJECT_B, ["service"]),
);

describe("hostile listing and read requests (GET /v1/routers, GET /v1/routers/{id})", () => {
  it(`never 5xx, never write, never show a member another project or a node name, never open a cursor it was not given (${LIST_RUNS} requests)`, async () => {
    const store = await seedStore();
    const queue = new MemoryCommandQueue();
    const errors: string[] = [];
    const log: Log = {
      info: () => undefined,
      warn: () => undefined,
      error: (m: string) => void errors.push(m),
    };
    const handler = handlerOn(store, queue, log, undefined);
    const before = await dump(store);
    const writes = store.writes;
    // A real cursor of one caller and filter set: every other request that carries it must be refused.
    const issuer = httpApiClaims(PROJECT_A, ["admin"]);
    const issued = JSON.parse(
      (
        await handler(
          withQuery(httpApiEvent({ method: "GET", path: "/v1/routers", claims: issuer }), { limit: "1" }),
          lambdaContext(),
        )
      ).body,
    ).next_cursor as string;
    expect(issued).toEqual(expect.any(String));
    const seen = new Set<string>();
    await fc.assert(
      fc.asyncProperty(
        listClaimsArb,
        queryArb,
        fc.boolean(),
        fc.oneof(fc.constant(undefined), fc.constantFrom(...ROUTERS), uuidArb, fc.string({ maxLength: 40 })),
        async (claims, query, withIssued, routerId) => {
          const q: Record<string, string> = { ...query, ...(withIssued ? { cursor: issued } : {}) };
          const path = routerId === undefined ? "/v1/routers" : `/v1/routers/${encodeURIComponent(routerId)}`;
          const event = withQuery(httpApiEvent({ method: "GET", path, claims }), q);
          const response = await handler(event, lambdaContext());
          expect(response.statusCode, response.body).toBeLessThan(500);
          seen.add(`${routerId === undefined ? "list" : "get"} ${response.statusCode}`);
          const body = JSON.parse(response.body) as Record<string, unknown>;
          const member = !String(claims.scope ?? "").includes("cth:");
          if (response.statusCode === 200 && routerId === undefined) {
            const page = body as { routers: { project_id: string; host?: string }[] };
            for (const router of page.routers) {
              if (member) {
                expect(router.project_id).toBe(claims.project_id);
                expect(JSON.stringify(router)).not.toMatch(/"host"/);
              }
            }
          }
          // The cursor was issued to another caller (its own subject): no one here may continue it.
          if (routerId === undefined && withIssued) expect(response.statusCode).not.toBe(200);
          if (response.statusCode === 200 && routerId !== undefined && member) {
            expect(body.project_id).toBe(claims.project_id);
          }
        },
      ),
      fcParams("hostile listing", LIST_RUNS),
    );
    expect(await dump(store)).toEqual(before);
    expect(store.writes).toBe(writes);
    expect(queue.all()).toEqual([]);
    // The property held over answers of every kind, not over one refusal repeated.
    for (const kind of ["list 200", "list 400", "list 422", "get 200", "get 404", "get 422"]) {
      expect(seen, kind).toContain(kind);
    }
    expect(errors).toEqual([]);
  }, 300_000);
});

describeAcceptedInKernel("HTTP notifications", acceptedSnapshots, catalog);
