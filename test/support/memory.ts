/**
 * Stateful in-memory fakes of the ports, for unit tests and benchmarks. test/integration/core-ports-contract
 * runs one shared spec against these and against the DynamoDB/SQS adapters on the emulators, so the fakes
 * cannot drift from the real adapters.
 */
import { BadRequestError, RevisionConflictError, ServiceUnavailableError } from "../../lib/errors.ts";
import type {
  CommandQueue,
  Draining,
  DrainingChange,
  ReplicaReport,
  RouterListQuery,
  RouterPage,
  RouterRecord,
  RoutersStore,
  SendOptions,
  Tombstone,
} from "../../lib/ports.ts";
import { applyDrainingChange, bindingOf, inSync, isTombstone, settled } from "../../lib/ports.ts";
import type { RouterSyncMessage } from "../../lib/schemas/index.ts";

const clone = <T>(value: T): T => structuredClone(value);

/** The fake's page position: the last router id of the previous page, as base64url JSON. */
function memoryPosition(after: string): string {
  try {
    const { r } = JSON.parse(Buffer.from(after, "base64url").toString("utf8")) as { r?: unknown };
    if (typeof r === "string" && r.length > 0) return r;
  } catch {
    // Not JSON: the same error as any other malformed position.
  }
  throw new BadRequestError("invalid cursor");
}

export class MemoryRoutersStore implements RoutersStore {
  private readonly rows = new Map<string, RouterRecord>();
  /** Deleted routers: what their tombstone keeps. */
  private readonly tombstones = new Map<string, Tombstone>();
  /**
   * The sparse out-of-sync index, kept as DynamoDB's adapter keeps it: every desired write and every
   * draining tombstone flags, only a status write (or clearOutOfSync) that settles the entry as read un-flags.
   */
  private readonly outOfSync = new Set<string>();
  /** Counts successful writes (puts, deletes, status updates): "nothing was written" assertions use it. */
  writes = 0;
  readonly putAll: RoutersStore["putAll"];

  /** `transactions: false` acts like dynalite (no putAll), so the domain's compensating path runs. */
  constructor(options: { transactions?: boolean } = {}) {
    this.putAll =
      options.transactions === false
        ? undefined
        : async (writes) => {
            // Check every condition first, then write: all or nothing, like TransactWriteItems.
            for (const { next, expectedRevision } of writes) this.check(next, expectedRevision);
            for (const { next } of writes) this.store(next);
          };
  }

  private check(next: RouterRecord, expectedRevision: number | undefined): void {
    const row = this.rows.get(next.routerId);
    const tombstone = this.tombstones.get(next.routerId);
    const ok =
      expectedRevision === undefined
        ? row === undefined && (tombstone === undefined || next.revision >= tombstone.revision)
        : row?.revision === expectedRevision;
    if (!ok) throw new RevisionConflictError(`router ${next.routerId} changed concurrently`);
  }

  async get(routerId: string): Promise<RouterRecord | undefined> {
    const row = this.rows.get(routerId);
    return row ? clone(row) : undefined;
  }

  async getMany(routerIds: readonly string[]): Promise<Map<string, RouterRecord>> {
    const found = new Map<string, RouterRecord>();
    for (const id of routerIds) {
      const row = this.rows.get(id);
      if (row) found.set(id, clone(row));
    }
    return found;
  }

  async tombstone(routerId: string): Promise<Tombstone | undefined> {
    const tombstone = this.tombstones.get(routerId);
    return tombstone ? clone(tombstone) : undefined;
  }

  async put(
    next: RouterRecord,
    expectedRevision: number | undefined,
    change?: DrainingChange,
  ): Promise<void> {
    this.check(next, expectedRevision);
    this.store(next, change);
  }

  private store(next: RouterRecord, change?: DrainingChange): void {
    const row = this.rows.get(next.routerId);
    // Like DynamoDB's adapter: a change writes only the draining keys it names, a create the whole map.
    const draining = row
      ? applyDrainingChange(row.draining, change ?? { add: {}, remove: [] })
      : next.draining;
    // Like DynamoDB's adapter: a change of an existing router keeps the stored replica status of the hosts
    // it is still bound to, and drops the rest.
    const replicas = row
      ? Object.fromEntries(Object.entries(row.replicas).filter(([host]) => bindingOf(next, host)))
      : next.replicas;
    this.rows.set(next.routerId, clone({ ...next, replicas, draining }));
    this.tombstones.delete(next.routerId);
    // A new revision is never confirmed yet.
    this.outOfSync.add(next.routerId);
    this.writes++;
  }

  async delete(
    routerId: string,
    expectedRevision: number,
    _deletedAt: string,
    draining: Draining,
  ): Promise<void> {
    if (this.rows.get(routerId)?.revision !== expectedRevision) {
      throw new RevisionConflictError(`router ${routerId} changed concurrently`);
    }
    this.rows.delete(routerId);
    this.tombstones.set(routerId, {
      deleted: true,
      routerId,
      revision: expectedRevision + 1,
      draining: clone(draining),
    });
    if (Object.keys(draining).length > 0) this.outOfSync.add(routerId);
    else this.outOfSync.delete(routerId);
    this.writes++;
  }

