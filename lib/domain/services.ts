/**
 * The use cases behind the functions. Each loads, authorizes, computes the whole new state first, writes with
 * conditional writes (bounded, jittered retry on revision conflicts) and then enqueues level-triggered
 * snapshots. State is committed before the queue is touched: a queue failure is a clean 503 and a retry
 * (same Idempotency-Key) re-sends, because snapshots are sent even when nothing changed.
 */
import type { Limits } from "../config.ts";
import {
  BadRequestError,
  RevisionConflictError,
  routerNotFound,
  ServiceUnavailableError,
  ValidationError,
} from "../errors.ts";
import type {
  Binding,
  Clock,
  CommandQueue,
  DrainingChange,
  RouterListQuery,
  RouterRecord,
  RoutersStore,
  RouterWrite,
  Tombstone,
} from "../ports.ts";
import { applyDrainingChange, bindingOf } from "../ports.ts";
import type { Notification, RouterSyncMessage, RouterUpsert } from "../schemas/index.ts";
import {
  authorizeHelperProject,
  authorizeListing,
  authorizeRouter,
  isOperator,
  requireAdmin,
} from "./authorize.ts";
import { applyChanges, type HelperOp, type IndexedChange, revertOps } from "./changes.ts";
import { requireIfMatch, routerEtag } from "./etag.ts";
import type { Identity } from "./identity.ts";
import { drainSnapshots, inSync, replicaInSync } from "./reports.ts";
import { done, type RetryPolicy, retry, retrying } from "./retry.ts";
import { buildSnapshot, sortHelpers } from "./snapshot.ts";

export type { RetryPolicy } from "./retry.ts";

/**
 * Under N concurrent writers to one router each round has one winner, so a writer may lose up to N-1
 * times; 200 attempts with capped full jitter leaves ample room for the 50-way case the tests prove.
 */
export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 200, baseDelayMs: 2, maxDelayMs: 50 };

