/**
 * The iptables backend: one owned chain per family in the namespace's `raw` table (render.ts), written with
 * one iptables-restore per family and proved by an iptables-save read-back. The families are separate
 * tables, so they converge concurrently (each step is a process spawn).
 */
import type { Logger } from "pino";
import type { Family, HelperCatalog } from "../../lib/catalog.ts";
import { FAMILIES, type FamilyPlan, planErrors, planFamily, planRules, ruleCounts } from "../../lib/rules.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";
import {
  ApplyFailedError,
  type FirewallBackend,
  NamespaceMissingError,
  OnPort,
  type Verified,
} from "../backend.ts";
import type { AgentMetrics } from "../metrics.ts";
import { type IptablesPort, RestoreError } from "./port.ts";
import { probeHelpers } from "./probe.ts";
import {
  expectedOwnedLines,
  helperAtLine,
  isMissingHelperError,
  ownedLines,
  readBackDigest,
  renderRestore,
  sameLines,
} from "./render.ts";

export interface IptablesBackendOptions {
  readonly port: IptablesPort;
  readonly catalog: HelperCatalog;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  /** Address families this node manages (default both); a host without IPv6 netfilter runs with ipv4 only. */
  readonly families?: readonly Family[];
  /** Recorded in state; `dry-run` for the in-memory model that backs `--backend dry-run`. */
  readonly name?: "iptables" | "dry-run";
}

interface FamilyResult {
  readonly changed: boolean;
  readonly plan: FamilyPlan;
  /** The verified read-back. */
  readonly save: string;
}

export class IptablesBackend extends OnPort<IptablesPort> implements FirewallBackend {
  readonly name: "iptables" | "dry-run";
  readonly unavailable: Record<Family, Set<string>> = { ipv4: new Set(), ipv6: new Set() };
  private readonly families: readonly Family[];
  /** Our lines as last read back, per namespace and family (see convergeFamily). */
  private readonly lastSeen = new Map<string, string>();

  constructor(private readonly options: IptablesBackendOptions) {
    super(options.port);
    this.name = options.name ?? "iptables";
    this.families = options.families ?? FAMILIES;
  }

  async probe(): Promise<void> {
    const lacking = await probeHelpers(this.options.port, this.options.catalog, this.families);
    for (const family of FAMILIES) for (const helper of lacking[family]) this.unavailable[family].add(helper);
  }

  forget(ns: string): void {
    for (const family of FAMILIES) this.lastSeen.delete(`${ns}\n${family}`);
  }

  async converge(
    ns: string,
    helpers: readonly HelperRule[],
    assumed: readonly HelperRule[],
  ): Promise<Verified> {
    // Both settle before anything is decided, so no family is still being written once the caller moves on.
    const settled = await Promise.allSettled(
      this.families.map((family) => this.convergeFamily(ns, family, helpers, assumed)),
    );
    const results: FamilyResult[] = [];
    for (const outcome of settled) {
      if (outcome.status === "rejected") throw outcome.reason;
      results.push(outcome.value);
    }
    const saves: Partial<Record<Family, string>> = {};
    const plan: Partial<Record<Family, FamilyPlan>> = {};
    for (const result of results) {
      saves[result.plan.family] = result.save;
      plan[result.plan.family] = result.plan;
    }
    return {
      changed: results.some((result) => result.changed),
      rules: ruleCounts(plan),
      errors: planErrors(plan),
      digest: readBackDigest(saves, this.options.catalog),
    };
  }

  async holds(ns: string, helpers: readonly HelperRule[]): Promise<boolean> {
    const checks = this.families.map(async (family) => {
      const current = ownedLines(await this.options.port.save(ns, family));
      this.remember(ns, family, current);
      return sameLines(current, expectedOwnedLines(this.plan(helpers, family).rules));
    });
    return (await Promise.all(checks)).every(Boolean);
  }

  async describe(ns: string, helpers: readonly HelperRule[]): Promise<Verified> {
    const plan = planRules(helpers, this.families, this.options.catalog, this.unavailable);
    const exists = await this.options.port.namespaceExists(ns);
    const saves: Partial<Record<Family, string>> = {};
    for (const family of this.families) {
      // A namespace that is gone holds nothing, whatever was last seen in it.
      saves[family] = exists
        ? (this.lastSeen.get(`${ns}\n${family}`) ?? (await this.readBack(ns, family)))
        : "";
    }
    return {
      changed: false,
      rules: ruleCounts(plan),
      errors: planErrors(plan),
      digest: readBackDigest(saves, this.options.catalog),
    };
  }

  async release(ns: string): Promise<boolean> {
    if (!(await this.options.port.namespaceExists(ns))) return false;
    this.forget(ns);
    const result = await this.converge(ns, [], []);
    this.forget(ns);
    return result.changed;
  }

  private plan(helpers: readonly HelperRule[], family: Family): FamilyPlan {
    return planFamily(helpers, family, this.options.catalog, { unavailable: this.unavailable[family] });
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
    const { port, logger, metrics } = this.options;
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
      const plan = this.plan(helpers, family);
      // After a surprise (a failed restore or a read-back that differs) the chain is rewritten whole.
      const text = renderRestore(plan.rules, current, { whole: fresh });
      if (text !== undefined) {
        try {
          await port.restore(ns, family, text);
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
            current = await port.save(ns, family);
            fresh = true;
            continue;
          }
          throw new ApplyFailedError(error.message, "restore", { cause: error });
        }
      }
      const after = await port.save(ns, family);
      const owned = ownedLines(after);
      this.remember(ns, family, owned);
      if (sameLines(owned, expectedOwnedLines(plan.rules))) return { changed, plan, save: after };
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
    return ["*raw", ...expectedOwnedLines(this.plan(assumed, family).rules), "COMMIT", ""].join("\n");
  }

  /** Keeps only our lines of a read-back, as a minimal save the renderer can diff against. */
  private remember(ns: string, family: Family, owned: readonly string[]): void {
    this.lastSeen.set(`${ns}\n${family}`, ["*raw", ...owned, "COMMIT", ""].join("\n"));
  }

  private async readBack(ns: string, family: Family): Promise<string> {
    try {
      const save = await this.options.port.save(ns, family);
      this.remember(ns, family, ownedLines(save));
      return save;
    } catch (error) {
      if (error instanceof NamespaceMissingError) return "";
      throw error;
    }
  }
}
