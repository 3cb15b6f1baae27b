/** The use cases on the in-memory fakes (whose contract tests also run against DynamoDB and SQS). */
import { describe, expect, it } from "vitest";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import {
  COMMITTED_BUT_NOT_QUEUED,
  type DomainDeps,
  deleteRouter,
  readRouterState,
  submitNotification,
  upsertRouter,
} from "../../lib/domain/services.ts";
import { buildSnapshot } from "../../lib/domain/snapshot.ts";
import {
  ConflictError,
  ForbiddenError,
  NotFoundError,
  RevisionConflictError,
  ServiceUnavailableError,
} from "../../lib/errors.ts";
import type { RouterRecord } from "../../lib/ports.ts";
import {
  admin,
  fixedClock,
  helperChange,
  member,
  newId,
  notification,
  PROJECT_A,
  PROJECT_B,
  qrouters,
  replica,
  routerRecord,
  service,
  storedHelper,
} from "../support/factories.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../support/memory.ts";

function setup(limits = DEFAULT_LIMITS) {
  const store = new MemoryRoutersStore();
  const queue = new MemoryCommandQueue();
  const deps: DomainDeps = {
    store,
    queue,
    clock: fixedClock(),
    limits,
    retry: { maxAttempts: 50, baseDelayMs: 0, maxDelayMs: 1 },
  };
  const seed = async (overrides: Partial<RouterRecord> = {}) => {
    const record = routerRecord(overrides);
    await store.put(record, undefined);
    return record;
  };
  return { store, queue, deps, seed };
}

describe("submitNotification", () => {
  it("queues a snapshot even when nothing changed, so a retry re-sends", async () => {
    const { deps, queue, seed } = setup();
    const helper = storedHelper();
    const router = await seed({ revision: 1, helpers: [helper] });
    const result = await submitNotification(
      deps,
      member(),
      notification("created", [{ ...helper, router_id: router.routerId }]),
      "c1",
    );
    expect(result.routers).toEqual([{ router_id: router.routerId, revision: 1 }]);
    expect(queue.messages("node-a").map((m) => [m.revision, m.helpers])).toEqual([[1, [helper]]]);
  });

  it("validates every router before writing any", async () => {
    const { deps, store, queue, seed } = setup();
    const ok = await seed();
    const writes = store.writes;
    await expect(
      submitNotification(
        deps,
        member(),
        notification("created", [helperChange(ok.routerId), helperChange(newId())]),
        "c",
      ),
    ).rejects.toBeInstanceOf(NotFoundError);
    expect(store.writes).toBe(writes);
    expect(queue.all()).toEqual([]);
  });

  it("leaves the state committed and says a retry is safe when the queue fails", async () => {
    const { deps, store, queue, seed } = setup();
    const router = await seed();
    queue.failingHosts.add("node-a");
    const attempt = submitNotification(
      deps,
      member(),
      notification("created", [helperChange(router.routerId)]),
      "c",
    );
    await expect(attempt).rejects.toThrow(COMMITTED_BUT_NOT_QUEUED);
    await expect(attempt).rejects.toBeInstanceOf(ServiceUnavailableError);
    expect((await store.get(router.routerId))?.revision).toBe(1);
  });

  it("lets a member change only its own project's routers", async () => {
    const { deps, seed } = setup();
    const theirs = await seed({ projectId: PROJECT_B });
    await expect(
      submitNotification(
        deps,
        member(PROJECT_A),
        notification("created", [helperChange(theirs.routerId)]),
        "c",
      ),
    ).rejects.toBeInstanceOf(NotFoundError);
  });

  it("lets an admin change any router", async () => {
    const { deps, seed } = setup();
    const theirs = await seed({ projectId: PROJECT_B });
    const result = await submitNotification(
      deps,
      admin(),
      notification("created", [helperChange(theirs.routerId)]),
      "c",
    );
    expect(result.routers[0]?.revision).toBe(1);
  });

  it("refuses a service helper without project_id on another project's router", async () => {
    const { deps, seed } = setup();
    const theirs = await seed({ projectId: PROJECT_B });
    await expect(
      submitNotification(
        deps,
        service(PROJECT_A),
        notification("created", [helperChange(theirs.routerId)]),
        "c",
      ),
    ).rejects.toBeInstanceOf(ForbiddenError);
  });

  it("refuses a member helper naming a foreign project on its own router", async () => {
    const { deps, seed } = setup();
    const mine = await seed({ projectId: PROJECT_A });
    await expect(
      submitNotification(
        deps,
        member(PROJECT_A),
        notification("created", [helperChange(mine.routerId, { project_id: PROJECT_B })]),
        "c",
      ),
    ).rejects.toBeInstanceOf(ForbiddenError);
  });

  it("ends with every helper when many notifications race for one router", async () => {
    const { deps, store, queue, seed } = setup();
    const router = await seed();
    const changes = Array.from({ length: 30 }, (_, i) => helperChange(router.routerId, { port: 30_000 + i }));
    await Promise.all(
      changes.map((c) => submitNotification(deps, member(), notification("created", [c]), "c")),
    );
    const stored = await store.get(router.routerId);
    expect(stored?.revision).toBe(30);
    expect(stored?.helpers).toHaveLength(30);
    expect(queue.messages("node-a").at(-1)?.helpers).toHaveLength(30);
  });

  it("answers 503 instead of looping when conflicts never stop", async () => {
    const { deps, store, seed } = setup();
    const router = await seed();
    store.put = async () => {
      throw new RevisionConflictError("always");
    };
    await expect(
      submitNotification(
        { ...deps, retry: { maxAttempts: 3, baseDelayMs: 0, maxDelayMs: 0 } },
        member(),
        notification("created", [helperChange(router.routerId)]),
        "c",
      ),
    ).rejects.toBeInstanceOf(ServiceUnavailableError);
  });

  it("refuses a duplicate id with other fields with 409", async () => {
    const { deps, seed } = setup();
    const helper = storedHelper();
    const router = await seed({ revision: 1, helpers: [helper] });
    await expect(
      submitNotification(
        deps,
        member(),
        notification("created", [{ ...helper, port: 1, router_id: router.routerId }]),
        "c",
      ),
    ).rejects.toBeInstanceOf(ConflictError);
  });
});

