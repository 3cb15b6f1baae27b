/**
 * What the cloud side does with the agents' reports, and the reconciler's sweep. Pure orchestration over
 * the ports: no Lambda types, no AWS types.
 *
 * A report is believed only as far as its sender can vouch: the host is the status queue it arrived on
 * (one per node, writable only by that node), and `in_sync` needs the report's digest of what the kernel
 * read-back found to equal the digest of the desired set at that revision.
 */
import { helperSetDigest } from "../digest.ts";
import type {
  Binding,
  Clock,
  CommandQueue,
  ReplicaContent,
  ReplicaStatus,
  RouterRecord,
  RoutersStore,
  Tombstone,
} from "../ports.ts";
import { bindingOf, isTombstone, settled } from "../ports.ts";
import {
  type AppliedReport,
  type ApplyError,
  kindOrDefault,
  type RouterSyncMessage,
} from "../schemas/index.ts";
import { buildEmptySnapshot, buildSnapshot } from "./snapshot.ts";

export interface ReportDeps {
  readonly store: RoutersStore;
  readonly queue: CommandQueue;
  readonly clock: Clock;
}

export type ReportOutcome =
  /** Recorded, and the kernel holds the desired set (or, "partial", all of it that the kernel can hold). */
  | "recorded"
  /** Recorded as a content mismatch: in_sync false, counted and alarmed, re-sent by the reconciler. */
  | "content-mismatch"
  /** A host the router left confirmed it holds nothing any more. */
  | "drained"
  | "unknown-router"
  /** The router is not bound to the sending host (or the body names another host): ignored and counted. */
  | "unbound-host"
  | "future-revision"
  | "older";

export const EMPTY_DIGEST = helperSetDigest([]);

/** The error entry a content mismatch adds to the replica's applied_errors. */
export const CONTENT_MISMATCH = "content_mismatch";

/**
 * How a report compares with what the binding wants: the namespace kind it applied in, and its digest with
 * the router's desired set. An error that names no helper (the agent could not place the router at all,
 * e.g. `namespace_unsupported`) means this replica holds no verified set.
 */
export function judgeContent(record: RouterRecord, binding: Binding, report: AppliedReport): ReplicaContent {
  if (report.revision < record.revision) return "behind";
  if (kindOrDefault(report.namespace) !== binding.namespace) return "mismatch";
  if (report.errors.some((error) => error.helper_id === undefined)) return "mismatch";
  if (report.digest === helperSetDigest(record.helpers)) return "match";
  // The kernel may lack a helper module: the agent leaves it out and names it. The rest must then be exact.
  const missing = new Set(report.errors.flatMap((error) => (error.helper_id ? [error.helper_id] : [])));
  if (missing.size > 0) {
    const available = record.helpers.filter((helper) => !missing.has(helper.id));
    if (report.digest === helperSetDigest(available)) return "partial";
  }
  return "mismatch";
}

function replicaStatus(report: AppliedReport, content: ReplicaContent, at: string): ReplicaStatus {
  const errors: ApplyError[] = [...report.errors];
  if (content === "mismatch") {
    errors.push({
      code: CONTENT_MISMATCH,
      message: "the rules read back from the kernel differ from the desired helper set at this revision",
    });
  }
  return { revision: report.revision, at, errors, content };
}

/** Attempts at recording when the desired state moves under a report (each a fresh read). */
const RECORD_ATTEMPTS = 3;

/**
 * Records a report from `host` (the queue it came in on, never the report's body).
 */
export async function recordAppliedReport(
  deps: ReportDeps,
  host: string,
  report: AppliedReport,
): Promise<ReportOutcome> {
  if (report.host !== undefined && report.host !== host) return "unbound-host";
  for (let attempt = 0; attempt < RECORD_ATTEMPTS; attempt++) {
    const record = await deps.store.get(report.router_id);
    const entry: RouterRecord | Tombstone | undefined =
      record ?? (await deps.store.tombstone(report.router_id));
    if (!entry) return "unknown-router";
    const binding = record && bindingOf(record, host);
    const asked = entry.draining[host];
    if (asked !== undefined && !binding) {
      if (report.revision < asked || report.digest !== EMPTY_DIGEST) return "older";
      const confirmed = await deps.store.confirmDrained(report.router_id, host, report.revision, entry);
      return confirmed ? "drained" : "older";
    }
    if (!record || !binding) return "unbound-host";
    if (report.revision > record.revision) return "future-revision";
    const content = judgeContent(record, binding, report);
    // The verdict holds whatever changes next: a revision names one helper set, ever, and in_sync compares
    // the replica's revision with the desired one.
    // `basis`: the store un-flags the router only if this very read, with this status, is settled.
    const recorded = await deps.store.recordReplica({
      routerId: record.routerId,
      host,
      status: replicaStatus(report, content, deps.clock.now().toISOString()),
      basis: record,
    });
    if (recorded) return content === "mismatch" ? "content-mismatch" : "recorded";
    // Older than what the host already reported, or the router was deleted meanwhile: look again.
    const stored = (await deps.store.get(report.router_id))?.replicas[host];
    if (!stored || stored.revision > report.revision) return "older";
  }
  return "older";
}

