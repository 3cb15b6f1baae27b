/**
 * One spec, two implementations: the in-memory fakes (test/support/memory.ts) and the real adapters on
 * dynalite and fauxqs through the AWS SDK. A fake that passes here acts like production where it matters.
 */
import { CreateTableCommand } from "@aws-sdk/client-dynamodb";
import { PutCommand } from "@aws-sdk/lib-dynamodb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeAwsClients } from "../../lib/aws/clients.ts";
import { queueUrlFromTemplate, SqsCommandQueue } from "../../lib/aws/command-queue.ts";
import { DynamoRoutersStore } from "../../lib/aws/routers-store.ts";
import { routersTableDefinition } from "../../lib/aws/tables.ts";
import { buildSnapshot } from "../../lib/domain/snapshot.ts";
import { BadRequestError, RevisionConflictError } from "../../lib/errors.ts";
import type {
  CommandQueue,
  RouterListQuery,
  RouterRecord,
  RoutersStore,
  Tombstone,
} from "../../lib/ports.ts";
import type { RouterSyncMessage } from "../../lib/schemas/index.ts";
import {
  createQueuePair,
  createTables,
  drainQueue,
  EMULATOR_CREDENTIALS,
  type Emulators,
  motoMissing,
  startEmulators,
  startMotoServer,
} from "../support/emulators.ts";
import {
  fixedClock,
  newId,
  qrouters,
  replica,
  routerRecord,
  snats,
  storedHelper,
} from "../support/factories.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../support/memory.ts";
import { testKey } from "../support/signing.ts";

interface QueueUnderTest {
  queue: CommandQueue;
  /** Messages the host's queue holds, in delivery order. */
  read(host: string): Promise<RouterSyncMessage[]>;
}

/** moto_server is the second, independent emulator: on CI it must be there, locally it may be missing. */
const noMoto = motoMissing();
if (noMoto && process.env.CI === "true") {
  describe("moto_server", () => {
    it("is available in CI", () => {
      throw new Error(`CI=true but ${noMoto}`);
    });
  });
}

let emu: Emulators;
let moto: Awaited<ReturnType<typeof startMotoServer>> | undefined;
beforeAll(async () => {
  emu = await startEmulators();
  if (!noMoto) moto = await startMotoServer();
});
afterAll(async () => {
  await moto?.stop();
  await emu?.stop();
});

const motoClients = () =>
  makeAwsClients({ region: "us-east-1", awsEndpoint: moto!.endpoint }, { credentials: EMULATOR_CREDENTIALS });

/** [name, factory, whether the backend has transactions (putAll)] */
const stores: [string, () => Promise<RoutersStore>, boolean][] = [
  ["MemoryRoutersStore", async () => new MemoryRoutersStore(), true],
  [
    "MemoryRoutersStore without transactions",
    async () => new MemoryRoutersStore({ transactions: false }),
    false,
  ],
  [
    "DynamoRoutersStore on dynalite",
    async () => {
      const config = emu.makeConfig();
      await emu.createTables(config);
      return new DynamoRoutersStore(emu.clients(config).dynamo, config.routersTable, { transactions: false });
    },
    false,
  ],
  ...(noMoto
    ? []
    : ([
        [
          "DynamoRoutersStore on moto_server",
          async () => {
            const config = emu.makeConfig();
            const clients = motoClients();
            await createTables(clients.dynamoRaw, config);
            return new DynamoRoutersStore(clients.dynamo, config.routersTable, { transactions: true });
          },
          true,
        ],
      ] as [string, () => Promise<RoutersStore>, boolean][])),
];

