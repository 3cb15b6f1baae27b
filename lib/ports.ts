/**
 * Every side effect sits behind one of these small interfaces. Adapters live in lib/aws (DynamoDB, SQS),
 * agent/ (iptables) and test/support (stateful in-memory fakes with their own contract tests).
 */
import type {
  ApplyError,
  HelperRule,
  NamespaceKind,
  RouterSyncMessage,
  StatusMessage,
} from "./schemas/index.ts";

/** A helper as stored on its router; `project_id` is the owner's project, kept for audit. */
export type StoredHelper = HelperRule;

/**
 * What one host last reported applied for a router. The host is the queue the report came in on, never a
 * field of the report; `content` compares the report's digest of the read-back with the desired set.
 */
export interface ReplicaStatus {
  /** Highest revision this host reported applied. */
  readonly revision: number;
  readonly at: string;
  readonly errors: readonly ApplyError[];
  /**
   * At `revision`: "match" (the kernel holds exactly the desired set), "partial" (it holds the desired set less
   * the helpers the report names as unavailable in that kernel), "mismatch" (anything else: content_mismatch).
   * "behind" when the report was for an older revision than the desired one at the time.
   */
  readonly content: ReplicaContent;
}

export type ReplicaContent = "match" | "partial" | "mismatch" | "behind";

/**
 * One host a router lives on, and the kind of namespace it lives in there: an L3 HA router has one per
 * replica (`qrouter`), a DVR router its SNAT node(s) (`snat`).
 */
export interface Binding {
  readonly host: string;
  readonly namespace: NamespaceKind;
}

/** Hosts that may still hold a router's rules, each with the revision of the empty snapshot it must confirm. */
export type Draining = Readonly<Record<string, number>>;

/**
 * One item per router: the unit of consistency. A notification that names several routers commits them in
 * one transaction where the backend has them (RoutersStore.putAll), with compensation where it has not.
 */
export interface RouterRecord {
  readonly routerId: string;
  readonly projectId: string;
  /** 1..MAX_BINDINGS hosts, unique, in the order they were registered; every change goes to each. */
  readonly bindings: readonly Binding[];
  /** Desired-state revision: +1 on every change, the condition of every write. */
  readonly revision: number;
  readonly helpers: readonly StoredHelper[];
  /** Applied status per reporting host (written only by the status path). */
  readonly replicas: Readonly<Record<string, ReplicaStatus>>;
  /** Hosts the router left (unbound, moved): re-sent an empty snapshot until each confirms it. */
  readonly draining: Draining;
  readonly updatedAt: string;
}

/** What a deleted router leaves (see RoutersStore.delete). */
export interface Tombstone {
  readonly deleted: true;
  readonly routerId: string;
  /** The revision of the empty snapshot that removed the router's rules. */
  readonly revision: number;
  /** Hosts that have not yet confirmed that empty snapshot (or an older move's). */
  readonly draining: Draining;
}

/**
 * How a change of an existing router changes `draining`: entries added (hosts it left) and hosts removed
 * (bound again). Only these keys are written, never the whole map: a drain confirmed between the writer's
 * read and its write must stay confirmed.
 */
export interface DrainingChange {
  readonly add: Draining;
  readonly remove: readonly string[];
}

/** `draining` after `change`: what every store writes, key by key, and what the writer then holds. */
export function applyDrainingChange(draining: Draining, change: DrainingChange): Draining {
  const kept = Object.entries(draining).filter(([host]) => !change.remove.includes(host));
  return { ...Object.fromEntries(kept), ...change.add };
}

/** One conditional write of a multi-router commit. */
export interface RouterWrite {
  readonly next: RouterRecord;
  /** As in put: the revision the writer read, undefined for a create. */
  readonly expectedRevision: number | undefined;
}

export interface ReplicaReport {
  readonly routerId: string;
  readonly host: string;
  /** Judged against the desired set at `status.revision` (a revision names one helper set, ever). */
  readonly status: ReplicaStatus;
  /**
   * The router as the caller read it when it judged `status`. Only with it may the write take the router out
   * of the out-of-sync index (when `status` settles it), and only while the router is still as read, and
   * put it back in (when it does not). The status path always passes it; without it (tests seeding a status)
   * the flag is left as it is.
   */
  readonly basis?: RouterRecord | undefined;
}

/**
 * One page of GET /v1/routers. Filters combine (AND). Pages hold live routers only, ordered by router id
 * within what the store reads (stable across pages).
 */
export interface RouterListQuery {
  /** Only this project's routers. */
  readonly projectId?: string | undefined;
  /** Only routers bound to this host. */
  readonly host?: string | undefined;
  /** Only routers not in sync, read through the sparse out-of-sync index: costs what is out of sync. */
  readonly outOfSyncOnly: boolean;
  /** 1..100: at most this many records in the page. */
  readonly limit: number;
  /** Opaque store position from a previous page's `next`; a malformed one is a BadRequestError. */
  readonly after?: string | undefined;
}

export interface RouterPage {
  /** May hold fewer than `limit` records (even none) while `next` is set. */
  readonly records: RouterRecord[];
  /** undefined: the end. */
  readonly next?: string | undefined;
}