describe("submitNotification across routers, on a store with transactions", () => {
  const twoRouters = async () => {
    const { deps, store, queue, seed } = setup();
    const first = await seed({ bindings: qrouters("node-a") });
    const second = await seed({ bindings: qrouters("node-b") });
    const body = notification("created", [helperChange(first.routerId), helperChange(second.routerId)]);
    return { deps, store, queue, first, second, body };
  };

  it("commits every router in one write", async () => {
    const { deps, store, queue, first, second, body } = await twoRouters();
    let commits = 0;
    const putAll = store.putAll!;
    const counted: DomainDeps = {
      ...deps,
      store: Object.assign(Object.create(store), {
        putAll: async (writes: Parameters<typeof putAll>[0]) => {
          commits++;
          await putAll(writes);
        },
      }),
    };
    const result = await submitNotification(counted, member(), body, "c");
    expect(commits).toBe(1);
    expect(result.routers.map((r) => r.revision)).toEqual([1, 1]);
    expect((await store.get(first.routerId))?.helpers).toHaveLength(1);
    expect((await store.get(second.routerId))?.helpers).toHaveLength(1);
    expect(queue.messages("node-a")).toHaveLength(1);
    expect(queue.messages("node-b")).toHaveLength(1);
  });

  it("writes nothing to any router and queues nothing when the commit fails", async () => {
    const { deps, store, queue, first, second, body } = await twoRouters();
    const writes = store.writes;
    const down: DomainDeps = {
      ...deps,
      store: Object.assign(Object.create(store), {
        putAll: async () => {
          throw new ServiceUnavailableError("the routers table is busy; retry later");
        },
      }),
    };
    await expect(submitNotification(down, member(), body, "c")).rejects.toBeInstanceOf(
      ServiceUnavailableError,
    );
    expect(store.writes).toBe(writes);
    expect(await store.get(first.routerId)).toMatchObject({ revision: 0, helpers: [] });
    expect(await store.get(second.routerId)).toMatchObject({ revision: 0, helpers: [] });
    expect(queue.messages("node-a")).toEqual([]);
    expect(queue.messages("node-b")).toEqual([]);
  });

  it("re-reads and re-plans every router when another writer won the race", async () => {
    const { deps, store, first, second, body } = await twoRouters();
    const rival = storedHelper({ port: 4000 });
    let raced = false;
    const putAll = store.putAll!;
    const racing: DomainDeps = {
      ...deps,
      store: Object.assign(Object.create(store), {
        putAll: async (writes: Parameters<typeof putAll>[0]) => {
          if (!raced) {
            raced = true;
            await store.put({ ...second, revision: 1, helpers: [rival] }, 0);
          }
          await putAll(writes);
        },
      }),
    };
    const result = await submitNotification(racing, member(), body, "c");
    expect(result.routers).toEqual([
      { router_id: first.routerId, revision: 1 },
      { router_id: second.routerId, revision: 2 },
    ]);
    expect((await store.get(second.routerId))?.helpers.map((h) => h.id)).toContain(rival.id);
    expect((await store.get(second.routerId))?.helpers).toHaveLength(2);
  });
});

