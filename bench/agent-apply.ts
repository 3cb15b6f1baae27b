/**
 * (a) Agent apply: one router with N helpers, from the raw queue message body to rules verified (JSON.parse,
 * the agent's schema, render, one iptables-restore per family, read back and compare, state fsync), through
 * the agent's real core and the real iptables adapter in a namespace created here. Beside it, in the same
 * run: ../shared/bench/restore_floor.sh N (the physical floor) and Neutron's own extension.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { AgentCore } from "../agent/core.ts";
import { IptablesBackend } from "../agent/iptables/backend.ts";
import { ExecIptables } from "../agent/iptables/port.ts";
import { renderRestore } from "../agent/iptables/render.ts";
import { AgentMetrics } from "../agent/metrics.ts";
import { StateStore } from "../agent/state.ts";
import { HelperCatalog } from "../lib/catalog.ts";
import { loadLimits } from "../lib/config.ts";
import type { StatusSink } from "../lib/ports.ts";
import { FAMILIES, planFamily } from "../lib/rules.ts";
import { buildSchemas, type HelperRule } from "../lib/schemas/index.ts";
import { median, run } from "./stats.ts";

export interface ApplyRow {
  readonly case: string;
  readonly n: number;
  readonly reps: number;
  /** Median seconds, ours. */
  readonly oursSeconds: number;
  readonly floorSeconds: number | undefined;
  /** Our rendered text alone through one restore per family (no read before, no read back): median. */
  readonly restoreOnlySeconds?: number | undefined;
  readonly neutronSeconds: number | undefined;
  readonly rulesV4: number;
  readonly rulesV6: number;
  readonly note?: string;
}

export interface ApplyOptions {
  readonly sizes: readonly number[];
  readonly reps: number;
  readonly sharedDir: string;
  readonly neutronMax: number;
  readonly skipNeutron: boolean;
  readonly log: (line: string) => void;
}

const nullStatus: StatusSink = { send: async () => undefined };

/** N ftp helpers on consecutive ports from `base`. */
export function helpers(n: number, base = 1024): HelperRule[] {
  return Array.from({ length: n }, (_, i) => ({
    id: randomUUID(),
    protocol: "tcp" as const,
    port: base + i,
    helper: "ftp",
  }));
}

/** A router-sync message body as the agent receives it. */
export function body(routerId: string, revision: number, list: readonly HelperRule[]): string {
  return JSON.stringify({
    v: 1,
    kind: "router-sync",
    router_id: routerId,
    revision,
    helpers: list,
    correlation_id: `bench-${revision}`,
    issued_at: new Date().toISOString(),
  });
}

/** Seconds one run of a floor script (restore_floor.sh, nft_floor.sh) prints for N helpers. */
export async function floorSeconds(script: string, n: number): Promise<number> {
  const { stdout } = await run("bash", [script, String(n)]);
  const match = /seconds=([\d.]+)/.exec(stdout);
  if (!match) throw new Error(`${script} printed no seconds: ${stdout}`);
  return Number(match[1]);
}

const floor = (sharedDir: string, n: number) => floorSeconds(join(sharedDir, "restore_floor.sh"), n);

async function neutron(sharedDir: string, n: number): Promise<{ seconds: number; v4: number; v6: number }> {
  // Run the script itself: its shebang is the system python3, where python3-neutron lives.
  const { stdout } = await run(join(sharedDir, "neutron_cth_bench.py"), [String(n)], { timeoutMs: 900_000 });
  const line = stdout.trim().split("\n").pop() ?? "";
  const parsed = JSON.parse(line) as { seconds: number; rules_v4: number; rules_v6: number };
  return { seconds: parsed.seconds, v4: parsed.rules_v4, v6: parsed.rules_v6 };
}

