/**
 * The agent's decisions, free of SQS and of firewall syntax: guard revisions, place a router's snapshot in
 * its namespace, have the firewall backend (agent/backend.ts) converge and verify it, record, report. One
 * transaction at a time per router (poll loop and drift timer share its lock); different routers proceed in
 * parallel.
 */
import { setTimeout } from "node:timers/promises";
import type { Logger } from "pino";
import { helperSetDigest } from "../lib/digest.ts";
import type { StatusSink } from "../lib/ports.ts";
import {
  type HelperRule,
  kindOrDefault,
  type NamespaceKind,
  namespaceKind,
  type RouterSyncMessage,
} from "../lib/schemas/index.ts";
import {
  ApplyFailedError,
  type BackendName,
  type FirewallBackend,
  NamespaceMissingError,
  type Verified,
} from "./backend.ts";
import type { AgentMetrics } from "./metrics.ts";
import type { RouterState, StateStore } from "./state.ts";

export type ApplyOutcome =
  | {
      readonly kind: "applied";
      readonly changed: boolean;
      readonly rules: { ipv4: number; ipv6: number };
      readonly errors: Verified["errors"];
    }
  /** revision < last applied: dropped. */
  | { readonly kind: "stale"; readonly appliedRevision: number }
  /** revision == last applied: dropped, the applied report is sent again (the first may have been lost). */
  | { readonly kind: "duplicate"; readonly appliedRevision: number }
  | { readonly kind: "namespace-missing"; readonly namespace: string }
  /**
   * Not applied and never will be under this configuration: nothing touched or recorded, a report with the
   * reason sent. The message is done with (the reconciler re-sends once the node is reconfigured).
   */
  | { readonly kind: "refused"; readonly reason: "namespace_unsupported" };

export interface AgentCoreOptions {
  readonly node: string;
  readonly backend: FirewallBackend;
  /**
   * The other backends that may have written to this node's namespaces (a switch of `--backend`): what they
   * own there is removed once the current backend has verified its own rules, so no rule stays doubled.
   */
  readonly formerBackends?: readonly FirewallBackend[];
  readonly state: StateStore;
  readonly status: StatusSink;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  /**
   * `{router_id}` is replaced by the router's (schema-validated) UUID, `{namespace}` by the snapshot's
   * namespace kind. A pattern without `{namespace}` names qrouter namespaces only.
   */
  readonly namespacePattern: string;
  readonly createNamespaces?: boolean;
}

/** What a namespace that is gone holds: nothing. */
const NOTHING: Verified = {
  changed: false,
  rules: { ipv4: 0, ipv6: 0 },
  errors: [],
  digest: helperSetDigest([]),
};

/** Who wrote a router's recorded rules: state written before nftables support was iptables'. */
const writerOf = (state: RouterState): BackendName => state.backend ?? "iptables";

export const DEFAULT_NAMESPACE_PATTERN = "{namespace}-{router_id}";

export function renderNamespace(pattern: string, routerId: string, kind: NamespaceKind): string {
  return pattern.replaceAll("{namespace}", kind).replaceAll("{router_id}", routerId);
}

/** The kinds a pattern can tell apart: without `{namespace}` only qrouter (the names before DVR support). */
export function namespaceKindsOf(pattern: string): readonly NamespaceKind[] {
  return pattern.includes("{namespace}") ? namespaceKind.options : ["qrouter"];
}

/** Within one batch only the newest revision per router matters; the rest are superseded. */
export function coalesce<T>(
  items: readonly T[],
  snapshotOf: (item: T) => RouterSyncMessage,
): { newest: T; superseded: T[] }[] {
  const byRouter = new Map<string, { newest: T; superseded: T[] }>();
  for (const item of items) {
    const snapshot = snapshotOf(item);
    const entry = byRouter.get(snapshot.router_id);
    if (!entry) byRouter.set(snapshot.router_id, { newest: item, superseded: [] });
    else if (snapshot.revision >= snapshotOf(entry.newest).revision) {
      entry.superseded.push(entry.newest);
      entry.newest = item;
    } else entry.superseded.push(item);
  }
  return [...byRouter.values()];
}