describe("upsertRouter", () => {
  it("refuses a non-admin with 403", async () => {
    const { deps } = setup();
    await expect(
      upsertRouter(deps, service(), newId(), { project_id: PROJECT_A, bindings: qrouters("node-a") }, "c"),
    ).rejects.toBeInstanceOf(ForbiddenError);
  });

  it("is a no-op for an identical upsert of a new router, and re-sends for one with helpers", async () => {
    const { deps, queue, seed } = setup();
    const router = await seed({ revision: 2, helpers: [storedHelper()] });
    const result = await upsertRouter(
      deps,
      admin(),
      router.routerId,
      { project_id: router.projectId, bindings: [...router.bindings] },
      "c",
    );
    expect(result).toMatchObject({ created: false, router: { revision: 2 } });
    expect(queue.messages("node-a").map((m) => m.revision)).toEqual([2]);
  });

  it("moves ownership without touching helpers and bumps the revision", async () => {
    const { deps, store, seed } = setup();
    const helper = storedHelper();
    const router = await seed({ revision: 1, helpers: [helper] });
    await upsertRouter(
      deps,
      admin(),
      router.routerId,
      { project_id: PROJECT_B, bindings: [...router.bindings] },
      "c",
    );
    expect(await store.get(router.routerId)).toMatchObject({
      projectId: PROJECT_B,
      revision: 2,
      helpers: [helper],
    });
  });
});

describe("deleteRouter", () => {
  it("commits the deletion before telling the node: a queue outage leaves it deleted, and a retried DELETE re-sends", async () => {
    const { deps, store, queue, seed } = setup();
    const router = await seed({ revision: 2, helpers: [storedHelper()] });
    queue.failingHosts.add("node-a");
    await expect(deleteRouter(deps, admin(), router.routerId, "c")).rejects.toBeInstanceOf(
      ServiceUnavailableError,
    );
    expect(queue.messages("node-a")).toEqual([]);
    expect(await store.get(router.routerId)).toBeUndefined();
    expect(await store.tombstone(router.routerId)).toMatchObject({ revision: 3, draining: { "node-a": 3 } });
    queue.failingHosts.delete("node-a");
    await deleteRouter(deps, admin(), router.routerId, "c-retry");
    expect(queue.messages("node-a").map((m) => [m.revision, m.helpers])).toEqual([[3, []]]);
  });

  it("sends nothing when the conditional delete fails: no empty snapshot for a revision that never committed", async () => {
    const { deps, store, queue, seed } = setup();
    const router = await seed({ revision: 2, helpers: [storedHelper()] });
    // The table refuses every delete (conflict after conflict, then an outage).
    let calls = 0;
    store.delete = async () => {
      calls++;
      if (calls < 3) throw new RevisionConflictError("raced");
      throw new ServiceUnavailableError("the routers table is busy; retry later");
    };
    await expect(deleteRouter(deps, admin(), router.routerId, "c")).rejects.toBeInstanceOf(
      ServiceUnavailableError,
    );
    expect(queue.all()).toEqual([]);
    expect(await store.get(router.routerId)).toMatchObject({ revision: 2 });
  });

  it("a DELETE of a router whose deletion every host confirmed is a plain 404", async () => {
    const { deps, store, seed } = setup();
    const router = await seed({ revision: 1 });
    await deleteRouter(deps, admin(), router.routerId, "c");
    await store.confirmDrained(router.routerId, "node-a", 2);
    await expect(deleteRouter(deps, admin(), router.routerId, "c2")).rejects.toBeInstanceOf(NotFoundError);
  });
});