describe.each(stores)("RoutersStore contract: %s", (_name, make, transactional) => {
  let store: RoutersStore;
  beforeAll(async () => {
    store = await make();
  });

  it("returns undefined for an unknown router", async () => {
    expect(await store.get(newId())).toBeUndefined();
  });

  it("reads back exactly what was put", async () => {
    const record = routerRecord({
      helpers: [storedHelper(), storedHelper({ protocol: "udp", helper: "tftp" })],
    });
    await store.put(record, undefined);
    expect(await store.get(record.routerId)).toEqual(record);
  });

  it("refuses to create a router that already exists", async () => {
    const record = routerRecord();
    await store.put(record, undefined);
    await expect(store.put({ ...record, bindings: qrouters("other") }, undefined)).rejects.toBeInstanceOf(
      RevisionConflictError,
    );
    expect((await store.get(record.routerId))?.bindings).toEqual(record.bindings);
  });

  it("writes only when the expected revision still holds", async () => {
    const record = routerRecord();
    await store.put(record, undefined);
    await store.put({ ...record, revision: 1, helpers: [storedHelper()] }, 0);
    await expect(store.put({ ...record, revision: 1 }, 0)).rejects.toBeInstanceOf(RevisionConflictError);
    const stored = await store.get(record.routerId);
    expect(stored?.revision).toBe(1);
    expect(stored?.helpers).toHaveLength(1);
  });

  it("a change of desired state never puts back the replica status its writer read", async () => {
    const record = routerRecord({ bindings: qrouters("node-a") });
    await store.put(record, undefined);
    await store.put({ ...record, revision: 1, helpers: [storedHelper()] }, 0);
    const read = await store.get(record.routerId);
    // An agent's report lands between this writer's read and its write.
    const status = replica(1, { at: "2026-12-01T10:00:00.000Z" });
    expect(await store.recordReplica({ routerId: record.routerId, host: "node-a", status })).toBe(true);
    await store.put({ ...read!, revision: 2, helpers: [...read!.helpers, storedHelper()] }, 1);
    const stored = await store.get(record.routerId);
    expect(stored?.revision).toBe(2);
    expect(stored?.helpers).toHaveLength(2);
    expect(stored?.replicas).toEqual({ "node-a": status });
  });

  it(`${transactional ? "has" : "has no"} transactions`, () => {
    expect(store.putAll !== undefined).toBe(transactional);
  });

  // Backends without transactions get compensation in the domain instead (core-faults, core-services).
  if (transactional)
    it("commits several routers in one transaction, or none when any condition fails", async () => {
      if (!store.putAll) throw new Error("no putAll");
      const a = routerRecord({ bindings: qrouters("node-a") });
      const b = routerRecord({ bindings: qrouters("node-b") });
      await store.put(a, undefined);
      await store.put(b, undefined);
      const fresh = routerRecord();
      await store.putAll([
        { next: { ...a, revision: 1, helpers: [storedHelper()] }, expectedRevision: 0 },
        { next: { ...b, revision: 1, helpers: [storedHelper()] }, expectedRevision: 0 },
        { next: fresh, expectedRevision: undefined },
      ]);
      expect((await store.get(a.routerId))?.revision).toBe(1);
      expect((await store.get(b.routerId))?.revision).toBe(1);
      expect(await store.get(fresh.routerId)).toBeDefined();
      // b's expected revision is stale: a's write must not land either.
      await expect(
        store.putAll([
          { next: { ...a, revision: 2, helpers: [] }, expectedRevision: 1 },
          { next: { ...b, revision: 2, helpers: [] }, expectedRevision: 0 },
        ]),
      ).rejects.toBeInstanceOf(RevisionConflictError);
      expect(await store.get(a.routerId)).toMatchObject({ revision: 1, helpers: [expect.anything()] });
      expect(await store.get(b.routerId)).toMatchObject({ revision: 1, helpers: [expect.anything()] });
      // A create of a router that exists fails the whole commit too.
      await expect(
        store.putAll([
          { next: { ...a, revision: 2, helpers: [] }, expectedRevision: 1 },
          { next: fresh, expectedRevision: undefined },
        ]),
      ).rejects.toBeInstanceOf(RevisionConflictError);
      expect((await store.get(a.routerId))?.revision).toBe(1);
    });

  it("reads several routers at once and leaves unknown ids out", async () => {
    const a = routerRecord();
    const b = routerRecord();
    await store.put(a, undefined);
    await store.put(b, undefined);
    const unknown = newId();
    const found = await store.getMany([a.routerId, b.routerId, unknown]);
    expect([...found.keys()].sort()).toEqual([a.routerId, b.routerId].sort());
  });

  const deletedAt = "2026-12-01T12:00:00.000Z";

  it("deletes only at the expected revision", async () => {
    const record = routerRecord({ revision: 3 });
    await store.put(record, undefined);
    await expect(store.delete(record.routerId, 2, deletedAt, {})).rejects.toBeInstanceOf(
      RevisionConflictError,
    );
    expect(await store.get(record.routerId)).toBeDefined();
    await store.delete(record.routerId, 3, deletedAt, {});
    expect(await store.get(record.routerId)).toBeUndefined();
  });

  it("a deleted router reads as absent but keeps its last revision and the hosts still draining", async () => {
    const record = routerRecord({ revision: 3, bindings: qrouters("node-tomb") });
    await store.put(record, undefined);
    expect(await store.tombstone(record.routerId)).toBeUndefined();
    await store.delete(record.routerId, 3, deletedAt, { "node-tomb": 4 });
    expect(await store.get(record.routerId)).toBeUndefined();
    expect((await store.getMany([record.routerId])).size).toBe(0);
    expect((await store.listByHost("node-tomb")).map((r) => r.routerId)).not.toContain(record.routerId);
    // The tombstone keeps the revision of the empty snapshot that removed the router's rules.
    const tombstone = { deleted: true, routerId: record.routerId, revision: 4, draining: { "node-tomb": 4 } };
    expect(await store.tombstone(record.routerId)).toEqual(tombstone);
    expect(await store.tombstone(newId())).toBeUndefined();
    // The reconciler sees it while a host has not confirmed the empty snapshot.
    const all: (RouterRecord | Tombstone)[] = [];
    for await (const row of store.listAll()) all.push(row);
    expect(all.filter((row) => row.routerId === record.routerId)).toEqual([tombstone]);
    // Nothing but a create and a drain confirmation touches it: no update, no second delete, no replica.
    await expect(store.put({ ...record, revision: 5 }, 4)).rejects.toBeInstanceOf(RevisionConflictError);
    await expect(store.delete(record.routerId, 4, deletedAt, {})).rejects.toBeInstanceOf(
      RevisionConflictError,
    );
    expect(
      await store.recordReplica({
        routerId: record.routerId,
        host: "node-tomb",
        status: replica(4),
      }),
    ).toBe(false);
    expect(await store.get(record.routerId)).toBeUndefined();
  });

  it("a draining host's confirmation removes only its own entry, and only at the revision asked for", async () => {
    const record = routerRecord({
      revision: 3,
      bindings: qrouters("node-c"),
      draining: { "node-a": 2, "node-b": 3 },
    });
    await store.put(record, undefined);
    expect(await store.confirmDrained(record.routerId, "node-b", 2)).toBe(false);
    expect(await store.confirmDrained(record.routerId, "node-x", 9)).toBe(false);
    expect(await store.confirmDrained(record.routerId, "node-b", 3)).toBe(true);
    expect((await store.get(record.routerId))?.draining).toEqual({ "node-a": 2 });
    await store.delete(record.routerId, 3, deletedAt, { "node-a": 2, "node-c": 4 });
    expect(await store.confirmDrained(record.routerId, "node-c", 4)).toBe(true);
    expect(await store.confirmDrained(record.routerId, "node-a", 4)).toBe(true);
    expect((await store.tombstone(record.routerId))?.draining).toEqual({});
    // A tombstone with nothing left to drain is no longer the reconciler's business.
    const all: string[] = [];
    for await (const row of store.listAll()) all.push(row.routerId);
    expect(all).not.toContain(record.routerId);
  });

  it("a router created again over its tombstone continues from the tombstone's revision, never below", async () => {
    const record = routerRecord({ revision: 6 });
    await store.put(record, undefined);
    await store.delete(record.routerId, 6, deletedAt, {});
    await expect(store.put({ ...record, revision: 0, helpers: [] }, undefined)).rejects.toBeInstanceOf(
      RevisionConflictError,
    );
    await store.put({ ...record, revision: 7, helpers: [], replicas: {} }, undefined);
    expect(await store.get(record.routerId)).toMatchObject({ revision: 7, helpers: [] });
    expect(await store.tombstone(record.routerId)).toBeUndefined();
    // Live again: an ordinary create of the same id is refused as before.
    await expect(store.put({ ...record, revision: 7 }, undefined)).rejects.toBeInstanceOf(
      RevisionConflictError,
    );
  });

  it("records a host's status monotonically without touching desired state", async () => {
    const record = routerRecord({ revision: 5, helpers: [storedHelper()] });
    await store.put(record, undefined);
    const report = { routerId: record.routerId, host: record.bindings[0]!.host };
    expect(await store.recordReplica({ ...report, status: replica(4, { content: "behind" }) })).toBe(true);
    expect(await store.recordReplica({ ...report, status: replica(3, { content: "behind" }) })).toBe(false);
    const stored = await store.get(record.routerId);
    expect(stored?.replicas[record.bindings[0]!.host]).toMatchObject({ revision: 4, content: "behind" });
    expect(stored).toMatchObject({ revision: 5, helpers: record.helpers });
  });

  it("refreshes a host's status when the same revision is reported again", async () => {
    const record = routerRecord({ revision: 2 });
    await store.put(record, undefined);
    const report = { routerId: record.routerId, host: record.bindings[0]!.host };
    expect(
      await store.recordReplica({ ...report, status: replica(2, { at: "2026-11-24T06:00:00.000Z" }) }),
    ).toBe(true);
    const mismatch = replica(2, {
      at: "2026-11-24T07:00:00.000Z",
      content: "mismatch",
      errors: [{ code: "content_mismatch", message: "differs" }],
    });
    expect(await store.recordReplica({ ...report, status: mismatch })).toBe(true);
    expect((await store.get(record.routerId))?.replicas[record.bindings[0]!.host]).toEqual(mismatch);
  });

  it("ignores reports for unknown routers and touches nothing but the reporting host's status", async () => {
    const record = routerRecord({ revision: 2, helpers: [storedHelper()] });
    await store.put(record, undefined);
    const status = replica(1, { content: "behind" });
    expect(await store.recordReplica({ routerId: newId(), host: "node-a", status })).toBe(false);
    expect(await store.recordReplica({ routerId: record.routerId, host: "node-z", status })).toBe(true);
    const stored = await store.get(record.routerId);
    expect(stored).toEqual({ ...record, replicas: { "node-z": status } });
  });

  it("keeps the apply errors an agent reported", async () => {
    const helper = storedHelper();
    const record = routerRecord({ revision: 1, helpers: [helper] });
    await store.put(record, undefined);
    const errors = [
      { helper_id: helper.id, code: "helper_unavailable", message: "kernel lacks nf_conntrack_ftp" },
    ];
    const status = replica(1, { errors, content: "partial" });
    await store.recordReplica({ routerId: record.routerId, host: record.bindings[0]!.host, status });
    expect((await store.get(record.routerId))?.replicas[record.bindings[0]!.host]?.errors).toEqual(errors);
  });

  it("lists the routers of one host", async () => {
    const host = `host-${newId().slice(0, 8)}`;
    const mine = [routerRecord({ bindings: qrouters(host) }), routerRecord({ bindings: qrouters(host) })];
    for (const record of [...mine, routerRecord({ bindings: qrouters("someone-else") })])
      await store.put(record, undefined);
    const listed = await store.listByHost(host);
    expect(listed.map((r) => r.routerId).sort()).toEqual(mine.map((r) => r.routerId).sort());
  });

  it("lists a router under every host it is bound to, whichever binding slot holds the host", async () => {
    const hosts = Array.from({ length: 8 }, (_, slot) => `slot${slot}-${newId().slice(0, 8)}`);
    const record = routerRecord({
      bindings: [...qrouters(...hosts.slice(0, 4)), ...snats(...hosts.slice(4))],
    });
    await store.put(record, undefined);
    for (const host of hosts) {
      expect((await store.listByHost(host)).map((r) => r.routerId)).toEqual([record.routerId]);
    }
    expect((await store.get(record.routerId))?.bindings).toEqual(record.bindings);
  });

  it("a drain confirmed between a writer's read and its write stays confirmed", async () => {
    const [kept, gone, next] = ["race-kept", `race-gone-${newId().slice(0, 8)}`, "race-next"];
    const record = routerRecord({ bindings: qrouters(kept, next), revision: 4, draining: { [gone]: 4 } });
    await store.put(record, undefined);
    const read = (await store.get(record.routerId))!;
    expect(await store.confirmDrained(record.routerId, gone, 4)).toBe(true);
    // A helper change planned on the read: it names no draining change.
    await store.put({ ...read, helpers: [storedHelper()], revision: 5 }, 4);
    expect((await store.get(record.routerId))?.draining).toEqual({});
    // A binding change planned on a read from before the confirmation: only its own keys.
    await store.put(
      { ...read, bindings: qrouters(kept), revision: 6, draining: { [gone]: 4, [next]: 6 } },
      5,
      {
        add: { [next]: 6 },
        remove: [],
      },
    );
    expect((await store.get(record.routerId))?.draining).toEqual({ [next]: 6 });
  });

  it("a router at the maximum of 8 bindings takes changes, and one can grow to 8", async () => {
    const hosts = Array.from({ length: 8 }, (_, slot) => `max${slot}-${newId().slice(0, 8)}`);
    const full = routerRecord({ bindings: qrouters(...hosts), revision: 1 });
    await store.put(full, undefined);
    await store.put({ ...full, helpers: [storedHelper()], revision: 2 }, 1);
    expect((await store.get(full.routerId))?.revision).toBe(2);
    const seven = routerRecord({ bindings: qrouters(...hosts.slice(0, 7)), revision: 1 });
    await store.put(seven, undefined);
    await store.put({ ...seven, bindings: qrouters(...hosts), revision: 2 }, 1);
    expect((await store.get(seven.routerId))?.bindings).toEqual(qrouters(...hosts));
    expect((await store.listByHost(hosts[7]!)).map((r) => r.routerId).sort()).toEqual(
      [full.routerId, seven.routerId].sort(),
    );
  });

  it("a host unbound by a change is listed no more, and the status it reported is dropped", async () => {
    const [kept, left] = [`kept-${newId().slice(0, 8)}`, `left-${newId().slice(0, 8)}`];
    const record = routerRecord({ bindings: qrouters(kept, left), revision: 1 });
    await store.put(record, undefined);
    await store.recordReplica({ routerId: record.routerId, host: left, status: replica(1) });
    await store.recordReplica({ routerId: record.routerId, host: kept, status: replica(1) });
    await store.put({ ...record, bindings: qrouters(kept), revision: 2, draining: { [left]: 2 } }, 1, {
      add: { [left]: 2 },
      remove: [],
    });
    expect(await store.listByHost(left)).toEqual([]);
    expect((await store.listByHost(kept)).map((r) => r.routerId)).toEqual([record.routerId]);
    const stored = await store.get(record.routerId);
    expect(Object.keys(stored?.replicas ?? {})).toEqual([kept]);
    expect(stored?.draining).toEqual({ [left]: 2 });
  });

  it("lists every router", async () => {
    const records = Array.from({ length: 25 }, () => routerRecord());
    for (const record of records) await store.put(record, undefined);
    const seen = new Set<string>();
    for await (const entry of store.listAll()) seen.add(entry.routerId);
    for (const record of records) expect(seen.has(record.routerId)).toBe(true);
  });
});

