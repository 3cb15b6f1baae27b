/**
 * The nftables backend: per router namespace one table of family `inet` that this project owns whole
 * (render.ts), converged with one `nft -f` per apply and proved by the `--echo` of that same transaction
 * (what the kernel committed, with handles), so an apply costs one process where iptables takes four. A
 * listing (`nft -j list table`) is spent only where nothing was written (a no-op apply), on a drift check, and
 * after a surprise; any surprise (a failed transaction, an echo that differs) rewrites the table whole.
 */
import type { Logger } from "pino";
import type { Family, HelperCatalog } from "../../lib/catalog.ts";
import { FAMILIES, planErrors, planRules, ruleCounts } from "../../lib/rules.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";
import {
  ApplyFailedError,
  type FirewallBackend,
  NamespaceMissingError,
  OnPort,
  type Verified,
} from "../backend.ts";
import type { AgentMetrics } from "../metrics.ts";
import { NftError, type NftPort } from "./port.ts";
import {
  ABSENT,
  type Edit,
  helperAtLine,
  helperObject,
  readView,
  renderCreate,
  renderEdit,
  renderRelease,
  renderRewrite,
  type TableSpec,
  type TableView,
  tableSpec,
  viewDigest,
  viewMatches,
} from "./render.ts";

export interface NftablesBackendOptions {
  readonly port: NftPort;
  readonly catalog: HelperCatalog;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  /** Address families this node manages (default both): rules are restricted to these. */
  readonly families?: readonly Family[];
}

export class NftablesBackend extends OnPort<NftPort> implements FirewallBackend {
  readonly name = "nftables";
  readonly unavailable: Record<Family, Set<string>> = { ipv4: new Set(), ipv6: new Set() };
  private readonly families: readonly Family[];
  /** Our table as the kernel last returned it, per namespace: the base of in-place edits. */
  private readonly views = new Map<string, TableView>();

  constructor(private readonly options: NftablesBackendOptions) {
    super(options.port);
    this.families = options.families ?? FAMILIES;
  }

  forget(ns: string): void {
    this.views.delete(ns);
  }

  /** One transaction creating an object for every catalog helper and protocol; a failing line names one. */
  async probe(): Promise<void> {
    const { catalog } = this.options;
    const objects = catalog
      .names()
      .flatMap((name) =>
        (catalog.spec(name)?.protocols ?? []).map((protocol) => helperObject(name, protocol, catalog)),
      );
    for (let attempt = 0; attempt <= objects.length; attempt++) {
      const left = objects.filter((object) => !this.lacks(object.type));
      const spec: TableSpec = { objects: new Map(left.map((object) => [object.name, object])), rules: [] };
      const text = renderCreate(spec);
      try {
        await this.options.port.probeApply(text);
        return;
      } catch (error) {
        const helper = error instanceof NftError ? helperAtLine(text, error.stderr) : undefined;
        if (!helper || this.lacks(helper)) {
          throw new Error(
            `nftables is not usable here (${error instanceof Error ? error.message : String(error)}); ` +
              "install nftables or run the agent with --backend iptables",
            { cause: error },
          );
        }
        this.markUnavailable(helper);
      }
    }
  }

