/**
 * The reconciler-scale benchmark (bench/reconcile-scale.ts) at tiny sizes, so it cannot rot: counts, never
 * times. A table ten times larger costs the sweep the same requests and the same items read, and every
 * router out of sync is re-sent on each sweep.
 */
import { describe, expect, it } from "vitest";
import { benchReconcileScale } from "../../bench/reconcile-scale.ts";

describe("reconciler sweep against table size (dynalite, fauxqs)", () => {
  it("reads only the out-of-sync index and its routers, however many are in sync, and re-sends each", async () => {
    const outOfSync = 10;
    const sweeps = 2;
    const [small, large] = await benchReconcileScale({ sizes: [200, 2_000], outOfSync, sweeps, hosts: 4 });
    for (const row of [small!, large!]) {
      expect(row.sweepsAlike).toBe(true);
      expect(row.summary).toMatchObject({ checked: outOfSync, resent: outOfSync, failedHosts: [] });
      // The index's keys and one consistent re-read of each: nothing of the table beyond them.
      expect(row.dynamo.itemsRead).toBe(2 * outOfSync);
      expect(Object.keys(row.dynamo.requests).sort()).toEqual(["BatchGetItem", "Scan:out-of-sync"]);
      // One batch per host, every snapshot reaching its node's queue (the warm-up sweep's too).
      expect(row.sqs.requests).toEqual({ SendMessageBatch: 4 });
      expect(row.sqs.messagesSent).toBe(outOfSync);
      expect(row.queued).toBe(outOfSync * (sweeps + 1));
    }
    expect(large!.dynamo.requests).toEqual(small!.dynamo.requests);
    expect(large!.dynamo.readUnits).toBe(small!.dynamo.readUnits);
  }, 60_000);
});