/** Every page of a listing, to its end: the ids in page order, and the pages' sizes. */
async function listAllPages(store: RoutersStore, query: Omit<RouterListQuery, "after">) {
  const ids: string[] = [];
  const sizes: number[] = [];
  let after: string | undefined;
  for (let pages = 0; pages < 500; pages++) {
    const page = await store.listPage({ ...query, after });
    ids.push(...page.records.map((record) => record.routerId));
    sizes.push(page.records.length);
    if (page.next === undefined) return { ids, sizes };
    after = page.next;
  }
  throw new Error("the listing never ended");
}

/** The ids in the out-of-sync index (the raw index, false positives included). */
async function flaggedIds(store: RoutersStore): Promise<Set<string>> {
  const ids = new Set<string>();
  for await (const entry of store.listOutOfSync()) ids.add(entry.routerId);
  return ids;
}

const uniqueProject = () => `p-${newId().slice(0, 8)}`;
const uniqueHost = (name: string) => `${name}-${newId().slice(0, 8)}`;

describe.each(stores)("RoutersStore listing and out-of-sync index: %s", (_name, make) => {
  let store: RoutersStore;
  beforeAll(async () => {
    store = await make();
  });

  /** A router at revision 1 whose every bound host reported it in sync, and out of the index. */
  async function inSyncRouter(overrides: Partial<RouterRecord> = {}): Promise<RouterRecord> {
    const record = routerRecord({ revision: 1, helpers: [storedHelper()], ...overrides });
    await store.put(record, undefined);
    for (const { host } of record.bindings) {
      const basis = (await store.get(record.routerId))!;
      expect(await store.recordReplica({ routerId: record.routerId, host, status: replica(1), basis })).toBe(
        true,
      );
    }
    return (await store.get(record.routerId))!;
  }

  it("pages through one project's routers to the end, in router-id order, none twice", async () => {
    const project = uniqueProject();
    const mine = Array.from({ length: 7 }, () => routerRecord({ projectId: project }));
    for (const record of [...mine, routerRecord({ projectId: uniqueProject() })]) {
      await store.put(record, undefined);
    }
    const { ids, sizes } = await listAllPages(store, { projectId: project, outOfSyncOnly: false, limit: 3 });
    expect(ids).toEqual(mine.map((record) => record.routerId).sort());
    expect(Math.max(...sizes)).toBeLessThanOrEqual(3);
  });

  it("lists a host's routers whichever binding slot holds it, each once, and no other host's", async () => {
    const host = uniqueHost("list");
    const first = routerRecord({ bindings: qrouters(host) });
    const third = routerRecord({ bindings: snats(uniqueHost("x"), uniqueHost("y"), host) });
    const other = routerRecord({ bindings: qrouters(uniqueHost("other")) });
    for (const record of [first, third, other]) await store.put(record, undefined);
    const { ids } = await listAllPages(store, { host, outOfSyncOnly: false, limit: 1 });
    expect(ids.sort()).toEqual([first.routerId, third.routerId].sort());
  });

  it("combines filters: a project's routers on one host", async () => {
    const project = uniqueProject();
    const host = uniqueHost("both");
    const wanted = routerRecord({ projectId: project, bindings: qrouters(uniqueHost("z"), host) });
    const otherHost = routerRecord({ projectId: project });
    const otherProject = routerRecord({ bindings: qrouters(host) });
    for (const record of [wanted, otherHost, otherProject]) await store.put(record, undefined);
    const { ids } = await listAllPages(store, { projectId: project, host, outOfSyncOnly: false, limit: 10 });
    expect(ids).toEqual([wanted.routerId]);
  });

  it("lists only routers not in sync, by project and for all projects, through the index", async () => {
    const project = uniqueProject();
    const behind = routerRecord({ projectId: project, revision: 1, helpers: [storedHelper()] });
    await store.put(behind, undefined);
    const synced = await inSyncRouter({ projectId: project });
    const mismatched = await inSyncRouter({ projectId: project });
    const basis = (await store.get(mismatched.routerId))!;
    await store.recordReplica({
      routerId: mismatched.routerId,
      host: "node-a",
      status: replica(1, { content: "mismatch" }),
      basis,
    });
    const byProject = await listAllPages(store, { projectId: project, outOfSyncOnly: true, limit: 1 });
    expect(byProject.ids).toEqual([behind.routerId, mismatched.routerId].sort());
    const all = new Set((await listAllPages(store, { outOfSyncOnly: true, limit: 50 })).ids);
    expect(all.has(behind.routerId) && all.has(mismatched.routerId)).toBe(true);
    expect(all.has(synced.routerId)).toBe(false);
  });

  it("lists live routers only, never a tombstone", async () => {
    const project = uniqueProject();
    const kept = routerRecord({ projectId: project });
    const gone = routerRecord({ projectId: project });
    for (const record of [kept, gone]) await store.put(record, undefined);
    await store.delete(gone.routerId, 0, "2026-12-01T10:00:00.000Z", { "node-a": 1 });
    expect((await listAllPages(store, { projectId: project, outOfSyncOnly: false, limit: 5 })).ids).toEqual([
      kept.routerId,
    ]);
    const everything = new Set((await listAllPages(store, { outOfSyncOnly: false, limit: 100 })).ids);
    expect(everything.has(kept.routerId)).toBe(true);
    expect(everything.has(gone.routerId)).toBe(false);
  });

  it("rejects a malformed position as a bad request", async () => {
    const junk = [
      "not a cursor!",
      Buffer.from("[1,2]").toString("base64url"),
      Buffer.from(JSON.stringify({ s: 99, r: 5, k: { router_id: 7 } })).toString("base64url"),
    ];
    for (const after of junk) {
      for (const query of [
        { outOfSyncOnly: false, limit: 5, after },
        { projectId: "p", outOfSyncOnly: true, limit: 5, after },
        { host: "node-a", outOfSyncOnly: false, limit: 5, after },
      ]) {
        const refused = await store.listPage(query).catch((error: unknown) => error);
        expect(refused, after).toBeInstanceOf(BadRequestError);
        expect((refused as Error).message).toBe("invalid cursor");
      }
    }
  });

  it("every desired write flags the router; only the report that makes it in sync un-flags it", async () => {
    const record = routerRecord({
      bindings: qrouters("node-a", "node-b"),
      revision: 1,
      helpers: [storedHelper()],
    });
    await store.put(record, undefined);
    expect((await flaggedIds(store)).has(record.routerId)).toBe(true);
    const report = async (host: string, status = replica(1)) =>
      store.recordReplica({
        routerId: record.routerId,
        host,
        status,
        basis: (await store.get(record.routerId))!,
      });
    // One of two hosts in sync: still out of sync.
    await report("node-a");
    expect((await flaggedIds(store)).has(record.routerId)).toBe(true);
    await report("node-b");
    expect((await flaggedIds(store)).has(record.routerId)).toBe(false);
    // A drift check finds other content at the same revision: flagged again.
    await report("node-b", replica(1, { content: "mismatch" }));
    expect((await flaggedIds(store)).has(record.routerId)).toBe(true);
    await report("node-b");
    expect((await flaggedIds(store)).has(record.routerId)).toBe(false);
    // A new revision is never confirmed yet.
    await store.put({ ...(await store.get(record.routerId))!, revision: 2 }, 1);
    expect((await flaggedIds(store)).has(record.routerId)).toBe(true);
  });

  it("a report judged on a stale read never un-flags: another host's report or a desired write won the race", async () => {
    const record = routerRecord({
      bindings: qrouters("node-a", "node-b"),
      revision: 1,
      helpers: [storedHelper()],
    });
    await store.put(record, undefined);
    await store.recordReplica({
      routerId: record.routerId,
      host: "node-a",
      status: replica(1),
      basis: record,
    });
    const stale = (await store.get(record.routerId))!;
    // node-a's kernel drifts and it reports so, between node-b's read and node-b's write.
    await store.recordReplica({
      routerId: record.routerId,
      host: "node-a",
      status: replica(1, { content: "mismatch" }),
      basis: stale,
    });
    expect(
      await store.recordReplica({
        routerId: record.routerId,
        host: "node-b",
        status: replica(1),
        basis: stale,
      }),
    ).toBe(true);
    expect((await store.get(record.routerId))?.replicas["node-b"]).toEqual(replica(1));
    expect((await flaggedIds(store)).has(record.routerId)).toBe(true);

    // The same with a desired write in between: node-a and node-b match revision 1, but 2 is desired now.
    await store.recordReplica({
      routerId: record.routerId,
      host: "node-a",
      status: replica(1),
      basis: stale,
    });
    const read = (await store.get(record.routerId))!;
    await store.put({ ...read, revision: 2, helpers: [] }, 1);
    await store.recordReplica({ routerId: record.routerId, host: "node-b", status: replica(1), basis: read });
    expect((await flaggedIds(store)).has(record.routerId)).toBe(true);
  });

  it("a tombstone stays flagged until its last draining host confirms", async () => {
    const record = routerRecord({ bindings: qrouters("node-a", "node-b"), revision: 1 });
    await store.put(record, undefined);
    await store.delete(record.routerId, 1, "2026-12-01T10:00:00.000Z", { "node-a": 2, "node-b": 2 });
    expect((await flaggedIds(store)).has(record.routerId)).toBe(true);
    let basis = (await store.tombstone(record.routerId))!;
    expect(await store.confirmDrained(record.routerId, "node-a", 2, basis)).toBe(true);
    expect((await flaggedIds(store)).has(record.routerId)).toBe(true);
    basis = (await store.tombstone(record.routerId))!;
    expect(await store.confirmDrained(record.routerId, "node-b", 2, basis)).toBe(true);
    expect((await flaggedIds(store)).has(record.routerId)).toBe(false);
  });

  it("clearOutOfSync heals a settled entry the index still holds, and refuses one that moved since read", async () => {
    const record = routerRecord({ revision: 1, helpers: [storedHelper()] });
    await store.put(record, undefined);
    // A status written without a basis leaves the flag as it is: a false positive.
    await store.recordReplica({ routerId: record.routerId, host: "node-a", status: replica(1) });
    const read = (await store.get(record.routerId))!;
    expect((await flaggedIds(store)).has(record.routerId)).toBe(true);
    await store.put({ ...read, revision: 2 }, 1);
    expect(await store.clearOutOfSync(read)).toBe(false);
    expect((await flaggedIds(store)).has(record.routerId)).toBe(true);
    await store.recordReplica({ routerId: record.routerId, host: "node-a", status: replica(2) });
    expect(await store.clearOutOfSync((await store.get(record.routerId))!)).toBe(true);
    expect((await flaggedIds(store)).has(record.routerId)).toBe(false);
    // Never for an entry that is not settled.
    const behind = routerRecord({ revision: 1, helpers: [storedHelper()] });
    await store.put(behind, undefined);
    expect(await store.clearOutOfSync(behind)).toBe(false);
  });
});