export async function neutronAvailable(sharedDir: string): Promise<string | undefined> {
  try {
    await run("/usr/bin/python3", ["-c", "import neutron.agent.l3.extensions.conntrack_helper"], {
      timeoutMs: 60_000,
    });
  } catch {
    return "python3-neutron is not installed (apt-get install python3-neutron)";
  }
  try {
    await run("test", ["-x", join(sharedDir, "neutron_cth_bench.py")]);
  } catch {
    return `${join(sharedDir, "neutron_cth_bench.py")} not found`;
  }
  return undefined;
}

export async function benchAgentApply(options: ApplyOptions): Promise<ApplyRow[]> {
  const maxN = Math.max(...options.sizes, 500);
  const limits = loadLimits({ ...process.env, CTH_MAX_HELPERS_PER_ROUTER: String(Math.max(maxN, 128)) });
  const catalog = new HelperCatalog();
  const schema = buildSchemas(limits, catalog).routerSync;
  const iptables = new ExecIptables();
  const stateDir = mkdtempSync(join(tmpdir(), "cth-bench-state-"));
  const logger = pino({ level: "silent" });
  const namespaces: string[] = [];
  const newCore = async (ns: string) =>
    new AgentCore({
      node: `bench-${process.pid}`,
      backend: new IptablesBackend({ port: iptables, catalog, metrics: new AgentMetrics(), logger }),
      state: await StateStore.load(join(stateDir, ns), `bench-${process.pid}`),
      status: nullStatus,
      metrics: new AgentMetrics(),
      logger,
      namespacePattern: ns,
      createNamespaces: false,
    });
  /** Message received (raw body) -> applied and verified; returns seconds. */
  const applyTimed = async (core: AgentCore, text: string) => {
    const started = performance.now();
    const snapshot = schema.parse(JSON.parse(text));
    const outcome = await core.apply(snapshot);
    const seconds = (performance.now() - started) / 1000;
    if (outcome.kind !== "applied") throw new Error(`apply did not apply: ${outcome.kind}`);
    return { seconds, outcome };
  };
  const rows: ApplyRow[] = [];
  const neutronMissing = options.skipNeutron
    ? "skipped (--skip-neutron/--quick)"
    : await neutronAvailable(options.sharedDir);
  try {
    for (const n of options.sizes) {
      const ours: number[] = [];
      let rules = { ipv4: 0, ipv6: 0 };
      const reps = n >= 2000 ? Math.max(1, Math.ceil(options.reps / 2)) : options.reps;
      for (let rep = 0; rep < reps; rep++) {
        const ns = `cthb-${process.pid}-${n}-${rep}`;
        await iptables.createNamespace(ns);
        namespaces.push(ns);
        const core = await newCore(ns);
        const { seconds, outcome } = await applyTimed(core, body(randomUUID(), 1, helpers(n)));
        if (outcome.kind === "applied") rules = outcome.rules;
        ours.push(seconds);
        await iptables.deleteNamespace(ns);
      }
      // Steady state: the running agent has already read this namespace once (its first snapshot, here an
      // empty one), so an apply is one restore and one read-back per family, both families concurrently.
      const warm: number[] = [];
      for (let rep = 0; rep < reps; rep++) {
        const ns = `cthb-${process.pid}-${n}-w${rep}`;
        await iptables.createNamespace(ns);
        namespaces.push(ns);
        const core = await newCore(ns);
        const routerId = randomUUID();
        await applyTimed(core, body(routerId, 1, []));
        warm.push((await applyTimed(core, body(routerId, 2, helpers(n)))).seconds);
        await iptables.deleteNamespace(ns);
      }
      // The same snapshot's rendered text through one restore per family, nothing else: what the agent's
      // read-before and read-back cost on top of writing.
      const restoreOnly: number[] = [];
      for (let rep = 0; rep < reps; rep++) {
        const ns = `cthb-${process.pid}-${n}-r${rep}`;
        await iptables.createNamespace(ns);
        namespaces.push(ns);
        const list = helpers(n);
        const texts = FAMILIES.map(
          (family) => [family, renderRestore(planFamily(list, family, catalog).rules, "")] as const,
        );
        const started = performance.now();
        for (const [family, text] of texts) if (text) await iptables.restore(ns, family, text);
        restoreOnly.push((performance.now() - started) / 1000);
        await iptables.deleteNamespace(ns);
      }
      const floors: number[] = [];
      for (let rep = 0; rep < reps; rep++) floors.push(await floor(options.sharedDir, n));
      let neutronSeconds: number | undefined;
      let note: string | undefined;
      if (neutronMissing) note = `Neutron: ${neutronMissing}`;
      else if (n > options.neutronMax) note = `Neutron not run above N=${options.neutronMax} (86 s at 500)`;
      else {
        options.log(`  neutron N=${n} (slow) ...`);
        const result = await neutron(options.sharedDir, n);
        neutronSeconds = result.seconds;
        note = `Neutron wrote ${result.v4} v4 / ${result.v6} v6 rules`;
      }
      rows.push({
        case: "full apply, empty namespace",
        n,
        reps,
        oursSeconds: median(ours),
        floorSeconds: median(floors),
        restoreOnlySeconds: median(restoreOnly),
        neutronSeconds,
        rulesV4: rules.ipv4,
        rulesV6: rules.ipv6,
        ...(note ? { note } : {}),
      });
      rows.push({
        case: "full apply, namespace the running agent has seen",
        n,
        reps,
        oursSeconds: median(warm),
        floorSeconds: median(floors),
        neutronSeconds,
        rulesV4: rules.ipv4,
        rulesV6: rules.ipv6,
        note: "agent had applied an empty snapshot to this namespace first (not timed)",
      });
      options.log(
        `  apply N=${n}: cold ${median(ours).toFixed(4)} s, warm ${median(warm).toFixed(4)} s, floor ${median(floors).toFixed(4)} s`,
      );
    }

    // One helper changed on a router that has 500, and the same snapshot re-sent at a new revision (no-op).
    const ns = `cthb-${process.pid}-delta`;
    await iptables.createNamespace(ns);
    namespaces.push(ns);
    const core = await newCore(ns);
    const routerId = randomUUID();
    let list = helpers(500);
    let revision = 1;
    await applyTimed(core, body(routerId, revision, list));
    const changed: number[] = [];
    const unchanged: number[] = [];
    let rules = { ipv4: 0, ipv6: 0 };
    for (let rep = 0; rep < options.reps; rep++) {
      list = list.map((helper, index) =>
        index === (rep * 37) % 500 ? { ...helper, port: 30_000 + rep } : helper,
      );
      const result = await applyTimed(core, body(routerId, ++revision, list));
      if (result.outcome.kind === "applied") {
        if (!result.outcome.changed) throw new Error("a changed helper wrote nothing");
        rules = result.outcome.rules;
      }
      changed.push(result.seconds);
      const again = await applyTimed(core, body(routerId, ++revision, list));
      if (again.outcome.kind === "applied" && again.outcome.changed)
        throw new Error("an unchanged snapshot wrote rules");
      unchanged.push(again.seconds);
    }
    const floor1 = [] as number[];
    for (let rep = 0; rep < options.reps; rep++) floor1.push(await floor(options.sharedDir, 1));
    rows.push({
      case: "1 helper changed on a router with 500",
      n: 500,
      reps: options.reps,
      oursSeconds: median(changed),
      floorSeconds: median(floor1),
      neutronSeconds: undefined,
      rulesV4: rules.ipv4,
      rulesV6: rules.ipv6,
      note: "floor here: restore_floor.sh 1 (the least one restore per family can cost)",
    });
    rows.push({
      case: "same 500 re-sent at a new revision (no-op)",
      n: 500,
      reps: options.reps,
      oursSeconds: median(unchanged),
      floorSeconds: median(floor1),
      neutronSeconds: undefined,
      rulesV4: rules.ipv4,
      rulesV6: rules.ipv6,
      note: "read back only, nothing written",
    });
  } finally {
    for (const ns of namespaces) await iptables.deleteNamespace(ns).catch(() => undefined);
    rmSync(stateDir, { recursive: true, force: true });
  }
  return rows;
}