// Defined next to the ports: the stores keep the out-of-sync index by the same definition.
export { inSync, replicaInSync } from "../ports.ts";

/** The empty snapshots still owed to hosts the router left, each at the revision that host must confirm. */
export function drainSnapshots(
  entry: RouterRecord | Tombstone,
  correlationId: string,
  clock: Clock,
): Map<string, RouterSyncMessage[]> {
  const byHost = new Map<string, RouterSyncMessage[]>();
  for (const [host, revision] of Object.entries(entry.draining)) {
    if (!isTombstone(entry) && bindingOf(entry, host)) continue;
    byHost.set(host, [buildEmptySnapshot(entry.routerId, revision, correlationId, clock)]);
  }
  return byHost;
}

/** An agent (re)started: send the current snapshot of every router bound to its host, for that binding. */
export async function resyncHost(deps: ReportDeps, host: string, correlationId: string): Promise<number> {
  const snapshots = (await deps.store.listByHost(host)).flatMap((router) => {
    const binding = bindingOf(router, host);
    return binding ? [buildSnapshot(router, binding, correlationId, deps.clock)] : [];
  });
  if (snapshots.length > 0) await deps.queue.send(host, snapshots, { resendScope: correlationId });
  return snapshots.length;
}

export interface ReconcileOptions {
  readonly correlationId: string;
}

export interface ReconcileSummary {
  /** Entries of the out-of-sync index read (the sweep reads nothing else). */
  readonly checked: number;
  /** Of `checked`: found settled and taken out of the index (a report un-flags only what it saw settle). */
  readonly healed: number;
  readonly resent: number;
  /** Of `resent`: empty snapshots to hosts a router left or a deleted router's hosts, not yet confirmed. */
  readonly drains: number;
  readonly hosts: number;
  readonly failedHosts: readonly string[];
}

/**
 * Whether `host`'s replica of the router is behind or holds other content. A replica in sync is never
 * re-sent however long its agent has been silent: the sweep reads only the out-of-sync index, and a silent
 * agent either is down (it resyncs every router of its host when it starts) or is up and re-reads its
 * kernel on every drift check.
 */
export function needsResend(router: RouterRecord, host: string): boolean {
  const replica = router.replicas[host];
  // Registered but never given a helper: there is nothing an agent could have applied or could report.
  if (router.revision === 0 && !replica) return false;
  return !replica || replica.revision < router.revision || replica.content === "mismatch";
}

/**
 * Reads the sparse out-of-sync index, never the whole table: re-sends snapshots for replicas that are behind
 * or hold other content and empty snapshots owed to drained hosts, and takes the entries it finds settled
 * out of the index (conditionally: a report that lands meanwhile wins). One host's failure does not stop the
 * others.
 */
export async function reconcile(deps: ReportDeps, options: ReconcileOptions): Promise<ReconcileSummary> {
  const byHost = new Map<string, RouterSyncMessage[]>();
  const add = (host: string, snapshots: readonly RouterSyncMessage[]) => {
    const list = byHost.get(host) ?? [];
    list.push(...snapshots);
    byHost.set(host, list);
  };
  let checked = 0;
  let healed = 0;
  let drains = 0;
  for await (const entry of deps.store.listOutOfSync()) {
    checked++;
    if (settled(entry)) {
      if (await deps.store.clearOutOfSync(entry)) healed++;
      continue;
    }
    for (const [host, snapshots] of drainSnapshots(entry, options.correlationId, deps.clock)) {
      drains += snapshots.length;
      add(host, snapshots);
    }
    if (isTombstone(entry)) continue;
    // Per replica: the replicas that are in sync are left alone.
    for (const binding of entry.bindings) {
      if (!needsResend(entry, binding.host)) continue;
      add(binding.host, [buildSnapshot(entry, binding, options.correlationId, deps.clock)]);
    }
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
  return { checked, healed, resent, drains, hosts: byHost.size, failedHosts };
}