describe("DynamoRoutersStore: items written before bindings", () => {
  it("a table that has only the first index (an upgrade in progress) still lists the routers it can", async () => {
    const config = emu.makeConfig();
    const definition = routersTableDefinition(config.routersTable);
    await emu.clients(config).dynamoRaw.send(
      new CreateTableCommand({
        ...definition,
        AttributeDefinitions: definition.AttributeDefinitions!.slice(0, 2),
        GlobalSecondaryIndexes: definition.GlobalSecondaryIndexes!.slice(0, 1),
      }),
    );
    const store = new DynamoRoutersStore(emu.clients(config).dynamo, config.routersTable, {
      transactions: false,
    });
    const host = `first-${newId().slice(0, 8)}`;
    const second = `second-${newId().slice(0, 8)}`;
    const record = routerRecord({ bindings: qrouters(host, second) });
    await store.put(record, undefined);
    expect((await store.listByHost(host)).map((r) => r.routerId)).toEqual([record.routerId]);
    // Not indexed until by-host-1 exists (DynamoDB then backfills it); meanwhile not an error.
    expect(await store.listByHost(second)).toEqual([]);
  });

  it("an item naming one `host` reads as one qrouter binding and is listed under that host", async () => {
    const config = emu.makeConfig();
    await emu.createTables(config);
    const { dynamo } = emu.clients(config);
    const store = new DynamoRoutersStore(dynamo, config.routersTable, { transactions: false });
    const routerId = newId();
    const host = `legacy-${newId().slice(0, 8)}`;
    await dynamo.send(
      new PutCommand({
        TableName: config.routersTable,
        Item: {
          router_id: routerId,
          project_id: "p",
          host,
          revision: 3,
          helpers: [],
          replicas: {},
          draining: {},
          updated_at: "2026-01-01T00:00:00.000Z",
        },
      }),
    );
    const record = await store.get(routerId);
    expect(record?.bindings).toEqual(qrouters(host));
    expect((await store.listByHost(host)).map((r) => r.routerId)).toEqual([routerId]);
    // Its next change writes bindings; the router stays listed under its host.
    await store.put({ ...record!, bindings: qrouters(host, "other"), revision: 4 }, 3);
    expect((await store.listByHost(host)).map((r) => r.routerId)).toEqual([routerId]);
    expect((await store.listByHost("other")).map((r) => r.routerId)).toEqual([routerId]);
  });
});