export class AgentCore {
  private readonly kinds: readonly NamespaceKind[];
  /** Tail of each router's queue of transactions (see exclusive). */
  private readonly locks = new Map<string, Promise<unknown>>();
  private drifting = false;
  /** Namespaces every former backend has been cleared from in this process (see checkDrift). */
  private readonly released = new Set<string>();

  constructor(private readonly options: AgentCoreOptions) {
    this.kinds = namespaceKindsOf(options.namespacePattern);
  }

  get backend(): FirewallBackend {
    return this.options.backend;
  }

  get state(): StateStore {
    return this.options.state;
  }

  /** The router's namespace of `kind` (absent: qrouter, as on the wire); throws for a kind it cannot name. */
  namespaceFor(routerId: string, kind: NamespaceKind = "qrouter"): string {
    if (!this.kinds.includes(kind)) {
      throw new Error(`--namespace-pattern ${this.options.namespacePattern} cannot name a ${kind} namespace`);
    }
    return renderNamespace(this.options.namespacePattern, routerId, kind);
  }

  /**
   * Serialises the transactions of one router (queue and drift timer alike). Routers live in separate
   * namespaces, so different routers proceed in parallel: one slow namespace does not hold up the node.
   */
  private exclusive<T>(routerId: string, work: () => Promise<T>): Promise<T> {
    const run = (this.locks.get(routerId) ?? Promise.resolve()).then(work, work);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(routerId, settled);
    void settled.then(() => {
      if (this.locks.get(routerId) === settled) this.locks.delete(routerId);
    });
    return run;
  }

  /** Resolves once every transaction in flight has finished. */
  async idle(): Promise<void> {
    while (this.locks.size > 0) await Promise.all([...this.locks.values()]);
  }

  /** Applies a validated snapshot unless a revision at least as new has been applied already. */
  apply(snapshot: RouterSyncMessage): Promise<ApplyOutcome> {
    return this.exclusive(snapshot.router_id, async () => {
      const last = this.options.state.get(snapshot.router_id);
      if (last && snapshot.revision < last.revision) {
        this.options.metrics.messages.inc({ outcome: "stale" });
        this.options.logger.info(
          { router_id: snapshot.router_id, revision: snapshot.revision, applied: last.revision },
          "stale snapshot ignored",
        );
        return { kind: "stale", appliedRevision: last.revision };
      }
      const kind = kindOrDefault(snapshot.namespace);
      if (!this.kinds.includes(kind)) return this.refuse(snapshot, kind);
      // What a host holds is named by revision and namespace kind together: the same revision for the other
      // kind (a router deleted and registered again on this host as snat, both empty at one revision) moves.
      // And by the backend that wrote it: after a switch of --backend the same revision is written anew (the
      // former backend's rules are released once the new ones are verified), not re-reported from nothing.
      const same = last && kindOrDefault(last.kind) === kind && writerOf(last) === this.options.backend.name;
      if (last && same && snapshot.revision === last.revision) {
        this.options.metrics.messages.inc({ outcome: "duplicate" });
        await this.report(snapshot.router_id, last);
        return { kind: "duplicate", appliedRevision: last.revision };
      }
      return this.converge(
        {
          routerId: snapshot.router_id,
          revision: snapshot.revision,
          helpers: snapshot.helpers,
          kind,
          ns: this.namespaceFor(snapshot.router_id, kind),
        },
        snapshot.correlation_id,
      );
    });
  }