  async converge(
    ns: string,
    helpers: readonly HelperRule[],
    assumed: readonly HelperRule[],
  ): Promise<Verified> {
    const { port, catalog } = this.options;
    let fresh = false;
    let changed = false;
    // Each failed attempt leaves out one helper the kernel lacks or turns to a rewrite once, so this ends.
    for (let attempt = 0; attempt < helpers.length + 3; attempt++) {
      const plan = planRules(helpers, this.families, catalog, this.unavailable);
      const spec = tableSpec(plan, catalog);
      const verified = (view: TableView): Verified => ({
        changed,
        rules: ruleCounts(plan),
        errors: planErrors(plan),
        digest: viewDigest(view, this.families, catalog),
      });
      const edit = fresh ? ({ kind: "rewrite" } as const) : this.edit(ns, spec, assumed);
      if (edit.kind === "none") {
        // Nothing to write: the kernel's own listing says whether that is true.
        const view = await this.read(ns);
        if (viewMatches(view, spec)) return verified(view);
        fresh = true;
        continue;
      }
      const text =
        edit.kind === "write" ? edit.text : spec.rules.length === 0 ? renderRelease() : renderRewrite(spec);
      let echo: string;
      try {
        echo = await port.apply(ns, text);
        changed = true;
      } catch (error) {
        if (!(error instanceof NftError)) throw error;
        this.views.delete(ns);
        // Only a transaction that built the table proves a missing module: an edit against a table that went
        // away behind our back fails on its first `add ct helper` line too. That is a surprise: rewrite first.
        const built = edit.kind !== "write" || !edit.base.exists;
        const helper = built ? helperAtLine(text, error.stderr) : undefined;
        if (helper && !this.lacks(helper)) {
          this.markUnavailable(helper);
          this.options.logger.warn({ helper, stderr: error.stderr.trim() }, "kernel lacks helper");
          continue;
        }
        if (!fresh) {
          fresh = true;
          continue;
        }
        throw new ApplyFailedError(error.message, "restore", { cause: error });
      }
      const base = edit.kind === "write" ? edit.base : ABSENT;
      const deleted = edit.kind === "write" ? edit.deleted : {};
      // A transaction ending in `delete table` that succeeded leaves no table (deletions are not echoed).
      const after = spec.rules.length === 0 ? ABSENT : readView(echo, catalog, base, deleted);
      this.views.set(ns, after);
      if (viewMatches(after, spec)) return verified(after);
      this.views.delete(ns);
      if (!fresh) {
        fresh = true;
        continue;
      }
      throw new ApplyFailedError(
        "nftables: what the kernel committed differs from the rendered table",
        "verify",
      );
    }
    throw new ApplyFailedError("nftables: gave up leaving out helpers", "restore");
  }

  /**
   * Against the table as last returned when there is one; else against what the state says this backend
   * last wrote: nothing (a new router) is a `create`, which fails if a table is there after all, and anything
   * else a whole rewrite, since in-place edits need the kernel's handles.
   */
  private edit(ns: string, spec: TableSpec, assumed: readonly HelperRule[]): Edit {
    const view = this.views.get(ns);
    if (view) return renderEdit(view, spec);
    if (assumed.length === 0) return renderEdit(ABSENT, spec);
    return { kind: "rewrite" };
  }

  async holds(ns: string, helpers: readonly HelperRule[]): Promise<boolean> {
    const spec = tableSpec(
      planRules(helpers, this.families, this.options.catalog, this.unavailable),
      this.options.catalog,
    );
    return viewMatches(await this.read(ns), spec);
  }

  async describe(ns: string, helpers: readonly HelperRule[]): Promise<Verified> {
    const plan = planRules(helpers, this.families, this.options.catalog, this.unavailable);
    let view = this.views.get(ns);
    if (!view) {
      try {
        view = (await this.namespaceExists(ns)) ? await this.read(ns) : ABSENT;
      } catch (error) {
        if (!(error instanceof NamespaceMissingError)) throw error;
        view = ABSENT;
      }
    }
    return {
      changed: false,
      rules: ruleCounts(plan),
      errors: planErrors(plan),
      digest: viewDigest(view, this.families, this.options.catalog),
    };
  }

  async release(ns: string): Promise<boolean> {
    if (!(await this.namespaceExists(ns))) return false;
    const view = await this.read(ns);
    this.views.delete(ns);
    if (!view.exists) return false;
    await this.options.port.apply(ns, renderRelease());
    return true;
  }

  private async read(ns: string): Promise<TableView> {
    const listing = await this.options.port.list(ns);
    const view = listing === undefined ? ABSENT : readView(listing, this.options.catalog);
    this.views.set(ns, view);
    return view;
  }

  private lacks(helper: string): boolean {
    return this.families.some((family) => this.unavailable[family].has(helper));
  }

  /** A helper module is one for both families: an object that cannot be created is missing in both. */
  private markUnavailable(helper: string): void {
    for (const family of FAMILIES) {
      if (this.unavailable[family].has(helper)) continue;
      this.unavailable[family].add(helper);
      this.options.metrics.helperUnavailable.inc({ family, helper });
    }
  }
}