const queues: [string, () => Promise<QueueUnderTest>][] = [
  [
    "MemoryCommandQueue",
    async () => {
      const queue = new MemoryCommandQueue();
      return { queue, read: async (host) => queue.messages(host) };
    },
  ],
  [
    "SqsCommandQueue on fauxqs",
    async () => {
      const config = emu.makeConfig();
      const prefix = `q${newId().slice(0, 6)}-`;
      const template = config.nodeQueueUrlTemplate.replace("cth-{node}", `${prefix}{node}`);
      const queue = new SqsCommandQueue(
        emu.clients(config).sqs,
        (host) => queueUrlFromTemplate(template, host),
        testKey().signer,
        {
          maxAttempts: 3,
          baseDelayMs: 1,
        },
      );
      const created = new Map<string, string>();
      const ensure = async (host: string) => {
        if (!created.has(host)) created.set(host, (await emu.createNodeQueue(host, { prefix })).url);
        return created.get(host)!;
      };
      await ensure("node-a");
      await ensure("node-b");
      return {
        queue,
        read: async (host) =>
          (await emu.drain(await ensure(host))).map((m) => JSON.parse(m.Body ?? "null") as RouterSyncMessage),
      };
    },
  ],
  ...(noMoto
    ? []
    : ([
        [
          "SqsCommandQueue on moto_server",
          async () => {
            const { sqs } = motoClients();
            const prefix = `q${newId().slice(0, 6)}-`;
            const urls = new Map<string, string>();
            for (const host of ["node-a", "node-b"]) {
              urls.set(host, (await createQueuePair(sqs, `${prefix}${host}`, true, 5)).url);
            }
            const queue = new SqsCommandQueue(sqs, (host) => urls.get(host)!, testKey().signer, {
              maxAttempts: 3,
              baseDelayMs: 1,
            });
            return {
              queue,
              read: async (host) =>
                (await drainQueue(sqs, urls.get(host)!)).map(
                  (m) => JSON.parse(m.Body ?? "null") as RouterSyncMessage,
                ),
            };
          },
        ],
      ] as [string, () => Promise<QueueUnderTest>][])),
];

