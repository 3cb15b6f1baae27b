/**
 * The burst of `npm run bench -- --only burst` (bench/burst.ts) at a size the suite can afford, so that it
 * cannot rot: 200 notifications over 20 routers from 10 clients on the local stack (nftables). Every claim of
 * the full run but its time: the API takes all of them, every router ends in sync at its last revision, the
 * namespaces hold exactly the desired rules, the DLQs are empty, and a replay with the same Idempotency-Keys
 * answers as the first time and changes nothing. The 10,000-notification run is test/soak/burst.test.ts.
 */
import { resolve } from "node:path";
import { expect, it } from "vitest";
import { benchBurst } from "../../bench/burst.ts";
import { stackMissing } from "../../bench/stack-child.ts";
import { describeKernel } from "../support/requirements.ts";

const ROOT = resolve(import.meta.dirname, "../..");
const ROUTERS = 20;
const NOTIFICATIONS = 200;
const CLIENTS = 10;

describeKernel("a small burst on the local stack (bench/burst.ts)", () => {
  it("takes every notification, converges every router at its last revision, and a replay changes nothing", async () => {
    const missing = stackMissing(ROOT);
    if (missing) throw new Error(`the local stack cannot run: ${missing}`);
    const lines: string[] = [];
    const result = await benchBurst({
      root: ROOT,
      routers: ROUTERS,
      notifications: NOTIFICATIONS,
      clients: CLIENTS,
      log: (line) => lines.push(line),
    });
    if (!result.converged) console.log(lines.join("\n"));
    expect(result.skipped).toBeUndefined();
    expect(result.backend).toBe("nftables");
    expect(result.statuses).toEqual({ 202: NOTIFICATIONS });
    expect(result.converged).toBe(true);
    expect(result.notAtLastRevision).toEqual([]);
    expect(result.desiredMismatch).toEqual([]);
    expect(result.kernelMismatch).toEqual([]);
    expect(result.dlq).toEqual({ node: 0, status: 0 });
    expect(result.applyFailures).toBe(0);
    expect(result.messages.invalid ?? 0).toBe(0);
    // Each router's newest revision applied at least once; never more applies than notifications.
    const applies = result.applies.changed + result.applies.unchanged;
    expect(applies).toBeGreaterThanOrEqual(ROUTERS);
    expect(applies).toBeLessThanOrEqual(NOTIFICATIONS);
    // Every router is watched at this size: every helper's rule was seen committed in its namespace.
    expect(result.latency.samples).toBe(NOTIFICATIONS);

    expect(result.replay).toBeDefined();
    const replay = result.replay!;
    expect(replay.statuses).toEqual({ 202: NOTIFICATIONS });
    expect(replay.differing).toBe(0);
    expect(replay.moved).toEqual([]);
    expect(replay.appliesDelta).toBe(0);
    expect(replay.messagesDelta).toBe(0);
    expect(replay.queuedAfter).toBe(0);
  }, 300_000);
});