  /**
   * A pattern without `{namespace}` renders a DVR router's snat namespace as its qrouter one: writing there
   * would put the rules in the wrong namespace, so the snapshot is refused and the control plane told why
   * (an error without helper_id: this replica is not in sync).
   */
  private async refuse(snapshot: RouterSyncMessage, kind: NamespaceKind): Promise<ApplyOutcome> {
    const { logger, metrics, namespacePattern } = this.options;
    const reason = "namespace_unsupported";
    metrics.messages.inc({ outcome: reason });
    const message =
      `--namespace-pattern "${namespacePattern}" has no {namespace} placeholder, so this agent cannot tell ` +
      `a DVR router's ${kind} namespace; set e.g. ${DEFAULT_NAMESPACE_PATTERN}`;
    logger.warn(
      {
        router_id: snapshot.router_id,
        revision: snapshot.revision,
        namespace_kind: kind,
        reason,
        correlation_id: snapshot.correlation_id,
      },
      message,
    );
    await this.sendReport(
      { routerId: snapshot.router_id, revision: snapshot.revision, kind },
      { ...NOTHING, errors: [{ code: reason, message }] },
    );
    return { kind: "refused", reason };
  }

  private async converge(target: Target, correlationId?: string): Promise<ApplyOutcome> {
    const { backend, logger, metrics, state } = this.options;
    const { routerId, revision, helpers, kind, ns } = target;
    const previous = state.get(routerId);
    let created = previous?.createdNamespace === true && previous.namespace === ns;
    const started = performance.now();
    logger.debug(
      {
        router_id: routerId,
        revision,
        namespace: ns,
        helpers: helpers.length,
        correlation_id: correlationId,
      },
      "applying",
    );
    try {
      let verified = NOTHING;
      let present = await backend.namespaceExists(ns);
      if (!present) {
        // A namespace that comes back is a new, empty one: what was last read back no longer holds.
        backend.forget(ns);
        // Nothing to remove from a namespace that is gone: the empty snapshot holds there already.
        if (helpers.length > 0) {
          if (!this.options.createNamespaces) return this.missing(routerId, revision, ns);
          await backend.createNamespace(ns);
          created = true;
          present = true;
          logger.info(
            { router_id: routerId, namespace: ns, correlation_id: correlationId },
            "namespace created",
          );
        }
      }
      if (present) {
        // What this backend last wrote here (state file), the guess for a namespace it has not read yet.
        const assumed =
          previous?.namespace === ns && writerOf(previous) === backend.name ? previous.helpers : [];
        verified = await backend.converge(ns, helpers, assumed);
        if (helpers.length === 0 && created) {
          await backend.deleteNamespace(ns);
          backend.forget(ns);
          created = false;
          logger.info(
            { router_id: routerId, namespace: ns, correlation_id: correlationId },
            "namespace this agent created removed",
          );
        }
      }
      // Only after the new rules are verified: a move that fails halfway leaves the old rules, never none.
      await this.vacate(target, previous);
      await state.set(routerId, {
        revision,
        helpers: [...helpers],
        namespace: ns,
        kind,
        appliedAt: new Date().toISOString(),
        createdNamespace: created || undefined,
        backend: backend.name,
      });
      return this.finish(target, started, verified, correlationId);
    } catch (error) {
      if (error instanceof NamespaceMissingError) {
        backend.forget(ns);
        return this.missing(routerId, revision, ns);
      }
      const failure =
        error instanceof ApplyFailedError
          ? error
          : new ApplyFailedError(error instanceof Error ? error.message : String(error), "other", {
              cause: error,
            });
      metrics.failures.inc({ reason: failure.reason });
      logger.error(
        { router_id: routerId, revision, namespace: ns, err: failure, correlation_id: correlationId },
        "apply failed",
      );
      throw failure;
    }
  }

  /**
   * Namespaces this router may have left on this host: the one the state file names if it is not `ns` (a
   * legacy router turned DVR, or back); with no state (lost, or a new router), the router's namespaces of
   * the other kinds, so an agent that forgot still leaves rules only where the control plane wants them.
   */
  private formerNamespaces(routerId: string, ns: string, previous: RouterState | undefined): string[] {
    if (previous) return previous.namespace === ns ? [] : [previous.namespace];
    return this.kinds.map((kind) => this.namespaceFor(routerId, kind)).filter((name) => name !== ns);
  }

