/**
 * The burst of issue 12 on the local stack (bench/burst.ts, nftables): 10,000 notifications over 1,000
 * routers from 50 concurrent clients, each with its own Idempotency-Key. The API takes all of them, the
 * agent's backlog drains within 10 s of the last 202, every router converges in sync at the revision of its
 * last 202, every namespace holds exactly its desired rules, the node and status DLQs are empty, and a replay
 * of the same burst with the same keys answers each as the first time and changes nothing. The figures are
 * printed; test/e2e/burst-small.test.ts keeps a small version in `npm test`.
 */
import { expect, it } from "vitest";
import { benchBurst } from "../../bench/burst.ts";
import { stackMissing } from "../../bench/stack-child.ts";
import { describeKernel } from "../support/requirements.ts";
import { ROOT } from "./harness.ts";

const ROUTERS = 1_000;
const NOTIFICATIONS = 10_000;
const CLIENTS = 50;
/** The claim: the agent keeps up, its backlog gone this long after the last 202. */
const DRAIN_SECONDS = 10;

describeKernel("soak: a burst of 10,000 notifications over 1,000 routers from 50 clients", () => {
  it("takes them all, drains within 10 s of the last 202, converges every router, and a replay changes nothing", async () => {
    const missing = stackMissing(ROOT);
    if (missing) throw new Error(`the local stack cannot run: ${missing}`);
    const result = await benchBurst({
      root: ROOT,
      routers: ROUTERS,
      notifications: NOTIFICATIONS,
      clients: CLIENTS,
      deadlineMs: 1_700_000,
      log: (line) => console.log(`[soak] burst${line}`),
    });
    const { backlog, ...figures } = result;
    console.log(`[soak] burst figures: ${JSON.stringify(figures)}`);
    console.log(
      `[soak] burst backlog (s, queued, applies, accepted): ${JSON.stringify(backlog.map((s) => [Math.round(s.t), s.queued, s.applies, s.accepted]))}`,
    );
    expect(result.skipped).toBeUndefined();
    expect(result.statuses).toEqual({ 202: NOTIFICATIONS });
    expect(result.converged).toBe(true);
    expect(result.notAtLastRevision).toEqual([]);
    expect(result.desiredMismatch).toEqual([]);
    expect(result.kernelMismatch).toEqual([]);
    expect(result.dlq).toEqual({ node: 0, status: 0 });
    expect(result.applyFailures).toBe(0);
    expect(result.messages.invalid ?? 0).toBe(0);
    const applies = result.applies.changed + result.applies.unchanged;
    expect(applies).toBeGreaterThanOrEqual(ROUTERS);
    expect(applies).toBeLessThanOrEqual(NOTIFICATIONS);

    expect(result.replay).toBeDefined();
    const replay = result.replay!;
    expect(replay.statuses).toEqual({ 202: NOTIFICATIONS });
    expect(replay.differing).toBe(0);
    expect(replay.moved).toEqual([]);
    expect(replay.appliesDelta).toBe(0);
    expect(replay.messagesDelta).toBe(0);
    expect(replay.queuedAfter).toBe(0);

    // The soak is where a time claim is checked (measured, printed above with the backlog over time).
    expect(result.drainSeconds).toBeLessThanOrEqual(DRAIN_SECONDS);
  }, 1_800_000);
});
