/**
 * Faults the emulators cannot produce (a partial SendMessageBatch failure, a throttled DynamoDB write),
 * injected with aws-sdk-client-mock around otherwise real clients, and races injected through the port.
 * Each ends in a correct state or a clean 503.
 */
import { DynamoDBPersistenceLayer } from "@aws-lambda-powertools/idempotency/dynamodb";
import { SendMessageBatchCommand, type SendMessageBatchCommandInput } from "@aws-sdk/client-sqs";
import { BatchGetCommand, GetCommand, PutCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import { mockClient } from "aws-sdk-client-mock";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { queueUrlFromTemplate, SqsCommandQueue } from "../../lib/aws/command-queue.ts";
import { DynamoRoutersStore } from "../../lib/aws/routers-store.ts";
import { COMMITTED_BUT_NOT_QUEUED } from "../../lib/domain/services.ts";
import type { RouterRecord, RoutersStore } from "../../lib/ports.ts";
import { httpApiClaims, httpApiEvent } from "../support/events.ts";
import { newId, PROJECT_A, qrouters, storedHelper, wireHelper } from "../support/factories.ts";
import { MemoryRoutersStore } from "../support/memory.ts";
import { bodyOf, type Core, FAST_QUEUE, startCore } from "./core-harness.ts";

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

const claims = httpApiClaims(PROJECT_A);
const notify = (helpers: Record<string, unknown>[], headers: Record<string, string> = {}) =>
  httpApiEvent({
    method: "POST",
    path: "/v1/notifications",
    body: { event: "created", conntrack_helpers: helpers },
    claims,
    headers,
  });

function queueOver(sqs: ReturnType<Core["emu"]["clients"]>["sqs"]) {
  return new SqsCommandQueue(
    sqs,
    (host) => queueUrlFromTemplate(core.config.nodeQueueUrlTemplate, host),
    core.key.signer,
    FAST_QUEUE,
  );
}

describe("SQS faults", () => {
  it("retries the failed entries of a partial SendMessageBatch failure and queues every snapshot once", async () => {
    const real = core.emu.clients(core.config).sqs;
    const faulty = core.emu.clients(core.config).sqs;
    const mock = mockClient(faulty);
    const forward = (input: SendMessageBatchCommandInput) => real.send(new SendMessageBatchCommand(input));
    mock
      .on(SendMessageBatchCommand)
      .callsFakeOnce(async (input: SendMessageBatchCommandInput) => {
        const [first, ...rest] = input.Entries ?? [];
        const sent = await forward({ ...input, Entries: rest });
        return {
          Successful: sent.Successful ?? [],
          Failed: [{ Id: first!.Id, SenderFault: false, Code: "InternalError", Message: "internal error" }],
        };
      })
      .callsFake(forward);
    const routers = [await core.seedRouter(), await core.seedRouter(), await core.seedRouter()];
    const result = await core.call(
      notify(routers.map((r) => wireHelper(r.routerId))),
      core.deps({ queue: queueOver(faulty) }),
    );
    expect(result.statusCode).toBe(202);
    expect(mock.commandCalls(SendMessageBatchCommand)).toHaveLength(2);
    const queued = await core.queued("node-a");
    expect(queued.map((s) => s.router_id).sort()).toEqual(routers.map((r) => r.routerId).sort());
  });

  it("answers a clean 503 that says the state is committed when entries keep failing", async () => {
    const faulty = core.emu.clients(core.config).sqs;
    mockClient(faulty)
      .on(SendMessageBatchCommand)
      .callsFake(async (input: SendMessageBatchCommandInput) => ({
        Successful: [],
        Failed: (input.Entries ?? []).map((e) => ({
          Id: e.Id,
          SenderFault: false,
          Code: "ServiceUnavailable",
          Message: "arn:aws:sqs:internal-detail",
        })),
      }));
    const router = await core.seedRouter();
    const headers = { "idempotency-key": `k-${newId()}` };
    const helper = wireHelper(router.routerId);
    const result = await core.call(notify([helper], headers), core.deps({ queue: queueOver(faulty) }));
    expect(result.statusCode).toBe(503);
    expect(result.headers["retry-after"]).toBe("1");
    expect(bodyOf(result)).toEqual({
      error: { code: "service_unavailable", message: COMMITTED_BUT_NOT_QUEUED },
    });
    expect((await core.store.get(router.routerId))?.revision).toBe(1);
    expect(await core.depth()).toBe(0);
    const retried = await core.call(notify([helper], headers));
    expect(retried.statusCode).toBe(202);
    expect((await core.queued("node-a")).map((s) => s.revision)).toEqual([1]);
  });
});

describe("DynamoDB faults", () => {
  function throttledStore(failPutFor: (routerId: string) => boolean): DynamoRoutersStore {
    const real = core.emu.clients(core.config).dynamo;
    const faulty = core.emu.clients(core.config).dynamo;
    const throttle = Object.assign(new Error("Rate of requests exceeds the allowed throughput."), {
      name: "ProvisionedThroughputExceededException",
      $metadata: { httpStatusCode: 400 },
    });
    mockClient(faulty)
      .on(GetCommand)
      .callsFake((input) => real.send(new GetCommand(input)))
      .on(BatchGetCommand)
      .callsFake((input) => real.send(new BatchGetCommand(input)))
      .on(PutCommand)
      .callsFake((input) =>
        failPutFor(String(input.Item?.router_id))
          ? Promise.reject(throttle)
          : real.send(new PutCommand(input)),
      )
      // Desired-state changes of existing routers are updates (see DynamoRoutersStore.put).
      .on(UpdateCommand)
      .callsFake((input) =>
        failPutFor(String(input.Key?.router_id))
          ? Promise.reject(throttle)
          : real.send(new UpdateCommand(input)),
      );
    return new DynamoRoutersStore(faulty, core.config.routersTable, { transactions: false });
  }

  it("answers a clean 503 and writes nothing when the table throttles the write", async () => {
    const router = await core.seedRouter();
    const store = throttledStore(() => true);
    const result = await core.expectNothingWritten(() =>
      core.call(notify([wireHelper(router.routerId)]), core.deps({ store })),
    );
    expect(result.statusCode).toBe(503);
    expect(bodyOf(result).error).toEqual({
      code: "service_unavailable",
      message: "the routers table is busy; retry later",
    });
  });

  it("reverts the routers already written when a later router's write is throttled", async () => {
    const first = await core.seedRouter({ bindings: qrouters("node-a") });
    const second = await core.seedRouter({ bindings: qrouters("node-b") });
    const store = throttledStore((routerId) => routerId === second.routerId);
    const result = await core.call(
      notify([wireHelper(first.routerId), wireHelper(second.routerId)]),
      core.deps({ store }),
    );
    expect(result.statusCode).toBe(503);
    expect((await core.store.get(first.routerId))?.helpers).toEqual([]);
    expect(await core.store.get(second.routerId)).toMatchObject({ revision: 0, helpers: [] });
  });
});

describe("races", () => {
  /** Lets another writer take the port on `routerId` just before this request's first write to it. */
  function racingStore(
    inner: RoutersStore,
    routerId: string,
    rival: RouterRecord["helpers"][number],
  ): RoutersStore {
    let raced = false;
    return {
      get: (id) => inner.get(id),
      getMany: (ids) => inner.getMany(ids),
      delete: (id, rev, at, draining) => inner.delete(id, rev, at, draining),
      tombstone: (id) => inner.tombstone(id),
      recordReplica: (report) => inner.recordReplica(report),
      confirmDrained: (id, host, rev, basis) => inner.confirmDrained(id, host, rev, basis),
      listByHost: (host) => inner.listByHost(host),
      listAll: () => inner.listAll(),
      listPage: (query) => inner.listPage(query),
      listOutOfSync: () => inner.listOutOfSync(),
      clearOutOfSync: (entry) => inner.clearOutOfSync(entry),
      async put(next, expected, draining) {
        if (next.routerId === routerId && !raced) {
          raced = true;
          const current = (await inner.get(routerId))!;
          await inner.put(
            { ...current, revision: current.revision + 1, helpers: [...current.helpers, rival] },
            current.revision,
          );
        }
        return inner.put(next, expected, draining);
      },
    };
  }

  it("keeps a multi-router notification all-or-none when a rival takes a port between check and write", async () => {
    const first = await core.seedRouter({ bindings: qrouters("node-a") });
    const second = await core.seedRouter({ bindings: qrouters("node-b") });
    const rival = storedHelper({ protocol: "tcp", port: 2121 });
    const store = racingStore(core.store, second.routerId, rival);
    const result = await core.call(
      notify([wireHelper(first.routerId), wireHelper(second.routerId, { protocol: "tcp", port: 2121 })]),
      core.deps({ store }),
    );
    expect(result.statusCode).toBe(409);
    expect((await core.store.get(first.routerId))?.helpers).toEqual([]);
    expect((await core.store.get(second.routerId))?.helpers).toEqual([rival]);
    expect(await core.queued("node-b")).toEqual([]);
  });

  it("re-reads and applies on top of a rival write that does not conflict", async () => {
    const router = await core.seedRouter();
    const rival = storedHelper({ protocol: "udp", port: 69, helper: "tftp" });
    const store = racingStore(core.store, router.routerId, rival);
    const mine = wireHelper(router.routerId, { port: 21 });
    const result = await core.call(notify([mine]), core.deps({ store }));
    expect(result.statusCode).toBe(202);
    const stored = await core.store.get(router.routerId);
    expect(stored?.revision).toBe(2);
    expect(stored?.helpers.map((h) => h.id).sort()).toEqual([String(mine.id), rival.id].sort());
  });
});

describe("idempotency store faults", () => {
  it("answers a clean 503 and changes nothing when the idempotency table cannot be used", async () => {
    const router = await core.seedRouter();
    const deps = {
      ...core.deps(),
      idempotency: new DynamoDBPersistenceLayer({
        tableName: "no-such-idempotency-table",
        awsSdkV3Client: core.emu.clients(core.config).dynamoRaw,
      }),
    };
    const result = await core.expectNothingWritten(() =>
      core.call(notify([wireHelper(router.routerId)], { "idempotency-key": `k-${newId()}` }), deps),
    );
    expect(result.statusCode).toBe(503);
    expect(bodyOf(result).error.message).toBe(
      "idempotency records are unavailable; retry with the same Idempotency-Key",
    );
  });
});

describe("unexpected failures", () => {
  it("answers 500 with a generic body that carries no internals, and logs the real error", async () => {
    const refused = () => Promise.reject(new Error("connect ECONNREFUSED 10.0.0.7:8000 password=hunter2"));
    const broken: RoutersStore = Object.assign(new MemoryRoutersStore(), { get: refused, getMany: refused });
    const router = newId();
    const result = await core.call(notify([wireHelper(router)]), core.deps({ store: broken }));
    expect(result.statusCode).toBe(500);
    expect(bodyOf(result)).toEqual({ error: { code: "internal_error", message: "internal error" } });
    expect(result.body).not.toContain("hunter2");
    expect(JSON.stringify(core.logger.entries.at(-1))).toContain("ECONNREFUSED");
  });
});