describe.each(queues)("CommandQueue contract: %s", (_name, make) => {
  const clock = fixedClock();
  const snapshot = (revision: number, routerId = newId()) => {
    const record = routerRecord({ routerId, revision, helpers: [storedHelper()] });
    return buildSnapshot(record, record.bindings[0]!, "corr-1", clock);
  };

  it("delivers more than one batch of snapshots in order", async () => {
    const { queue, read } = await make();
    const routerId = newId();
    const sent = Array.from({ length: 23 }, (_, i) => snapshot(i + 1, routerId));
    await queue.send("node-a", sent);
    expect(await read("node-a")).toEqual(sent);
  });

  it("drops a second send of the same router revision", async () => {
    const { queue, read } = await make();
    const routerId = newId();
    await queue.send("node-a", [snapshot(1, routerId)]);
    await queue.send("node-a", [snapshot(1, routerId), snapshot(2, routerId)]);
    expect((await read("node-a")).map((m) => m.revision)).toEqual([1, 2]);
  });

  it("keeps each host's snapshots on that host's queue", async () => {
    const { queue, read } = await make();
    const a = snapshot(1);
    const b = snapshot(1);
    await queue.send("node-a", [a]);
    await queue.send("node-b", [b]);
    expect(await read("node-a")).toEqual([a]);
    expect(await read("node-b")).toEqual([b]);
  });
});