export interface DomainLogger {
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

export interface DomainDeps {
  readonly store: RoutersStore;
  readonly queue: CommandQueue;
  readonly clock: Clock;
  readonly limits: Limits;
  readonly retry?: RetryPolicy;
  readonly log?: DomainLogger;
  /** The nodes that have queues; a router bound to any other host is refused. Undefined: any host. */
  readonly nodes?: ReadonlySet<string> | undefined;
}

export interface SubmitResult {
  readonly routers: { router_id: string; revision: number }[];
}

export const COMMITTED_BUT_NOT_QUEUED =
  "the change is committed but its commands could not be queued; retrying the same request " +
  "with the same Idempotency-Key is safe and re-sends them";

/** Out of attempts: the 503 for a router whose every conditional write lost a race. */
function throwBusy(routerId: string): never {
  throw new ServiceUnavailableError(`router ${routerId} is changing too often right now; retry later`);
}

function groupByRouter(notification: Notification): Map<string, IndexedChange[]> {
  const groups = new Map<string, IndexedChange[]>();
  notification.conntrack_helpers.forEach((change, index) => {
    const group = groups.get(change.router_id) ?? [];
    group.push({ index, change });
    groups.set(change.router_id, group);
  });
  return groups;
}

/** Authorizes and computes one router's next state; throws the caller-facing error when it cannot. */
function plan(
  deps: DomainDeps,
  identity: Identity,
  notification: Notification,
  routerId: string,
  changes: readonly IndexedChange[],
  record: RouterRecord | undefined,
  ifMatch?: string,
) {
  const owned = authorizeRouter(identity, routerId, record);
  // After authorization: a foreign router is a 404, never a 412 that would carry its ETag.
  requireIfMatch(ifMatch, owned);
  for (const { index, change } of changes) authorizeHelperProject(identity, owned, change, index);
  const result = applyChanges(
    routerId,
    owned.helpers,
    notification.event,
    changes,
    deps.limits.maxHelpersPerRouter,
  );
  return { record: owned, ...result };
}

/** `record` one revision on, with `changes` applied: the next desired state a conditional write proposes. */
function nextRevision(
  deps: Pick<DomainDeps, "clock">,
  record: RouterRecord,
  changes: Partial<Pick<RouterRecord, "helpers" | "projectId" | "bindings" | "draining">>,
): RouterRecord {
  return { ...record, ...changes, revision: record.revision + 1, updatedAt: deps.clock.now().toISOString() };
}

interface Committed {
  readonly record: RouterRecord;
  readonly ops: readonly HelperOp[];
}

async function commitRouter(
  deps: DomainDeps,
  identity: Identity,
  notification: Notification,
  routerId: string,
  changes: readonly IndexedChange[],
  first: RouterRecord | undefined,
  ifMatch: string | undefined,
): Promise<Committed> {
  return retrying(
    deps.retry ?? DEFAULT_RETRY,
    async (attempt) => {
      const current = attempt === 0 ? first : await deps.store.get(routerId);
      // If-Match is checked against the very record the write is conditional on: a write that lands between
      // the check and the put fails the put, and the re-plan then answers 412.
      const planned = plan(deps, identity, notification, routerId, changes, current, ifMatch);
      if (planned.ops.length === 0) return done({ record: planned.record, ops: [] });
      const next = nextRevision(deps, planned.record, { helpers: planned.helpers });
      try {
        await deps.store.put(next, planned.record.revision);
        return done({ record: next, ops: planned.ops });
      } catch (error) {
        if (error instanceof RevisionConflictError) return retry;
        throw error;
      }
    },
    () => throwBusy(routerId),
  );
}

/** Best effort: reverts what this request wrote, never what later writers did. */
async function compensate(
  deps: DomainDeps,
  committed: readonly Committed[],
  correlationId: string,
): Promise<void> {
  for (const { record: written, ops } of [...committed].reverse()) {
    if (ops.length === 0) continue;
    await retrying(
      deps.retry ?? DEFAULT_RETRY,
      async () => {
        try {
          const current = await deps.store.get(written.routerId);
          if (!current) return done();
          const reverted = revertOps(current.helpers, ops);
          if (!reverted.changed) return done();
          const next = nextRevision(deps, current, { helpers: reverted.helpers });
          await deps.store.put(next, current.revision);
          // The agents never saw the undone revision; this snapshot brings them level (the reconciler would
          // too).
          await enqueueByHost(deps, routerSnapshots(next, correlationId, deps)).catch((error: unknown) =>
            deps.log?.warn("compensation snapshot not queued", {
              routerId: next.routerId,
              error: String(error),
            }),
          );
          return done();
        } catch (error) {
          if (error instanceof RevisionConflictError) return retry;
          deps.log?.error("compensation failed", { routerId: written.routerId, error: String(error) });
          return done();
        }
      },
      // Out of attempts: left as it is, like any other failure to compensate (best effort).
      () => undefined,
    );
  }
}

/** The router's snapshot for each of its bindings, keyed by host. */
function routerSnapshots(
  record: RouterRecord,
  correlationId: string,
  deps: Pick<DomainDeps, "clock">,
): Map<string, RouterSyncMessage[]> {
  return new Map(
    record.bindings.map((binding) => [
      binding.host,
      [buildSnapshot(record, binding, correlationId, deps.clock)],
    ]),
  );
}

/** Adds `more` to `byHost`, host by host. */
function mergeByHost(
  byHost: Map<string, RouterSyncMessage[]>,
  more: ReadonlyMap<string, readonly RouterSyncMessage[]>,
): Map<string, RouterSyncMessage[]> {
  for (const [host, snapshots] of more) byHost.set(host, [...(byHost.get(host) ?? []), ...snapshots]);
  return byHost;
}

async function enqueueByHost(
  deps: DomainDeps,
  byHost: Map<string, RouterSyncMessage[]>,
  resendScope?: string,
): Promise<void> {
  try {
    await Promise.all(
      [...byHost].map(([host, commands]) =>
        deps.queue.send(host, commands, resendScope ? { resendScope } : {}),
      ),
    );
  } catch (error) {
    deps.log?.error("snapshots not queued after retries", { error: String(error) });
    throw new ServiceUnavailableError(COMMITTED_BUT_NOT_QUEUED, undefined, { cause: error });
  }
}

/** Where the store has transactions: every touched router in one conditional commit, re-planned on a race. */
async function commitAtomically(
  deps: DomainDeps,
  putAll: NonNullable<RoutersStore["putAll"]>,
  identity: Identity,
  notification: Notification,
  groups: Map<string, IndexedChange[]>,
  first: Map<string, RouterRecord>,
): Promise<Committed[]> {
  return retrying(
    deps.retry ?? DEFAULT_RETRY,
    async (attempt) => {
      const records = attempt === 0 ? first : await deps.store.getMany([...groups.keys()]);
      const committed: Committed[] = [];
      const writes: RouterWrite[] = [];
      for (const [routerId, changes] of groups) {
        const planned = plan(deps, identity, notification, routerId, changes, records.get(routerId));
        if (planned.ops.length === 0) {
          committed.push({ record: planned.record, ops: [] });
          continue;
        }
        const next = nextRevision(deps, planned.record, { helpers: planned.helpers });
        writes.push({ next, expectedRevision: planned.record.revision });
        committed.push({ record: next, ops: planned.ops });
      }
      try {
        await putAll(writes);
        return done(committed);
      } catch (error) {
        if (error instanceof RevisionConflictError) return retry;
        throw error;
      }
    },
    () => throwBusy([...groups.keys()].join(", ")),
  );
}

/** Without transactions: router by router, undoing what this request wrote when a later router fails. */
async function commitInTurn(
  deps: DomainDeps,
  identity: Identity,
  notification: Notification,
  groups: Map<string, IndexedChange[]>,
  records: Map<string, RouterRecord>,
  correlationId: string,
  ifMatch: string | undefined,
): Promise<Committed[]> {
  // Every router is validated against the state read before the first write. (A single router's commit
  // plans before its only write anyway; a transaction plans every router before its one write.)
  if (groups.size > 1) {
    for (const [routerId, changes] of groups) {
      plan(deps, identity, notification, routerId, changes, records.get(routerId));
    }
  }
  const committed: Committed[] = [];
  for (const [routerId, changes] of groups) {
    try {
      committed.push(
        await commitRouter(deps, identity, notification, routerId, changes, records.get(routerId), ifMatch),
      );
    } catch (error) {
      await compensate(deps, committed, correlationId);
      throw error;
    }
  }
  return committed;
}

/** Conditions of a write: If-Match's value (lib/domain/etag.ts), when the request had one. */
export interface WriteConditions {
  readonly ifMatch?: string | undefined;
}

/**
 * Applies a notification whole or not at all across every router it names, then queues one snapshot per
 * touched router (grouped per node). If-Match names one router's state, so it needs a notification of one.
 */
export async function submitNotification(
  deps: DomainDeps,
  identity: Identity,
  notification: Notification,
  correlationId: string,
  conditions: WriteConditions = {},
): Promise<SubmitResult> {
  const groups = groupByRouter(notification);
  if (conditions.ifMatch !== undefined && groups.size > 1) {
    throw new BadRequestError("If-Match applies only to a notification that names exactly one router");
  }
  const records = await deps.store.getMany([...groups.keys()]);
  const committed =
    groups.size > 1 && deps.store.putAll
      ? await commitAtomically(deps, deps.store.putAll, identity, notification, groups, records)
      : await commitInTurn(deps, identity, notification, groups, records, correlationId, conditions.ifMatch);
  const byHost = new Map<string, RouterSyncMessage[]>();
  for (const { record } of committed) mergeByHost(byHost, routerSnapshots(record, correlationId, deps));
  await enqueueByHost(deps, byHost);
  return {
    routers: committed.map(({ record }) => ({ router_id: record.routerId, revision: record.revision })),
  };
}

export interface RouterView {
  readonly router_id: string;
  readonly project_id: string;
  /** The first binding's host, for clients of the single-host form (operators only). */
  readonly host?: string;
  /** Hosts for operators only: node names are infrastructure detail. */
  readonly bindings: { host?: string; namespace: Binding["namespace"] }[];
  readonly revision: number;
  /** On reads (GET, listing): every bound host confirmed the desired state, none is draining. */
  readonly in_sync?: boolean;
}

/** A router as `operator`s (admin, service) or members see it; reads add in_sync. */
function view(record: RouterRecord, operator = true, withSync = false): RouterView {
  return {
    router_id: record.routerId,
    project_id: record.projectId,
    ...(operator ? { host: record.bindings[0]!.host } : {}),
    bindings: record.bindings.map(({ host, namespace }) => (operator ? { host, namespace } : { namespace })),
    revision: record.revision,
    ...(withSync ? { in_sync: inSync(record) } : {}),
  };
}

/** A read's answer and the ETag of the router's state it was read from. */
export interface Tagged<T> {
  readonly body: T;
  readonly etag: string;
}

/** GET /v1/routers/{id}: unknown and foreign routers are the same 404. */
export async function readRouter(
  deps: Pick<DomainDeps, "store">,
  identity: Identity,
  routerId: string,
): Promise<Tagged<RouterView>> {
  const record = authorizeRouter(identity, routerId, await deps.store.get(routerId));
  return { body: view(record, isOperator(identity), true), etag: routerEtag(record) };
}

export interface RouterListing {
  readonly projectId?: string | undefined;
  readonly host?: string | undefined;
  readonly outOfSyncOnly: boolean;
  readonly limit: number;
  /** The store's position after the previous page (RouterPage.next), as the cursor carried it. */
  readonly after?: string | undefined;
}

export interface RouterListPage {
  readonly routers: RouterView[];
  /** undefined: this was the last page. */
  readonly next?: string | undefined;
}

/** GET /v1/routers: one page, filtered as authorizeListing allows. */
export async function listRouters(
  deps: Pick<DomainDeps, "store">,
  identity: Identity,
  listing: RouterListing,
): Promise<RouterListPage> {
  const allowed = authorizeListing(identity, listing);
  if (!allowed) return { routers: [] };
  const operator = isOperator(identity);
  const query: RouterListQuery = {
    outOfSyncOnly: listing.outOfSyncOnly,
    limit: listing.limit,
    ...(allowed.projectId !== undefined ? { projectId: allowed.projectId } : {}),
    ...(allowed.host !== undefined ? { host: allowed.host } : {}),
    ...(listing.after !== undefined ? { after: listing.after } : {}),
  };
  const page = await deps.store.listPage(query);
  return {
    // Held to the caller's project again here, whatever the store answered.
    routers: page.records
      .filter((record) => operator || record.projectId === identity.projectId)
      .map((record) => view(record, operator, true)),
    ...(page.next !== undefined ? { next: page.next } : {}),
  };
}

const sameBindings = (a: readonly Binding[], b: readonly Binding[]): boolean =>
  a.length === b.length &&
  a.every((binding, index) => binding.host === b[index]!.host && binding.namespace === b[index]!.namespace);

/**
 * The full set for every bound host, and the empty set owed to every host the router left that has not yet
 * confirmed it (draining: kept in the table, re-sent by the reconciler until confirmed).
 */
function placementSnapshots(
  after: RouterRecord,
  correlationId: string,
  deps: DomainDeps,
): Map<string, RouterSyncMessage[]> {
  return mergeByHost(
    drainSnapshots(after, correlationId, deps.clock),
    routerSnapshots(after, correlationId, deps),
  );
}

/** A host outside the deployed nodes has no queue: binding a router there could never deliver. */
function requireKnownNodes(nodes: ReadonlySet<string> | undefined, bindings: readonly Binding[]): void {
  if (!nodes) return;
  const unknown = bindings.flatMap((binding, index) =>
    nodes.has(binding.host)
      ? []
      : [
          {
            path: `bindings.${index}.host`,
            message: `"${binding.host}" is not a deployed node (CTH_NODES): it has no queue`,
          },
        ],
  );
  if (unknown.length > 0) throw new ValidationError("invalid router", unknown);
}

type Upserted = { created: boolean; router: RouterView; etag: string };

/**
 * PUT: creates a router or changes its bindings (admin). Every bound host gets the full set (a host added,
 * at once; a kind changed, into its new namespace, and the agent empties the old one); every host removed
 * gets the empty set until it confirms.
 */
export async function upsertRouter(
  deps: DomainDeps,
  identity: Identity,
  routerId: string,
  body: RouterUpsert,
  correlationId: string,
  conditions: WriteConditions = {},
): Promise<Upserted> {
  requireAdmin(identity);
  requireKnownNodes(deps.nodes, body.bindings);
  return retrying<Upserted>(
    deps.retry ?? DEFAULT_RETRY,
    async () => {
      const current = await deps.store.get(routerId);
      // Every write below is conditional on `current`'s revision (or its absence): a change between this
      // check and that write fails it, and the next attempt answers 412.
      requireIfMatch(conditions.ifMatch, current);
      const now = deps.clock.now().toISOString();
      try {
        if (!current) {
          // A new id starts at revision 0 with no helpers: nothing for an agent to apply yet. An id that was
          // deleted continues from its tombstone: agents drop revisions not newer than the last they applied,
          // and the deleted router's empty snapshot went out at that revision; hosts that have not confirmed
          // it yet stay draining.
          const tombstone = await deps.store.tombstone(routerId);
          const created: RouterRecord = {
            routerId,
            projectId: body.project_id,
            bindings: body.bindings,
            revision: tombstone?.revision ?? 0,
            helpers: [],
            replicas: {},
            // A router that comes back to a host owes that host no empty snapshot.
            draining: applyDrainingChange(tombstone?.draining ?? {}, {
              add: {},
              remove: body.bindings.map((binding) => binding.host),
            }),
            updatedAt: now,
          };
          await deps.store.put(created, undefined);
          // Tell the (maybe new) node the empty state at that revision, so its report brings the router in
          // sync. Its own deduplication scope: the deletion's empty snapshot carried the same router and
          // revision.
          if (created.revision > 0)
            await enqueueByHost(deps, placementSnapshots(created, correlationId, deps), correlationId);
          return done({ created: true, router: view(created), etag: routerEtag(created) });
        }
        const unchanged =
          current.projectId === body.project_id && sameBindings(current.bindings, body.bindings);
        let next = current;
        if (!unchanged) {
          // Every host unbound is left draining at the new revision: the empty snapshot it is sent (after the
          // commit) is re-sent until that host confirms it. A host bound again owes nothing.
          const change: DrainingChange = {
            add: Object.fromEntries(
              current.bindings
                .filter((binding) => !bindingOf(body, binding.host))
                .map((binding) => [binding.host, current.revision + 1]),
            ),
            remove: Object.keys(current.draining).filter((host) => bindingOf(body, host)),
          };
          next = nextRevision(deps, current, {
            projectId: body.project_id,
            bindings: body.bindings,
            draining: applyDrainingChange(current.draining, change),
          });
          await deps.store.put(next, current.revision, change);
        }
        // Nothing to send for a router that never had a revision; otherwise a retried PUT re-sends, so a
        // snapshot lost to a queue outage is not stranded.
        // An unchanged router's snapshots are re-sends: their own deduplication scope, or SQS could drop them
        // as copies of what a deletion or an earlier placement sent at the same revision.
        if (next.revision > 0)
          await enqueueByHost(
            deps,
            placementSnapshots(next, correlationId, deps),
            unchanged ? correlationId : undefined,
          );
        return done({ created: false, router: view(next), etag: routerEtag(next) });
      } catch (error) {
        if (error instanceof RevisionConflictError) return retry;
        throw error;
      }
    },
    () => throwBusy(routerId),
  );
}

/**
 * DELETE (admin): commits the tombstone first (conditional on the revision read), then sends the empty
 * snapshot at the tombstone's revision: no snapshot ever leaves for a revision that did not commit. The
 * router's host and every host still draining stay in the tombstone until each confirms; a retried DELETE of
 * a router whose hosts have not all confirmed re-sends their empty snapshots.
 */
export async function deleteRouter(
  deps: DomainDeps,
  identity: Identity,
  routerId: string,
  correlationId: string,
  conditions: WriteConditions = {},
): Promise<void> {
  requireAdmin(identity);
  await retrying(
    deps.retry ?? DEFAULT_RETRY,
    async () => {
      const current = await deps.store.get(routerId);
      // As in upsertRouter: checked against the revision the delete is conditional on.
      requireIfMatch(conditions.ifMatch, current);
      if (!current) {
        const tombstone = await deps.store.tombstone(routerId);
        if (!tombstone || Object.keys(tombstone.draining).length === 0) throw routerNotFound(routerId);
        await enqueueByHost(deps, drainSnapshots(tombstone, correlationId, deps.clock), correlationId);
        return done();
      }
      const tombstone: Tombstone = {
        deleted: true,
        routerId,
        revision: current.revision + 1,
        draining: {
          ...current.draining,
          ...Object.fromEntries(current.bindings.map((binding) => [binding.host, current.revision + 1])),
        },
      };
      try {
        await deps.store.delete(
          routerId,
          current.revision,
          deps.clock.now().toISOString(),
          tombstone.draining,
        );
      } catch (error) {
        if (error instanceof RevisionConflictError) return retry;
        throw error;
      }
      await enqueueByHost(deps, drainSnapshots(tombstone, correlationId, deps.clock));
      return done();
    },
    () => throwBusy(routerId),
  );
}

export interface ReplicaView {
  readonly host?: string;
  readonly namespace: Binding["namespace"];
  readonly applied_revision: number;
  readonly in_sync: boolean;
  readonly applied_at?: string;
  readonly applied_errors: { helper_id?: string | undefined; code: string; message: string }[];
}

export interface RouterState {
  readonly router_id: string;
  /** The first binding's host (operators only), as before bindings. */
  readonly host?: string;
  readonly revision: number;
  /** Of the least advanced replica, the one holding `in_sync` back (a single-host router reads as before). */
  readonly applied_revision: number;
  readonly in_sync: boolean;
  readonly helpers: { id: string; protocol: "tcp" | "udp"; port: number; helper: string }[];
  readonly applied_errors: { helper_id?: string | undefined; code: string; message: string }[];
  readonly applied_at?: string;
  /** One per binding, in binding order. */
  readonly replicas: ReplicaView[];
  /** Hosts the router left that have not yet confirmed their empty snapshot. */
  readonly draining: { host?: string; revision: number }[];
}

/** GET: desired and applied state; ownership-checked like every other path (seed finding 6). */
export async function readRouterState(
  deps: Pick<DomainDeps, "store">,
  identity: Identity,
  routerId: string,
): Promise<RouterState> {
  return (await readTaggedRouterState(deps, identity, routerId)).body;
}

/** readRouterState with the ETag of the router's desired state (lib/domain/etag.ts), for If-Match. */
export async function readTaggedRouterState(
  deps: Pick<DomainDeps, "store">,
  identity: Identity,
  routerId: string,
): Promise<Tagged<RouterState>> {
  const record = authorizeRouter(identity, routerId, await deps.store.get(routerId));
  return { body: routerStateOf(identity, record), etag: routerEtag(record) };
}

function routerStateOf(identity: Identity, record: RouterRecord): RouterState {
  // Node names are infrastructure detail: only operators and control planes see them.
  const operator = isOperator(identity);
  const replicas = record.bindings.map((binding): ReplicaView => {
    const replica = record.replicas[binding.host];
    return {
      ...(operator ? { host: binding.host } : {}),
      namespace: binding.namespace,
      applied_revision: replica?.revision ?? 0,
      in_sync: replicaInSync(record, binding.host),
      ...(replica ? { applied_at: replica.at } : {}),
      applied_errors: [...(replica?.errors ?? [])],
    };
  });
  // The first replica that is out of sync with the lowest revision; every replica in sync: the first.
  const laggard = replicas.reduce((worst, replica) =>
    (!replica.in_sync && worst.in_sync) ||
    (replica.in_sync === worst.in_sync && replica.applied_revision < worst.applied_revision)
      ? replica
      : worst,
  );
  return {
    router_id: record.routerId,
    ...(operator ? { host: record.bindings[0]!.host } : {}),
    revision: record.revision,
    applied_revision: laggard.applied_revision,
    in_sync: inSync(record),
    helpers: sortHelpers(record.helpers).map(({ id, protocol, port, helper }) => ({
      id,
      protocol,
      port,
      helper,
    })),
    applied_errors: laggard.applied_errors,
    ...(laggard.applied_at !== undefined ? { applied_at: laggard.applied_at } : {}),
    replicas,
    draining: Object.entries(record.draining)
      .filter(([host]) => !bindingOf(record, host))
      .map(([host, revision]) => ({ ...(operator ? { host } : {}), revision })),
  };
}