  async recordReplica(report: ReplicaReport): Promise<boolean> {
    const row = this.rows.get(report.routerId);
    if (!row) return false;
    const stored = row.replicas[report.host];
    if (stored && stored.revision > report.status.revision) return false;
    const { basis } = report;
    const settles =
      basis !== undefined &&
      settled({ ...basis, replicas: { ...basis.replicas, [report.host]: report.status } }) &&
      this.stillAsRead(row, basis, [report.host]);
    this.rows.set(report.routerId, {
      ...row,
      replicas: { ...row.replicas, [report.host]: clone(report.status) },
    });
    if (settles) this.outOfSync.delete(report.routerId);
    else if (basis) this.outOfSync.add(report.routerId);
    this.writes++;
    return true;
  }

  /** DynamoDB's un-flagging condition: same revision, nothing draining, the bound hosts' replicas as read. */
  private stillAsRead(
    current: RouterRecord | Tombstone,
    read: RouterRecord | Tombstone,
    skipHosts: readonly string[] = [],
  ): boolean {
    if (current.revision !== read.revision || isTombstone(current) !== isTombstone(read)) return false;
    if (Object.keys(current.draining).some((host) => !skipHosts.includes(host))) return false;
    if (isTombstone(current) || isTombstone(read)) return true;
    return read.bindings.every(({ host }) => {
      if (skipHosts.includes(host)) return true;
      const now = current.replicas[host];
      const then = read.replicas[host];
      return now?.revision === then?.revision && now?.content === then?.content;
    });
  }

  async confirmDrained(
    routerId: string,
    host: string,
    revision: number,
    basis?: RouterRecord | Tombstone,
  ): Promise<boolean> {
    const entry = this.rows.get(routerId) ?? this.tombstones.get(routerId);
    const asked = entry?.draining[host];
    if (!entry || asked === undefined || asked > revision) return false;
    const draining = { ...entry.draining };
    delete draining[host];
    const settles =
      basis !== undefined &&
      settled({
        ...basis,
        draining: Object.fromEntries(Object.entries(basis.draining).filter(([h]) => h !== host)),
      }) &&
      this.stillAsRead(entry, basis, [host]);
    if (this.rows.has(routerId)) this.rows.set(routerId, { ...(entry as RouterRecord), draining });
    else this.tombstones.set(routerId, { ...(entry as Tombstone), draining });
    if (settles) this.outOfSync.delete(routerId);
    this.writes++;
    return true;
  }

  async *listOutOfSync(): AsyncIterable<RouterRecord | Tombstone> {
    for (const id of [...this.outOfSync].sort()) {
      const entry = this.rows.get(id) ?? this.tombstones.get(id);
      if (entry) yield clone(entry);
    }
  }

  async clearOutOfSync(entry: RouterRecord | Tombstone): Promise<boolean> {
    const current = this.rows.get(entry.routerId) ?? this.tombstones.get(entry.routerId);
    if (!current || !this.outOfSync.has(entry.routerId) || !settled(entry)) return false;
    if (!this.stillAsRead(current, entry)) return false;
    this.outOfSync.delete(entry.routerId);
    this.writes++;
    return true;
  }

  /** Test helper: whether the entry is in the out-of-sync index. */
  flagged(routerId: string): boolean {
    return this.outOfSync.has(routerId);
  }

  async listByHost(host: string): Promise<RouterRecord[]> {
    return [...this.rows.values()].filter((row) => bindingOf(row, host)).map(clone);
  }

  async listPage(query: RouterListQuery): Promise<RouterPage> {
    const after = query.after === undefined ? undefined : memoryPosition(query.after);
    const matching = [...this.rows.values()]
      .filter(
        (row) =>
          (after === undefined || row.routerId > after) &&
          (query.projectId === undefined || row.projectId === query.projectId) &&
          (query.host === undefined || bindingOf(row, query.host)) &&
          (!query.outOfSyncOnly || (this.outOfSync.has(row.routerId) && !inSync(row))),
      )
      .sort((a, b) => (a.routerId < b.routerId ? -1 : 1));
    const records = matching.slice(0, query.limit).map(clone);
    const last = records.at(-1);
    return matching.length > query.limit && last
      ? { records, next: Buffer.from(JSON.stringify({ r: last.routerId })).toString("base64url") }
      : { records };
  }

  async *listAll(): AsyncIterable<RouterRecord | Tombstone> {
    for (const row of [...this.rows.values()]) yield clone(row);
    for (const tombstone of [...this.tombstones.values()]) {
      if (Object.keys(tombstone.draining).length > 0) yield clone(tombstone);
    }
  }

  /** Test helper: the number of stored routers. */
  size(): number {
    return this.rows.size;
  }
}

export class MemoryCommandQueue implements CommandQueue {
  private readonly byHost = new Map<string, RouterSyncMessage[]>();
  private readonly seenDedup = new Set<string>();
  /** Hosts whose sends fail (simulates a queue outage after retries). */
  readonly failingHosts = new Set<string>();

  async send(host: string, commands: readonly RouterSyncMessage[], options: SendOptions = {}): Promise<void> {
    if (this.failingHosts.has(host))
      throw new ServiceUnavailableError(`could not queue snapshots for node ${host}`);
    const list = this.byHost.get(host) ?? [];
    for (const command of commands) {
      // FIFO deduplication as SQS does it (router id + revision).
      const dedup = `${host}/${command.router_id}-${command.revision}/${options.resendScope ?? ""}`;
      if (this.seenDedup.has(dedup)) continue;
      this.seenDedup.add(dedup);
      list.push(clone(command));
    }
    this.byHost.set(host, list);
  }

  messages(host: string): RouterSyncMessage[] {
    return [...(this.byHost.get(host) ?? [])];
  }

  all(): RouterSyncMessage[] {
    return [...this.byHost.values()].flat();
  }
}