describe("readRouterState", () => {
  it("reports applied errors and sync state", async () => {
    const { deps, store, seed } = setup();
    const helper = storedHelper();
    const router = await seed({ revision: 1, helpers: [helper] });
    const errors = [
      { helper_id: helper.id, code: "module_missing", message: "nf_conntrack_ftp is not loaded" },
    ];
    await store.recordReplica({
      routerId: router.routerId,
      host: "node-a",
      status: replica(1, { errors, content: "partial" }),
    });
    // The kernel holds all but the helper it lacks: reported, and not in sync.
    expect(await readRouterState(deps, member(), router.routerId)).toMatchObject({
      revision: 1,
      applied_revision: 1,
      in_sync: false,
      applied_errors: errors,
    });
  });

  it("shows the hosting node to operators only", async () => {
    const { deps, seed } = setup();
    const router = await seed();
    expect((await readRouterState(deps, admin(), router.routerId)).host).toBe("node-a");
    expect((await readRouterState(deps, member(), router.routerId)).host).toBeUndefined();
  });
});

describe("buildSnapshot", () => {
  it("orders helpers by protocol, port and id whatever the stored order", () => {
    const helpers = [
      storedHelper({ protocol: "udp", port: 69, helper: "tftp" }),
      storedHelper({ protocol: "tcp", port: 6667, helper: "irc" }),
      storedHelper({ protocol: "tcp", port: 21 }),
    ];
    const record = routerRecord({ revision: 7, helpers });
    const snapshot = buildSnapshot(record, record.bindings[0]!, "corr", fixedClock());
    expect(snapshot.helpers.map((h) => `${h.protocol}/${h.port}`)).toEqual(["tcp/21", "tcp/6667", "udp/69"]);
    expect(snapshot).toMatchObject({
      v: 1,
      kind: "router-sync",
      revision: 7,
      namespace: "qrouter",
      issued_at: "2026-11-24T06:00:00.000Z",
    });
  });
});

describe("moving a router", () => {
  it("a router registered again after its deletion reaches its node, even when the first try's send failed", async () => {
    const { deps, queue, seed } = setup();
    const router = await seed({ bindings: qrouters("node-a"), revision: 2, helpers: [storedHelper()] });
    await deleteRouter(deps, admin(), router.routerId, "c1");
    expect(queue.messages("node-a").map((m) => [m.revision, m.helpers.length])).toEqual([[3, 0]]);
    const register = (correlation: string) =>
      upsertRouter(
        deps,
        admin(),
        router.routerId,
        { project_id: router.projectId, bindings: qrouters("node-a") },
        correlation,
      );
    queue.failingHosts.add("node-a");
    await expect(register("c2")).rejects.toThrow(COMMITTED_BUT_NOT_QUEUED);
    queue.failingHosts.delete("node-a");
    const retried = await register("c3");
    // It continues from the deletion's revision, and its empty state at that revision is not lost to
    // deduplication against the deletion's own snapshot.
    expect(retried.router.revision).toBe(3);
    expect(queue.messages("node-a").map((m) => [m.revision, m.helpers.length])).toEqual([
      [3, 0],
      [3, 0],
    ]);
  });

  it("cleans the old node on a retried move whose first empty snapshot was lost", async () => {
    const { deps, queue, seed } = setup();
    const helper = storedHelper();
    const router = await seed({
      bindings: qrouters("node-a"),
      revision: 2,
      helpers: [helper],
      replicas: { "node-a": replica(2) },
    });
    queue.failingHosts.add("node-a");
    const move = () =>
      upsertRouter(
        deps,
        admin(),
        router.routerId,
        { project_id: router.projectId, bindings: qrouters("node-b") },
        "c",
      );
    await expect(move()).rejects.toThrow(COMMITTED_BUT_NOT_QUEUED);
    queue.failingHosts.delete("node-a");
    const retried = await move();
    expect(retried.router).toMatchObject({ host: "node-b", bindings: qrouters("node-b"), revision: 3 });
    expect(queue.messages("node-a").map((m) => [m.revision, m.helpers])).toEqual([[3, []]]);
    // The first attempt's send to node-b went through; the retry re-sends it in its own deduplication scope
    // (a duplicate revision, which the agent answers with a report and no write).
    expect(queue.messages("node-b").map((m) => [m.revision, m.helpers])).toEqual([
      [3, [helper]],
      [3, [helper]],
    ]);
  });
});
