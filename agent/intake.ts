/**
 * Between the queue and the core: a verified snapshot is kept in the agent's state (on disk) before its
 * message is deleted, and applied from there. A FIFO queue hands out a router's next message only once the
 * current one is deleted, so taking it off the queue early is what lets several revisions of one router
 * meet here while that router is being applied: only the newest is applied, once. A restart applies what
 * was kept and not applied yet. A snapshot that cannot be applied yet (its namespace is missing, the
 * firewall failed) stays kept and is retried after a growing delay, or at once when a newer one arrives.
 */
import pLimit, { type LimitFunction } from "p-limit";
import type { Logger } from "pino";
import type { RouterSyncMessage } from "../lib/schemas/index.ts";
import { ApplyFailedError } from "./backend.ts";
import type { AgentCore, ApplyOutcome } from "./core.ts";
import type { AgentMetrics } from "./metrics.ts";
import type { StateStore } from "./state.ts";

export interface IntakeOptions {
  readonly core: AgentCore;
  readonly state: StateStore;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  /** Routers applied at once; one router's snapshots never overlap. */
  readonly applyConcurrency: number;
  /** Retry delay for a snapshot that could not be applied yet: base * 2^(attempts-1), capped. */
  readonly retryBaseSeconds: number;
  readonly retryMaxSeconds: number;
}

/** Kept: on disk and scheduled. Superseded: a snapshot at least as new is kept already. */
export type Acceptance = "kept" | "superseded";

/**
 * Whether the kept snapshot is done with: applied, made obsolete, or refused (nothing a retry could change;
 * the reconciler re-sends). A missing namespace or a failed apply is retried.
 */
function isSettled(outcome: ApplyOutcome | undefined): boolean {
  if (outcome === undefined) return false;
  switch (outcome.kind) {
    case "applied":
    case "stale":
    case "duplicate":
    case "refused":
      return true;
    case "namespace-missing":
      return false;
  }
}

export class Intake {
  private readonly slots: LimitFunction;
  private readonly running = new Map<string, Promise<void>>();
  /** Routers whose kept snapshot changed while they were being applied: applied again right after. */
  private readonly again = new Set<string>();
  private readonly retries = new Map<string, { attempts: number; timer?: NodeJS.Timeout }>();
  private stopped = false;

  constructor(private readonly options: IntakeOptions) {
    this.slots = pLimit(Math.max(1, options.applyConcurrency));
  }

  /** Keeps a verified snapshot durably (resolves once on disk) and schedules it; its message may go then. */
  async accept(snapshot: RouterSyncMessage): Promise<Acceptance> {
    const { state } = this.options;
    const kept = state.pending(snapshot.router_id);
    if (kept && kept.revision >= snapshot.revision) return "superseded";
    await state.setPending(snapshot);
    // A new snapshot is worth trying at once, whatever the last one's retry delay was.
    this.clearRetry(snapshot.router_id);
    this.schedule(snapshot.router_id);
    return "kept";
  }

  /** Schedules every snapshot kept and not applied (a restart's unfinished work). */
  resume(): number {
    const routers = this.options.state.pendingRouters();
    for (const routerId of routers) this.schedule(routerId);
    return routers.length;
  }

  /** Resolves once nothing is being applied (retries waiting on their delay do not count). */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.all([...this.running.values()]);
  }

  /** Starts nothing new; resolves once the applies in flight are done. What is kept stays for a restart. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const routerId of [...this.retries.keys()]) this.clearRetry(routerId);
    await this.idle();
  }

  private schedule(routerId: string): void {
    if (this.stopped) return;
    if (this.running.has(routerId)) {
      this.again.add(routerId);
      return;
    }
    const run = this.slots(() => this.applyKept(routerId))
      .catch((error: unknown) => {
        this.options.logger.error({ router_id: routerId, err: error }, "applying a kept snapshot failed");
      })
      .finally(() => {
        this.running.delete(routerId);
        if (this.again.delete(routerId)) this.schedule(routerId);
      });
    this.running.set(routerId, run);
  }

  private async applyKept(routerId: string): Promise<void> {
    const { core, state, logger } = this.options;
    const snapshot = state.pending(routerId);
    // Stopping: what waited for a slot stays kept, for the next start.
    if (!snapshot || this.stopped) return;
    this.again.delete(routerId);
    let outcome: ApplyOutcome | undefined;
    try {
      outcome = await core.apply(snapshot);
    } catch (error) {
      // The core logged and counted an ApplyFailedError; anything else is a bug worth its own line.
      if (!(error instanceof ApplyFailedError)) logger.error({ err: error }, "unexpected apply error");
    }
    if (isSettled(outcome)) {
      this.retries.delete(routerId);
      await state.clearPending(snapshot);
    } else if (state.pending(routerId) === snapshot) this.retryLater(routerId, snapshot);
  }

  private retryLater(routerId: string, snapshot: RouterSyncMessage): void {
    if (this.stopped) return;
    const { retryBaseSeconds, retryMaxSeconds, logger } = this.options;
    const entry = this.retries.get(routerId) ?? { attempts: 0 };
    entry.attempts++;
    const seconds = Math.min(retryMaxSeconds, retryBaseSeconds * 2 ** Math.min(entry.attempts - 1, 16));
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      this.schedule(routerId);
    }, seconds * 1000);
    // A retry alone must not keep the process up (stop() clears it anyway).
    entry.timer.unref();
    this.retries.set(routerId, entry);
    logger.info(
      { router_id: routerId, revision: snapshot.revision, attempts: entry.attempts, retry_seconds: seconds },
      "snapshot kept, retrying later",
    );
  }

  private clearRetry(routerId: string): void {
    const entry = this.retries.get(routerId);
    if (entry?.timer) clearTimeout(entry.timer);
    this.retries.delete(routerId);
  }
}