  /**
   * Empties what this router left behind on this host: its former namespaces (our rules only; Neutron's are
   * never touched; one the agent created itself is removed), and in `ns` the rules another backend wrote
   * there before this one took over. A namespace that is gone holds nothing.
   */
  private async vacate(target: Target, previous: RouterState | undefined): Promise<void> {
    const { backend, logger } = this.options;
    const { routerId, ns } = target;
    if (previous && previous.namespace === ns && writerOf(previous) !== backend.name) {
      await this.releaseFormer(routerId, ns, writerOf(previous));
    }
    for (const former of this.formerNamespaces(routerId, ns, previous)) {
      try {
        if (!(await backend.namespaceExists(former))) {
          backend.forget(former);
          continue;
        }
        const writer = previous ? writerOf(previous) : backend.name;
        if (writer === backend.name) {
          const assumed = previous?.namespace === former ? previous.helpers : [];
          const emptied = await backend.converge(former, [], assumed);
          if (emptied.changed) {
            logger.info(
              { router_id: routerId, namespace: former, now: ns },
              "router moved: old rules removed",
            );
          }
        } else await this.releaseFormer(routerId, former, writer);
        if (previous?.namespace === former && previous.createdNamespace) {
          await backend.deleteNamespace(former);
          backend.forget(former);
          logger.info({ router_id: routerId, namespace: former }, "namespace this agent created removed");
        }
      } catch (error) {
        if (!(error instanceof NamespaceMissingError)) throw error;
        backend.forget(former);
      }
    }
  }

  /**
   * Removes from `ns` what the former backend `writer` owns there (a switch of `--backend`). False when that
   * failed: the drift check tries again on its next pass.
   */
  private async releaseFormer(routerId: string, ns: string, writer: BackendName): Promise<boolean> {
    let released = true;
    for (const former of this.options.formerBackends ?? []) {
      if (former.name !== writer) continue;
      const about = { router_id: routerId, namespace: ns, former_backend: writer };
      try {
        if (await former.release(ns)) this.options.logger.info(about, "rules of the former backend removed");
      } catch (error) {
        // Not this backend's failure (the former one's tool may not even be installed): the apply stands.
        this.options.logger.warn({ ...about, err: error }, "could not remove the former backend's rules");
        released = false;
      }
    }
    return released;
  }

  private missing(routerId: string, revision: number, ns: string): ApplyOutcome {
    this.options.metrics.namespaceMissing.inc();
    this.options.logger.warn({ router_id: routerId, revision, namespace: ns }, "router namespace missing");
    return { kind: "namespace-missing", namespace: ns };
  }

  private async finish(
    target: Target,
    started: number,
    verified: Verified,
    correlationId: string | undefined,
  ): Promise<ApplyOutcome> {
    const { metrics, logger } = this.options;
    const { routerId, revision, ns } = target;
    const { changed, rules, errors } = verified;
    const seconds = (performance.now() - started) / 1000;
    metrics.applies.inc({ result: changed ? "changed" : "unchanged" });
    metrics.applySeconds.observe(seconds);
    metrics.lastSuccess.set(Date.now() / 1000);
    logger.info(
      {
        router_id: routerId,
        revision,
        namespace: ns,
        changed,
        rules,
        errors: errors.length,
        seconds,
        correlation_id: correlationId,
      },
      changed ? "snapshot applied" : "snapshot already in place, nothing written",
    );
    await this.sendReport(target, verified);
    return { kind: "applied", changed, rules, errors };
  }

  /** Re-reports an applied revision: with the digest of the last read-back, or of a fresh one. */
  private async report(routerId: string, last: RouterState): Promise<void> {
    const found = await this.options.backend.describe(last.namespace, last.helpers);
    await this.sendReport({ routerId, revision: last.revision, kind: kindOrDefault(last.kind) }, found);
  }

