/** The one retry loop: attempts, giving up, and the capped full-jitter waits between attempts. */
import { describe, expect, it } from "vitest";
import {
  type Attempt,
  type Backoff,
  done,
  type RetryPolicy,
  retry,
  retrying,
} from "../../lib/domain/retry.ts";

const POLICY: RetryPolicy = { maxAttempts: 5, baseDelayMs: 2, maxDelayMs: 50 };

/** No real waiting: records each requested wait and draws `random` (the top of the range by default). */
function recordingBackoff(random = () => 1): Backoff & { readonly waits: number[] } {
  const waits: number[] = [];
  return {
    waits,
    random,
    sleep: async (ms) => {
      waits.push(ms);
    },
  };
}

/** An attempt that asks to retry `failures` times, then is done with "ok"; it records the attempt numbers. */
function succeedingAfter(failures: number): ((n: number) => Promise<Attempt<string>>) & { calls: number[] } {
  const calls: number[] = [];
  return Object.assign(
    async (n: number) => {
      calls.push(n);
      return calls.length > failures ? done("ok") : retry;
    },
    { calls },
  );
}

const giveUp = (): never => {
  throw new Error("out of attempts");
};

describe("retrying", () => {
  it("retries until an attempt is done and returns its value", async () => {
    const attempt = succeedingAfter(2);
    await expect(retrying(POLICY, attempt, giveUp, recordingBackoff())).resolves.toBe("ok");
    expect(attempt.calls).toEqual([0, 1, 2]);
  });

  it("waits before every attempt but the first", async () => {
    const backoff = recordingBackoff();
    await retrying(POLICY, succeedingAfter(2), giveUp, backoff);
    expect(backoff.waits).toHaveLength(2);
  });

  it("does not wait when the first attempt is done", async () => {
    const backoff = recordingBackoff();
    await retrying(POLICY, succeedingAfter(0), giveUp, backoff);
    expect(backoff.waits).toEqual([]);
  });

  it("gives up after maxAttempts with the error the caller throws", async () => {
    const attempt = succeedingAfter(Number.POSITIVE_INFINITY);
    await expect(retrying(POLICY, attempt, giveUp, recordingBackoff())).rejects.toThrow("out of attempts");
    expect(attempt.calls).toEqual([0, 1, 2, 3, 4]);
  });

  it("resolves to what the caller returns when it gives up without an error", async () => {
    const attempt = succeedingAfter(Number.POSITIVE_INFINITY);
    await expect(retrying(POLICY, attempt, () => "left as is", recordingBackoff())).resolves.toBe(
      "left as is",
    );
  });

  it("propagates an error an attempt throws, without retrying", async () => {
    const calls: number[] = [];
    const failing = async (n: number): Promise<Attempt<string>> => {
      calls.push(n);
      throw new Error("not a race");
    };
    await expect(retrying(POLICY, failing, giveUp, recordingBackoff())).rejects.toThrow("not a race");
    expect(calls).toEqual([0]);
  });

  it("doubles the delay ceiling per attempt up to maxDelayMs", async () => {
    const backoff = recordingBackoff();
    const policy = { maxAttempts: 8, baseDelayMs: 2, maxDelayMs: 50 };
    await retrying(policy, succeedingAfter(Number.POSITIVE_INFINITY), () => undefined, backoff);
    expect(backoff.waits).toEqual([4, 8, 16, 32, 50, 50, 50]);
  });

  it("stops doubling after 2^16 however high maxDelayMs is", async () => {
    const backoff = recordingBackoff();
    const policy = { maxAttempts: 19, baseDelayMs: 1, maxDelayMs: Number.POSITIVE_INFINITY };
    await retrying(policy, succeedingAfter(Number.POSITIVE_INFINITY), () => undefined, backoff);
    expect(backoff.waits.slice(-3)).toEqual([2 ** 16, 2 ** 16, 2 ** 16]);
  });

  it("draws each wait uniformly below the ceiling (full jitter)", async () => {
    const backoff = recordingBackoff(() => 0.25);
    await retrying(POLICY, succeedingAfter(2), giveUp, backoff);
    expect(backoff.waits).toEqual([1, 2]);
  });
});
