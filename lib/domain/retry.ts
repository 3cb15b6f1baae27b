/**
 * Bounded retry with capped full-jitter backoff: before attempt n (n >= 1) a random wait in
 * [0, min(maxDelayMs, baseDelayMs * 2^n)). Each attempt says whether to go again or what it settled on.
 */
import { setTimeout as sleep } from "node:timers/promises";

export interface RetryPolicy {
  readonly maxAttempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

/** What one attempt settled: go again (after a backoff), or stop with a value. */
export type Attempt<T> = { readonly outcome: "retry" } | { readonly outcome: "done"; readonly value: T };

export const retry: Attempt<never> = { outcome: "retry" };

export function done(): Attempt<undefined>;
export function done<T>(value: T): Attempt<T>;
export function done<T>(value?: T): Attempt<T | undefined> {
  return { outcome: "done", value };
}

/** The waiting, replaceable in tests. */
export interface Backoff {
  readonly sleep: (ms: number) => Promise<unknown>;
  /** In [0, 1), as Math.random. */
  readonly random: () => number;
}

const realBackoff: Backoff = { sleep, random: Math.random };

/** The upper bound of the wait before `attempt` (1-based count of attempts already made). */
export function backoffCeiling(policy: RetryPolicy, attempt: number): number {
  return Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.min(attempt, 16));
}

/**
 * Runs `attempt(0)`, `attempt(1)`, ... until one is done, waiting a jittered backoff before every attempt but
 * the first. When `policy.maxAttempts` attempts have all asked to retry, returns what `exhausted` returns (or
 * throws what it throws).
 * An error thrown by an attempt is not retried: it propagates at once.
 */
export async function retrying<T>(
  policy: RetryPolicy,
  attempt: (n: number) => Promise<Attempt<T>>,
  exhausted: () => T,
  backoff: Backoff = realBackoff,
): Promise<T> {
  for (let n = 0; n < policy.maxAttempts; n++) {
    if (n > 0) await backoff.sleep(backoff.random() * backoffCeiling(policy, n));
    const result = await attempt(n);
    if (result.outcome === "done") return result.value;
  }
  return exhausted();
}