  private async sendReport(
    about: { readonly routerId: string; readonly revision: number; readonly kind: NamespaceKind },
    verified: Verified,
  ): Promise<void> {
    const { routerId, revision, kind } = about;
    try {
      await this.options.status.send({
        v: 1,
        kind: "applied",
        router_id: routerId,
        revision,
        // Kept for readers of the queue; the status side takes the host from the queue itself.
        host: this.options.node,
        namespace: kind,
        digest: verified.digest,
        rules: verified.rules,
        errors: [...verified.errors],
      });
    } catch (error) {
      // The rules are in place; a lost report is healed by the reconciler's re-send (a duplicate re-reports).
      this.options.logger.warn({ router_id: routerId, revision, err: error }, "status report failed");
    }
  }

  /**
   * Compares every router's owned rules with its last applied snapshot and re-applies where someone changed
   * them out of band. The first pass of this process also clears each namespace of what a former backend
   * owns there (an agent whose state was lost when `--backend` changed). Returns the routers repaired.
   */
  async checkDrift(pace: DriftPace = {}): Promise<string[]> {
    // One drift pass at a time; a timer tick during a long pass is skipped, not queued.
    if (this.drifting) return [];
    this.drifting = true;
    const repaired: string[] = [];
    const { backend, logger, metrics, state } = this.options;
    const { spreadMs = 0, signal, sleep = abortableSleep } = pace;
    try {
      const routers = state.entries();
      // Spread evenly: a node of 1,000 namespaces is checked a few at a time, not in one burst of processes.
      const step = routers.length > 1 ? spreadMs / routers.length : 0;
      for (const [index, [routerId]] of routers.entries()) {
        if (signal?.aborted) break;
        if (index > 0 && step > 0) await sleep(step, signal);
        if (signal?.aborted) break;
        // The lock is taken per router, so snapshots from the queue are not held up by a whole pass.
        await this.exclusive(routerId, async () => {
          const last = state.get(routerId);
          if (!last) return;
          try {
            if (!(await backend.namespaceExists(last.namespace))) return;
            if (!this.released.has(last.namespace) && writerOf(last) === backend.name) {
              let all = true;
              for (const former of this.options.formerBackends ?? []) {
                all = (await this.releaseFormer(routerId, last.namespace, former.name)) && all;
              }
              // Marked only once every former backend let go: a failed release is retried next pass.
              if (all) this.released.add(last.namespace);
            }
            if (writerOf(last) === backend.name && (await backend.holds(last.namespace, last.helpers)))
              return;
            metrics.driftRepairs.inc();
            logger.warn({ router_id: routerId, namespace: last.namespace }, "drift found, re-applying");
            // Repaired where it was applied: only a new snapshot moves a router.
            await this.converge({
              routerId,
              revision: last.revision,
              helpers: last.helpers,
              kind: kindOrDefault(last.kind),
              ns: last.namespace,
            });
            repaired.push(routerId);
          } catch (error) {
            logger.error({ router_id: routerId, err: error }, "drift repair failed");
          }
        });
      }
    } finally {
      this.drifting = false;
    }
    return repaired;
  }
}

/** How a drift pass is paced: `spreadMs` spread evenly between its routers; stopped by `signal`. */
export interface DriftPace {
  readonly spreadMs?: number;
  readonly signal?: AbortSignal | undefined;
  /** Injected by tests; resolves early when `signal` aborts. */
  readonly sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

const abortableSleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  setTimeout(ms, undefined, { signal }).catch(() => undefined);

/** One router's snapshot, placed on this host. */
interface Target {
  readonly routerId: string;
  readonly revision: number;
  readonly helpers: readonly HelperRule[];
  readonly kind: NamespaceKind;
  readonly ns: string;
}
