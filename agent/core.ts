/**
 * The agent's decisions, free of SQS: guard revisions, render, apply one transaction per family, read back
 * and compare, record, report. One transaction at a time per router (poll loop and drift timer share its
 * lock); different routers proceed in parallel.
 */
import type { Logger } from "pino";
import type { Family, HelperCatalog } from "../lib/catalog.ts";
import { helperSetDigest } from "../lib/digest.ts";
import type { StatusSink } from "../lib/ports.ts";
import {
  expectedOwnedLines,
  FAMILIES,
  helperAtLine,
  isMissingHelperError,
  ownedLines,
  planFamily,
  readBackDigest,
  renderRestore,
  sameLines,
} from "../lib/render.ts";
import {
  type ApplyError,
  type HelperRule,
  kindOrDefault,
  type NamespaceKind,
  namespaceKind,
  type RouterSyncMessage,
} from "../lib/schemas/index.ts";
import { type IptablesPort, NamespaceMissingError, RestoreError } from "./iptables.ts";
import type { AgentMetrics } from "./metrics.ts";
import type { RouterState, StateStore } from "./state.ts";

export type ApplyOutcome =
  | {
      readonly kind: "applied";
      readonly changed: boolean;
      readonly rules: { ipv4: number; ipv6: number };
      readonly errors: readonly ApplyError[];
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

/** The rules could not be made to match the snapshot; the message stays queued for a retry. */
export class ApplyFailedError extends Error {
  override readonly name = "ApplyFailedError";
  constructor(
    message: string,
    readonly reason: "restore" | "verify" | "other",
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export interface AgentCoreOptions {
  readonly node: string;
  readonly catalog: HelperCatalog;
  readonly iptables: IptablesPort;
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
  /** Address families this node manages (default both); a host without IPv6 netfilter runs with ipv4 only. */
  readonly families?: readonly Family[];
  /** Helpers the kernel lacks, per family (start-up probe); grows when a restore error names one. */
  readonly unavailable?: Record<Family, Set<string>>;
}

interface FamilyResult {
  readonly changed: boolean;
  readonly rules: number;
  readonly errors: readonly ApplyError[];
  /** The verified read-back (undefined: a family this node does not manage). */
  readonly save?: string | undefined;
}

/** Where one router's snapshot goes on this host. */
interface Placement {
  readonly kind: NamespaceKind;
  readonly ns: string;
}

/** What a namespace that is gone holds: nothing. */
const EMPTY_DIGEST = helperSetDigest([]);

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
  readonly unavailable: Record<Family, Set<string>>;
  private readonly families: readonly Family[];
  private readonly kinds: readonly NamespaceKind[];
  /** Tail of each router's queue of transactions (see exclusive). */
  private readonly locks = new Map<string, Promise<unknown>>();
  private drifting = false;
  /** Our lines as last read back, per namespace and family (see convergeFamily). */
  private readonly lastSeen = new Map<string, string>();

  constructor(private readonly options: AgentCoreOptions) {
    this.unavailable = options.unavailable ?? { ipv4: new Set(), ipv6: new Set() };
    this.families = options.families ?? FAMILIES;
    this.kinds = namespaceKindsOf(options.namespacePattern);
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
      if (last && snapshot.revision === last.revision && kindOrDefault(last.kind) === kind) {
        this.options.metrics.messages.inc({ outcome: "duplicate" });
        await this.report(snapshot.router_id, last);
        return { kind: "duplicate", appliedRevision: last.revision };
      }
      return this.converge(
        snapshot.router_id,
        snapshot.revision,
        snapshot.helpers,
        { kind, ns: this.namespaceFor(snapshot.router_id, kind) },
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
      { router_id: snapshot.router_id, revision: snapshot.revision, namespace_kind: kind, reason },
      message,
    );
    await this.sendReport({
      routerId: snapshot.router_id,
      revision: snapshot.revision,
      kind,
      rules: { ipv4: 0, ipv6: 0 },
      errors: [{ code: reason, message }],
      digest: EMPTY_DIGEST,
    });
    return { kind: "refused", reason };
  }

  private async converge(
    routerId: string,
    revision: number,
    helpers: readonly HelperRule[],
    placement: Placement,
    correlationId?: string,
  ): Promise<ApplyOutcome> {
    const { iptables, logger, metrics, state } = this.options;
    const { kind, ns } = placement;
    const previous = state.get(routerId);
    let created = previous?.createdNamespace === true && previous.namespace === ns;
    const started = performance.now();
    logger.debug({ router_id: routerId, revision, namespace: ns, helpers: helpers.length }, "applying");
    try {
      if (!(await iptables.namespaceExists(ns))) {
        // A namespace that comes back is a new, empty one: what was last read back no longer holds.
        this.forget(ns);
        if (helpers.length === 0) {
          // Nothing to remove from a namespace that is gone: the empty snapshot holds there already.
          await this.vacate(routerId, ns, previous);
          await state.set(routerId, {
            revision,
            helpers: [],
            namespace: ns,
            kind,
            appliedAt: new Date().toISOString(),
          });
          const nothing = { ipv4: 0, ipv6: 0 };
          return this.finish(
            routerId,
            revision,
            placement,
            started,
            false,
            nothing,
            [],
            EMPTY_DIGEST,
            correlationId,
          );
        }
        if (!this.options.createNamespaces) return this.missing(routerId, revision, ns);
        await iptables.createNamespace(ns);
        created = true;
        logger.info({ router_id: routerId, namespace: ns }, "namespace created");
      }
      // What this agent last wrote here (state file), the guess for a namespace it has not read yet.
      const assumed = previous?.namespace === ns ? previous.helpers : [];
      const results = await this.convergeFamilies(ns, helpers, assumed);
      const changed = results.ipv4.changed || results.ipv6.changed;
      const errors = [...results.ipv4.errors, ...results.ipv6.errors];
      if (helpers.length === 0 && created) {
        await iptables.deleteNamespace(ns);
        this.forget(ns);
        created = false;
        logger.info({ router_id: routerId, namespace: ns }, "namespace this agent created removed");
      }
      // Only after the new namespace is verified: a move that fails halfway leaves the old rules, never none.
      await this.vacate(routerId, ns, previous);
      await state.set(routerId, {
        revision,
        helpers: [...helpers],
        namespace: ns,
        kind,
        appliedAt: new Date().toISOString(),
        createdNamespace: created || undefined,
      });
      const rules = { ipv4: results.ipv4.rules, ipv6: results.ipv6.rules };
      // Of what the read-back found, not of what was meant.
      const digest = readBackDigest(
        { ipv4: results.ipv4.save, ipv6: results.ipv6.save },
        this.options.catalog,
      );
      return this.finish(
        routerId,
        revision,
        placement,
        started,
        changed,
        rules,
        errors,
        digest,
        correlationId,
      );
    } catch (error) {
      if (error instanceof NamespaceMissingError) {
        this.forget(ns);
        return this.missing(routerId, revision, ns);
      }
      const failure =
        error instanceof ApplyFailedError
          ? error
          : new ApplyFailedError(error instanceof Error ? error.message : String(error), "other", {
              cause: error,
            });
      metrics.failures.inc({ reason: failure.reason });
      logger.error({ router_id: routerId, revision, namespace: ns, err: failure }, "apply failed");
      throw failure;
    }
  }

  /**
   * The families are independent tables: converged concurrently (each step is a process spawn). Both settle
   * before anything is decided, so no family is still being written once the lock is released.
   */
  private async convergeFamilies(
    ns: string,
    helpers: readonly HelperRule[],
    assumed: readonly HelperRule[],
  ): Promise<Record<Family, FamilyResult>> {
    const [ipv4, ipv6] = await Promise.allSettled([
      this.convergeFamily(ns, "ipv4", helpers, assumed),
      this.convergeFamily(ns, "ipv6", helpers, assumed),
    ]);
    if (ipv4.status === "rejected") throw ipv4.reason;
    if (ipv6.status === "rejected") throw ipv6.reason;
    return { ipv4: ipv4.value, ipv6: ipv6.value };
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
   * Converges the router's former namespaces to the empty set (our chains only; Neutron's rules are never
   * touched) and removes one the agent created itself. A namespace that is gone holds nothing.
   */
  private async vacate(routerId: string, ns: string, previous: RouterState | undefined): Promise<void> {
    const { iptables, logger } = this.options;
    for (const former of this.formerNamespaces(routerId, ns, previous)) {
      try {
        if (!(await iptables.namespaceExists(former))) {
          this.forget(former);
          continue;
        }
        const assumed = previous?.namespace === former ? previous.helpers : [];
        const results = await this.convergeFamilies(former, [], assumed);
        if (results.ipv4.changed || results.ipv6.changed) {
          logger.info({ router_id: routerId, namespace: former, now: ns }, "router moved: old rules removed");
        }
        if (previous?.namespace === former && previous.createdNamespace) {
          await iptables.deleteNamespace(former);
          this.forget(former);
          logger.info({ router_id: routerId, namespace: former }, "namespace this agent created removed");
        }
      } catch (error) {
        if (!(error instanceof NamespaceMissingError)) throw error;
        this.forget(former);
      }
    }
  }

  private missing(routerId: string, revision: number, ns: string): ApplyOutcome {
    this.options.metrics.namespaceMissing.inc();
    this.options.logger.warn({ router_id: routerId, revision, namespace: ns }, "router namespace missing");
    return { kind: "namespace-missing", namespace: ns };
  }

  private async finish(
    routerId: string,
    revision: number,
    placement: Placement,
    started: number,
    changed: boolean,
    rules: { ipv4: number; ipv6: number },
    errors: readonly ApplyError[],
    digest: string,
    correlationId: string | undefined,
  ): Promise<ApplyOutcome> {
    const { metrics, logger } = this.options;
    const seconds = (performance.now() - started) / 1000;
    metrics.applies.inc({ result: changed ? "changed" : "unchanged" });
    metrics.applySeconds.observe(seconds);
    metrics.lastSuccess.set(Date.now() / 1000);
    logger.info(
      {
        router_id: routerId,
        revision,
        namespace: placement.ns,
        changed,
        rules,
        errors: errors.length,
        seconds,
        correlation_id: correlationId,
      },
      changed ? "snapshot applied" : "snapshot already in place, nothing written",
    );
    await this.sendReport({ routerId, revision, kind: placement.kind, rules, errors, digest });
    return { kind: "applied", changed, rules, errors };
  }

  /**
   * One family: render against what the table holds, restore, leave out helpers the kernel lacks, read back
   * and compare. "What the table holds" is the last read-back of this namespace when there is one (saves a
   * process spawn per apply); if that view is stale (someone edited the table), the restore fails or the
   * read-back differs, and the family is redone once against a fresh save.
   */
  private async convergeFamily(
    ns: string,
    family: Family,
    helpers: readonly HelperRule[],
    assumed: readonly HelperRule[],
  ): Promise<FamilyResult> {
    if (!this.families.includes(family)) return { changed: false, rules: 0, errors: [] };
    const { iptables, catalog, logger, metrics } = this.options;
    const unavailable = this.unavailable[family];
    const key = `${ns}\n${family}`;
    // Not read yet in this process: assume the table holds what this agent last wrote (nothing, for a new
    // router) instead of spending a process spawn on a save. The read-back below proves the guess; a wrong
    // one (state lost, hand edits) costs one more restore against a fresh save, and converges the same.
    let current = this.lastSeen.get(key) ?? this.assumedSave(family, assumed);
    let fresh = false;
    let changed = false;
    // Each failed attempt removes one helper or refreshes a stale view once, so this ends.
    for (let attempt = 0; attempt < helpers.length + 3; attempt++) {
      const plan = planFamily(helpers, family, catalog, { unavailable });
      // After a surprise (a failed restore or a read-back that differs) the chain is rewritten whole.
      const text = renderRestore(plan.rules, current, { whole: fresh });
      if (text !== undefined) {
        try {
          await iptables.restore(ns, family, text);
          changed = true;
        } catch (error) {
          if (!(error instanceof RestoreError)) throw error;
          const hit = helperAtLine(text, error.stderr);
          if (hit && isMissingHelperError(error.stderr) && !unavailable.has(hit.helper)) {
            unavailable.add(hit.helper);
            metrics.helperUnavailable.inc({ family, helper: hit.helper });
            logger.warn({ family, helper: hit.helper, stderr: error.stderr.trim() }, "kernel lacks helper");
            continue;
          }
          if (!fresh) {
            this.lastSeen.delete(key);
            current = await iptables.save(ns, family);
            fresh = true;
            continue;
          }
          throw new ApplyFailedError(error.message, "restore", { cause: error });
        }
      }
      const after = await iptables.save(ns, family);
      const owned = ownedLines(after);
      this.remember(key, owned);
      if (sameLines(owned, expectedOwnedLines(plan.rules))) {
        return { changed, rules: plan.rules.length, errors: plan.errors, save: after };
      }
      if (!fresh) {
        current = after;
        fresh = true;
        continue;
      }
      throw new ApplyFailedError(`${family}: rules read back differ from the rendered rules`, "verify");
    }
    throw new ApplyFailedError(`${family}: gave up leaving out helpers`, "restore");
  }

  private assumedSave(family: Family, assumed: readonly HelperRule[]): string {
    const plan = planFamily(assumed, family, this.options.catalog, { unavailable: this.unavailable[family] });
    return ["*raw", ...expectedOwnedLines(plan.rules), "COMMIT", ""].join("\n");
  }

  private forget(ns: string): void {
    for (const family of FAMILIES) this.lastSeen.delete(`${ns}\n${family}`);
  }

  /** Keeps only our lines of a read-back, as a minimal save the renderer can diff against. */
  private remember(key: string, owned: readonly string[]): void {
    this.lastSeen.set(key, ["*raw", ...owned, "COMMIT", ""].join("\n"));
  }

  /** Re-reports an applied revision: with the digest of the last read-back, or of a fresh one. */
  private async report(routerId: string, last: RouterState): Promise<void> {
    const rules = { ipv4: 0, ipv6: 0 };
    const errors: ApplyError[] = [];
    const saves: Partial<Record<Family, string>> = {};
    const exists = await this.options.iptables.namespaceExists(last.namespace);
    for (const family of this.families) {
      const plan = planFamily(last.helpers, family, this.options.catalog, {
        unavailable: this.unavailable[family],
      });
      rules[family] = plan.rules.length;
      errors.push(...plan.errors);
      // A namespace that is gone holds nothing, whatever was last seen in it.
      saves[family] = exists
        ? (this.lastSeen.get(`${last.namespace}\n${family}`) ?? (await this.readBack(last.namespace, family)))
        : "";
    }
    await this.sendReport({
      routerId,
      revision: last.revision,
      kind: kindOrDefault(last.kind),
      rules,
      errors,
      digest: readBackDigest(saves, this.options.catalog),
    });
  }

  private async readBack(ns: string, family: Family): Promise<string> {
    try {
      const save = await this.options.iptables.save(ns, family);
      this.remember(`${ns}\n${family}`, ownedLines(save));
      return save;
    } catch (error) {
      if (error instanceof NamespaceMissingError) return "";
      throw error;
    }
  }

  private async sendReport(report: {
    readonly routerId: string;
    readonly revision: number;
    readonly kind: NamespaceKind;
    readonly rules: { ipv4: number; ipv6: number };
    readonly errors: readonly ApplyError[];
    readonly digest: string;
  }): Promise<void> {
    const { routerId, revision, kind, rules, errors, digest } = report;
    try {
      await this.options.status.send({
        v: 1,
        kind: "applied",
        router_id: routerId,
        revision,
        // Kept for readers of the queue; the status side takes the host from the queue itself.
        host: this.options.node,
        namespace: kind,
        digest,
        rules,
        errors: [...errors],
      });
    } catch (error) {
      // The rules are in place; a lost report is healed by the reconciler's re-send (a duplicate re-reports).
      this.options.logger.warn({ router_id: routerId, revision, err: error }, "status report failed");
    }
  }

  /**
   * Compares every router's owned chains with its last applied snapshot and re-applies where someone changed
   * them out of band. Returns the routers repaired.
   */
  async checkDrift(): Promise<string[]> {
    // One drift pass at a time; a timer tick during a long pass is skipped, not queued.
    if (this.drifting) return [];
    this.drifting = true;
    const repaired: string[] = [];
    try {
      for (const [routerId] of this.options.state.entries()) {
        // The lock is taken per router, so snapshots from the queue are not held up by a whole pass.
        await this.exclusive(routerId, async () => {
          const last = this.options.state.get(routerId);
          if (!last) return;
          try {
            if (!(await this.options.iptables.namespaceExists(last.namespace))) return;
            if (await this.inPlace(last.namespace, last.helpers)) return;
            this.options.metrics.driftRepairs.inc();
            this.options.logger.warn(
              { router_id: routerId, namespace: last.namespace },
              "drift found, re-applying",
            );
            // Repaired where it was applied: only a new snapshot moves a router.
            await this.converge(routerId, last.revision, last.helpers, {
              kind: kindOrDefault(last.kind),
              ns: last.namespace,
            });
            repaired.push(routerId);
          } catch (error) {
            this.options.logger.error({ router_id: routerId, err: error }, "drift repair failed");
          }
        });
      }
    } finally {
      this.drifting = false;
    }
    return repaired;
  }

  private async inPlace(ns: string, helpers: readonly HelperRule[]): Promise<boolean> {
    const checks = this.families.map(async (family) => {
      const plan = planFamily(helpers, family, this.options.catalog, {
        unavailable: this.unavailable[family],
      });
      const current = ownedLines(await this.options.iptables.save(ns, family));
      this.remember(`${ns}\n${family}`, current);
      return sameLines(current, expectedOwnedLines(plan.rules));
    });
    return (await Promise.all(checks)).every(Boolean);
  }
}
