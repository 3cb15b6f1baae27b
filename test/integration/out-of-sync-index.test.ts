/**
 * The sparse out-of-sync index on dynalite through the real AWS SDK: the reconciler reads the few routers out
 * of sync and nothing of the many in sync, and two reports racing through the status path never leave a
 * router that one of them made mismatched out of the index.
 */
import type { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DynamoRoutersStore } from "../../lib/aws/routers-store.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { reconcile, recordAppliedReport } from "../../lib/domain/reports.ts";
import type { ReplicaReport, RouterRecord, RoutersStore, StoredHelper } from "../../lib/ports.ts";
import type { AppliedReport } from "../../lib/schemas/index.ts";
import { type Emulators, startEmulators } from "../support/emulators.ts";
import { fixedClock, qrouters, replica, routerRecord, storedHelper } from "../support/factories.ts";
import { MemoryCommandQueue } from "../support/memory.ts";

let emu: Emulators;
beforeAll(async () => {
  emu = await startEmulators();
});
afterAll(async () => {
  await emu?.stop();
});

interface Reads {
  /** Every command sent, with the index it named. */
  commands: string[];
  /** Items the table answered with (index keys, batch-read items, single gets). */
  items: number;
}

/** Counts what each request read, below the store (as DynamoDB bills it: per item returned). */
function countReads(client: DynamoDBDocumentClient): Reads {
  const reads: Reads = { commands: [], items: 0 };
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const result = await next(args);
      const input = args.input as { IndexName?: string };
      reads.commands.push(`${context.commandName}${input.IndexName ? `:${input.IndexName}` : ""}`);
      const output = result.output as {
        Items?: unknown[];
        Item?: unknown;
        Responses?: Record<string, unknown[]>;
      };
      reads.items += (output.Items?.length ?? 0) + (output.Item ? 1 : 0);
      for (const items of Object.values(output.Responses ?? {})) reads.items += items.length;
      return result;
    },
    { step: "initialize", name: "countReads" },
  );
  return reads;
}

async function freshStore(): Promise<{ store: DynamoRoutersStore; reads: Reads }> {
  const config = emu.makeConfig();
  await emu.createTables(config);
  const { dynamo } = emu.clients(config);
  const reads = countReads(dynamo);
  return { store: new DynamoRoutersStore(dynamo, config.routersTable, { transactions: false }), reads };
}

/** A report whose digest says the kernel holds `helpers`. */
const applied = (router: RouterRecord, helpers: readonly StoredHelper[] = router.helpers): AppliedReport => ({
  v: 1,
  kind: "applied",
  router_id: router.routerId,
  revision: router.revision,
  digest: helperSetDigest(helpers),
  rules: { ipv4: helpers.length, ipv6: helpers.length },
  errors: [],
});

const flagged = async (store: RoutersStore): Promise<string[]> => {
  const ids: string[] = [];
  for await (const entry of store.listOutOfSync()) ids.push(entry.routerId);
  return ids.sort();
};

describe("reconciler on the out-of-sync index", () => {
  it("reads only the routers out of sync, however many are in sync, and heals a false positive", async () => {
    const { store, reads } = await freshStore();
    const queue = new MemoryCommandQueue();
    const deps = { store, queue, clock: fixedClock() };
    // 40 in sync, each settled by its own host's report through the status path.
    for (let i = 0; i < 40; i++) {
      const record = routerRecord({ revision: 1, helpers: [storedHelper()] });
      await store.put(record, undefined);
      expect(await recordAppliedReport(deps, "node-a", applied(record))).toBe("recorded");
    }
    const behind = Array.from({ length: 3 }, () => routerRecord({ revision: 2, helpers: [storedHelper()] }));
    for (const record of behind) await store.put(record, undefined);
    // In sync, but recorded without a basis: still in the index (a false "out of sync").
    const falsePositive = routerRecord({ revision: 1, helpers: [] });
    await store.put(falsePositive, undefined);
    await store.recordReplica({ routerId: falsePositive.routerId, host: "node-a", status: replica(1) });
    const deleted = routerRecord({ bindings: qrouters("node-b"), revision: 1 });
    await store.put(deleted, undefined);
    await store.delete(deleted.routerId, 1, "2026-11-24T05:00:00.000Z", { "node-b": 2 });

    reads.commands.length = 0;
    reads.items = 0;
    const summary = await reconcile(deps, { correlationId: "sweep-1" });
    expect(summary).toMatchObject({ checked: 5, healed: 1, resent: 4, drains: 1, failedHosts: [] });
    // Five index keys and five consistent re-reads; the table itself is never scanned.
    expect(reads.items).toBe(10);
    expect(reads.commands.filter((command) => command.startsWith("Scan"))).toEqual([
      "ScanCommand:out-of-sync",
    ]);
    expect(
      queue
        .messages("node-a")
        .map((m) => m.router_id)
        .sort(),
    ).toEqual(behind.map((record) => record.routerId).sort());
    expect(queue.messages("node-b").map((m) => [m.router_id, m.revision, m.helpers.length])).toEqual([
      [deleted.routerId, 2, 0],
    ]);

    // The healed one is gone from the index: the next sweep reads four.
    expect(await flagged(store)).not.toContain(falsePositive.routerId);
    expect((await reconcile(deps, { correlationId: "sweep-2" })).checked).toBe(4);
  });

  it("takes a router out once its reports settle it, and the next sweep leaves it alone", async () => {
    const { store } = await freshStore();
    const queue = new MemoryCommandQueue();
    const deps = { store, queue, clock: fixedClock() };
    const record = routerRecord({ revision: 3, helpers: [storedHelper()] });
    await store.put(record, undefined);
    expect(await flagged(store)).toEqual([record.routerId]);
    expect(await recordAppliedReport(deps, "node-a", applied(record))).toBe("recorded");
    expect(await flagged(store)).toEqual([]);
    expect(await reconcile(deps, { correlationId: "sweep" })).toMatchObject({ checked: 0, resent: 0 });
  });
});

describe("status reports racing", () => {
  it("a report that saw a replica in sync never un-flags the router another report just made mismatched", async () => {
    const { store } = await freshStore();
    const queue = new MemoryCommandQueue();
    const helpers = [storedHelper()];
    const record = routerRecord({ bindings: qrouters("node-a", "node-b"), revision: 1, helpers });
    await store.put(record, undefined);
    const deps = { store, queue, clock: fixedClock() };
    expect(await recordAppliedReport(deps, "node-a", applied(record))).toBe("recorded");

    // node-b's report has read the router (node-a in sync) when node-a's drift check reports other content.
    let raced = false;
    const racing: RoutersStore = Object.assign(Object.create(store) as RoutersStore, {
      recordReplica: async (report: ReplicaReport) => {
        if (!raced) {
          raced = true;
          const drifted = await recordAppliedReport(deps, "node-a", applied(record, []));
          expect(drifted).toBe("content-mismatch");
        }
        return store.recordReplica(report);
      },
    });
    const outcome = await recordAppliedReport({ ...deps, store: racing }, "node-b", applied(record));
    expect(outcome).toBe("recorded");
    const stored = (await store.get(record.routerId))!;
    expect(stored.replicas["node-a"]?.content).toBe("mismatch");
    expect(stored.replicas["node-b"]?.content).toBe("match");
    expect(await flagged(store)).toEqual([record.routerId]);

    // And so the reconciler re-sends node-a its snapshot.
    await reconcile(deps, { correlationId: "sweep" });
    expect(queue.messages("node-a").map((m) => m.router_id)).toEqual([record.routerId]);
    expect(queue.messages("node-b")).toEqual([]);
  });
});
