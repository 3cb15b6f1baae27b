/**
 * What the cloud side does with the agents' reports, and the reconciler's sweep. Pure orchestration over
 * the ports: no Lambda types, no AWS types.
 */
import type { Clock, CommandQueue, RouterRecord, RoutersStore } from "../ports.ts";
import type { AppliedReport, RouterSyncMessage } from "../schemas/index.ts";
import { buildSnapshot } from "./snapshot.ts";

export interface ReportDeps {
  readonly store: RoutersStore;
  readonly queue: CommandQueue;
  readonly clock: Clock;
}

export type ReportOutcome = "recorded" | "unknown-router" | "wrong-host" | "future-revision" | "older";

/**
 * Records an agent's applied revision. A report is trusted only for routers its host carries and only up
 * to the desired revision: agent credentials can write to the shared status queue, so one node must not
 * be able to mark another node's routers as in sync.
 */
export async function recordAppliedReport(deps: ReportDeps, report: AppliedReport): Promise<ReportOutcome> {
  const record = await deps.store.get(report.router_id);
  if (!record) return "unknown-router";
  if (record.host !== report.host) return "wrong-host";
  if (report.revision > record.revision) return "future-revision";
  const raised = await deps.store.recordApplied({
    routerId: report.router_id,
    revision: report.revision,
    host: report.host,
    errors: report.errors,
    at: deps.clock.now().toISOString(),
  });
  return raised ? "recorded" : "older";
}

/** An agent (re)started: send the current snapshot of every router its host carries. */
export async function resyncHost(deps: ReportDeps, host: string, correlationId: string): Promise<number> {
  const routers = await deps.store.listByHost(host);
  // The GSI read may lag; re-read each router consistently so no stale revision goes out.
  const fresh = await deps.store.getMany(routers.map((router) => router.routerId));
  const snapshots = [...fresh.values()]
    .filter((router) => router.host === host)
    .map((router) => buildSnapshot(router, correlationId, deps.clock));
  if (snapshots.length > 0) await deps.queue.send(host, snapshots, { resendScope: correlationId });
  return snapshots.length;
}

export interface ReconcileOptions {
  /** A router whose last applied report is older than this is re-sent even when revisions match. */
  readonly staleAfterSeconds: number;
  readonly correlationId: string;
}

export interface ReconcileSummary {
  readonly checked: number;
  readonly resent: number;
  readonly hosts: number;
  readonly failedHosts: readonly string[];
}

export function needsResend(router: RouterRecord, now: Date, staleAfterSeconds: number): boolean {
  if (router.appliedRevision < router.revision) return true;
  // Registered but never given a helper: there is nothing an agent could have applied or could report.
  if (router.revision === 0) return false;
  if (!router.appliedAt) return true;
  return now.getTime() - Date.parse(router.appliedAt) > staleAfterSeconds * 1000;
}

/** Re-sends snapshots for routers that are behind or whose agent has been silent; one host's failure
 * does not stop the others. */
export async function reconcile(deps: ReportDeps, options: ReconcileOptions): Promise<ReconcileSummary> {
  const now = deps.clock.now();
  const byHost = new Map<string, RouterSyncMessage[]>();
  let checked = 0;
  for await (const router of deps.store.listAll()) {
    checked++;
    if (!needsResend(router, now, options.staleAfterSeconds)) continue;
    const list = byHost.get(router.host) ?? [];
    list.push(buildSnapshot(router, options.correlationId, deps.clock));
    byHost.set(router.host, list);
  }
  let resent = 0;
  const failedHosts: string[] = [];
  for (const [host, snapshots] of byHost) {
    try {
      await deps.queue.send(host, snapshots, { resendScope: options.correlationId });
      resent += snapshots.length;
    } catch {
      failedHosts.push(host);
    }
  }
  return { checked, resent, hosts: byHost.size, failedHosts };
}
