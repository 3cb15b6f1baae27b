/**
 * Every side effect sits behind one of these small interfaces. Adapters live in lib/aws (DynamoDB, SQS),
 * agent/ (iptables) and test/support (stateful in-memory fakes with their own contract tests).
 */
import type { ApplyError, HelperRule, RouterSyncMessage, StatusMessage } from "./schemas/index.ts";

/** A helper as stored on its router; `project_id` is the owner's project, kept for audit. */
export type StoredHelper = HelperRule;

/**
 * One item per router: the unit of consistency. A notification that names several routers commits them in
 * one transaction where the backend has them (RoutersStore.putAll), with compensation where it has not.
 */
export interface RouterRecord {
  readonly routerId: string;
  readonly projectId: string;
  readonly host: string;
  /** Desired-state revision: +1 on every change, the condition of every write. */
  readonly revision: number;
  readonly helpers: readonly StoredHelper[];
  /** Highest revision an agent has reported applied (0 = never). */
  readonly appliedRevision: number;
  readonly appliedAt?: string | undefined;
  readonly appliedHost?: string | undefined;
  readonly appliedErrors?: readonly ApplyError[] | undefined;
  readonly updatedAt: string;
}

/** One conditional write of a multi-router commit. */
export interface RouterWrite {
  readonly next: RouterRecord;
  /** As in put: the revision the writer read, undefined for a create. */
  readonly expectedRevision: number | undefined;
}

export interface RoutersStore {
  /** Strongly consistent read. */
  get(routerId: string): Promise<RouterRecord | undefined>;
  /** Strongly consistent reads of several routers; missing ids are absent from the map. */
  getMany(routerIds: readonly string[]): Promise<Map<string, RouterRecord>>;
  /**
   * Writes `next` only if the stored revision still equals `expectedRevision` (undefined: a create, which needs
   * no live router of that id and, over a tombstone, a revision at least the tombstone's).
   * Throws RevisionConflictError when someone else wrote first.
   */
  put(next: RouterRecord, expectedRevision: number | undefined): Promise<void>;
  /**
   * Every write or none, in one transaction, each conditional like put; RevisionConflictError when any
   * condition fails (nothing is written then). Undefined where the backend has no transactions (dynalite).
   */
  readonly putAll?: ((writes: readonly RouterWrite[]) => Promise<void>) | undefined;
  /**
   * Deletes only if the stored revision equals `expectedRevision` (RevisionConflictError otherwise), leaving a
   * tombstone at `expectedRevision + 1`, the revision of the empty snapshot that removed the router's rules.
   * A tombstone reads as absent everywhere; it only makes a re-created router continue above it (agents
   * drop any revision not newer than the last they applied).
   */
  delete(routerId: string, expectedRevision: number, deletedAt: string): Promise<void>;
  /** The highest revision this id was ever given, live or deleted; 0 for an id never seen. */
  lastRevision(routerId: string): Promise<number>;
  /**
   * Raises the applied revision monotonically (never lowers it, never touches desired state); a report at
   * the current applied revision refreshes `appliedAt`. Returns false when the router is unknown, carried by
   * another host, already past `revision`, or `revision` is beyond the desired one.
   */
  recordApplied(report: {
    routerId: string;
    revision: number;
    host: string;
    errors: readonly ApplyError[];
    at: string;
  }): Promise<boolean>;
  /** Every router a node carries. */
  listByHost(host: string): Promise<RouterRecord[]>;
  /** Every router (reconciler); adapters page through the table. */
  listAll(): AsyncIterable<RouterRecord>;
}

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