export interface RoutersStore {
  /** Strongly consistent read. */
  get(routerId: string): Promise<RouterRecord | undefined>;
  /** Strongly consistent reads of several routers; missing ids are absent from the map. */
  getMany(routerIds: readonly string[]): Promise<Map<string, RouterRecord>>;
  /**
   * Writes `next` only if the stored revision still equals `expectedRevision` (undefined: a create, which needs
   * no live router of that id and, over a tombstone, a revision at least the tombstone's, and writes
   * `next.draining` whole). A change of an existing router writes its desired state, changes `draining` only
   * as `draining` says (untouched when absent), and never writes `replicas` but to drop unbound hosts' status.
   * Throws RevisionConflictError when someone else wrote first.
   */
  put(next: RouterRecord, expectedRevision: number | undefined, draining?: DrainingChange): Promise<void>;
  /**
   * Every write or none, in one transaction, each conditional like put; RevisionConflictError when any
   * condition fails (nothing is written then). Undefined where the backend has no transactions (dynalite).
   */
  readonly putAll?: ((writes: readonly RouterWrite[]) => Promise<void>) | undefined;
  /**
   * Deletes only if the stored revision equals `expectedRevision` (RevisionConflictError otherwise), leaving a
   * tombstone at `expectedRevision + 1` (the revision of the empty snapshot that removes the router's rules,
   * sent only after this commit) that keeps `draining`. A tombstone reads as absent to get/getMany/listByHost;
   * a re-created router continues above it (agents drop any revision not newer than the last they applied).
   */
  delete(routerId: string, expectedRevision: number, deletedAt: string, draining: Draining): Promise<void>;
  /** The tombstone of a deleted router, if this id was deleted and not registered again. */
  tombstone(routerId: string): Promise<Tombstone | undefined>;
  /**
   * Records a host's status on a live router unless that host's stored revision is above the report's (a report
   * at the same revision refreshes it). Touches nothing but `replicas` and the out-of-sync flag, so the status
   * role may write nothing else (IAM dynamodb:Attributes). The router leaves the out-of-sync index only when
   * `basis` with this status is settled and the router is still as `basis` (revision, the other bound hosts'
   * replicas, nothing draining); otherwise it stays in (a false "out of sync" only costs the reconciler a
   * look). Returns false for a deleted or unknown router or an older report.
   */
  recordReplica(report: ReplicaReport): Promise<boolean>;
  /**
   * A draining host confirmed an empty snapshot at `revision`: removes its entry if it asked for no more than
   * that (live router or tombstone). Takes the entry out of the out-of-sync index as recordReplica does when
   * `basis` (the entry as read) is settled without this host, and the entry is still as read. Returns false
   * when there was no such entry.
   */
  confirmDrained(
    routerId: string,
    host: string,
    revision: number,
    basis?: RouterRecord | Tombstone,
  ): Promise<boolean>;
  /**
   * Every entry of the sparse out-of-sync index, read consistently (reconciler): live routers not settled
   * (or flagged before their last status) and tombstones still draining. Costs what is out of sync.
   */
  listOutOfSync(): AsyncIterable<RouterRecord | Tombstone>;
  /**
   * The caller read `entry` from listOutOfSync and found it settled: takes it out of the index if it is still
   * as read (false otherwise, and it stays in). Heals the index's false positives.
   */
  clearOutOfSync(entry: RouterRecord | Tombstone): Promise<boolean>;
  /** One page of live routers (read consistently, so each matches the filters as returned). */
  listPage(query: RouterListQuery): Promise<RouterPage>;
  /** Every live router bound to a host (read consistently, so each is bound to it as returned). */
  listByHost(host: string): Promise<RouterRecord[]>;
  /** Every live router and every tombstone still draining: a full table read, for tools (the local stack). */
  listAll(): AsyncIterable<RouterRecord | Tombstone>;
}

/** The binding of `host`, if the router is bound to it. */
export const bindingOf = (record: Pick<RouterRecord, "bindings">, host: string): Binding | undefined =>
  record.bindings.find((binding) => binding.host === host);

/** Tells a tombstone from a live router in listAll's output. */
export const isTombstone = (entry: RouterRecord | Tombstone): entry is Tombstone => "deleted" in entry;

/** True only when `host` reported this very revision and its kernel holds exactly the desired set. */
export function replicaInSync(record: RouterRecord, host: string): boolean {
  const replica = record.replicas[host];
  return replica !== undefined && replica.revision >= record.revision && replica.content === "match";
}

/** True only when every host the router is bound to is in sync (hosts still draining do not count). */
export const inSync = (record: RouterRecord): boolean =>
  record.bindings.every((binding) => replicaInSync(record, binding.host));

/**
 * Nothing left to send: a live router in sync with no host left to drain, a tombstone every host confirmed.
 * Exactly the entries that stay out of the out-of-sync index; every store keeps all others in it.
 */
export const settled = (entry: RouterRecord | Tombstone): boolean =>
  Object.keys(entry.draining).length === 0 && (isTombstone(entry) || inSync(entry));

export interface CommandQueue {
  /**
   * Sends snapshots to `host`'s FIFO queue (group = router id, dedup = router id + revision).
   * Retries per-entry failures; throws ServiceUnavailableError when some still fail.
   * `resendScope` marks a deliberate re-send (resync, reconcile): it joins the deduplication id, so SQS's
   * 5-minute FIFO deduplication cannot swallow the very copy that is meant to heal a lost one.
   */
  send(host: string, commands: readonly RouterSyncMessage[], options?: SendOptions): Promise<void>;
}

export interface SendOptions {
  readonly resendScope?: string | undefined;
}

export interface StatusSink {
  send(message: StatusMessage): Promise<void>;
}

export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };
