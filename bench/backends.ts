/**
 * Firewall backends side by side, through the agent's real core and the real adapters in namespaces made here:
 * (a) one router with N helpers, message body received to rules verified (JSON.parse, the agent's schema,
 *     one transaction, its verification, state fsync), against `nft_floor.sh N` and, at N = 500,
 *     `restore_floor.sh 500`, alternating sample by sample so the machine's drift hits both alike;
 * (b) a network node: R routers with 2 helpers each, all snapshots handed to the core at once (at the agent's
 *     apply concurrency) until every router is verified, per backend, against Neutron's own extension on
 *     `--routers 100` in the same run.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pLimit from "p-limit";
import { pino } from "pino";
import type { BackendName, FirewallBackend } from "../agent/backend.ts";
import { AgentCore } from "../agent/core.ts";
import { DirectRunner, HelperRunner } from "../agent/exec-helper.ts";
import { IptablesBackend } from "../agent/iptables/backend.ts";
import { ExecIptables } from "../agent/iptables/port.ts";
import { AgentMetrics } from "../agent/metrics.ts";
import { NftablesBackend } from "../agent/nftables/backend.ts";
import { ExecNft } from "../agent/nftables/port.ts";
import { StateStore } from "../agent/state.ts";
import { HelperCatalog } from "../lib/catalog.ts";
import { loadLimits } from "../lib/config.ts";
import { buildSchemas } from "../lib/schemas/index.ts";
import { body, floorSeconds, helpers } from "./agent-apply.ts";
import { median, run } from "./stats.ts";

type RealBackend = Exclude<BackendName, "dry-run">;
const catalog = new HelperCatalog();
const logger = pino({ level: "silent" });

export interface FloorRow {
  readonly n: number;
  readonly reps: number;
  readonly oursSeconds: number;
  readonly nftFloorSeconds: number;
  readonly restoreFloorSeconds?: number | undefined;
  readonly iptablesSeconds: number;
}

export interface NodeRow {
  readonly routers: number;
  readonly helpersPerRouter: number;
  readonly concurrency: number;
  readonly seconds: Record<RealBackend, number>;
  /** Neutron's extension on `--routers 100` (undefined: not run); per-router time x routers beside it. */
  readonly neutronSeconds?: number | undefined;
  readonly neutronRouters?: number | undefined;
}

export interface BackendBenchOptions {
  readonly sizes: readonly number[];
  readonly reps: number;
  readonly routers: readonly number[];
  readonly concurrency: number;
  readonly sharedDir: string;
  readonly neutron: boolean;
  readonly log: (line: string) => void;
}

/** One command helper per backend for the whole run, as a running agent has one. */
const runners: Partial<Record<RealBackend, HelperRunner>> = {};

function makeBackend(name: RealBackend, metrics: AgentMetrics): FirewallBackend {
  runners[name] ??= new HelperRunner();
  const runner = runners[name];
  return name === "nftables"
    ? new NftablesBackend({ port: new ExecNft({ runner }), catalog, metrics, logger })
    : new IptablesBackend({ port: new ExecIptables({ runner }), catalog, metrics, logger });
}

async function netns(verb: "add" | "delete", names: readonly string[]): Promise<void> {
  // `ip -batch`: one process for many namespaces (setup and teardown are not timed).
  const runner = new DirectRunner();
  for (let i = 0; i < names.length; i += 500) {
    const lines = names.slice(i, i + 500).map((name) => `netns ${verb} ${name}`);
    await runner.run("ip", ["-force", "-batch", "-"], `${lines.join("\n")}\n`, 600_000);
  }
}

export async function benchBackends(
  options: BackendBenchOptions,
): Promise<{ floors: FloorRow[]; node: NodeRow[] }> {
  const maxN = Math.max(...options.sizes, 2);
  const limits = loadLimits({ ...process.env, CTH_MAX_HELPERS_PER_ROUTER: String(Math.max(maxN, 128)) });
  const schema = buildSchemas(limits, catalog).routerSync;
  const stateDir = mkdtempSync(join(tmpdir(), "cth-bench-backends-"));
  const nftFloor = join(options.sharedDir, "nft_floor.sh");
  const restoreFloor = join(options.sharedDir, "restore_floor.sh");
  const core = async (backend: FirewallBackend, metrics: AgentMetrics, key: string, pattern: string) =>
    new AgentCore({
      node: `bench-${process.pid}`,
      backend,
      state: await StateStore.load(join(stateDir, key), `bench-${process.pid}`),
      status: { send: async () => undefined },
      metrics,
      logger,
      namespacePattern: pattern,
    });
  /** Message received (raw body) -> applied and verified; seconds. */
  const applyTimed = async (agent: AgentCore, text: string): Promise<number> => {
    const started = performance.now();
    const outcome = await agent.apply(schema.parse(JSON.parse(text)));
    const seconds = (performance.now() - started) / 1000;
    if (outcome.kind !== "applied" || !outcome.changed)
      throw new Error(`apply did not write: ${outcome.kind}`);
    return seconds;
  };
  const floors: FloorRow[] = [];
  const node: NodeRow[] = [];
  try {
    // Start each backend's command helper before anything is timed (a running agent has it already).
    for (const name of ["nftables", "iptables"] as const) {
      const ns = `cthbb-${process.pid}-warm-${name.slice(0, 3)}`;
      await netns("add", [ns]);
      const metrics = new AgentMetrics();
      await applyTimed(
        await core(makeBackend(name, metrics), metrics, ns, ns),
        body(randomUUID(), 1, helpers(1)),
      );
      await netns("delete", [ns]);
    }
    for (const n of options.sizes) {
      const reps = n >= 2000 ? Math.max(3, Math.ceil(options.reps / 2)) : options.reps;
      const samples: Record<"nft" | "ipt" | "nftFloor" | "restoreFloor", number[]> = {
        nft: [],
        ipt: [],
        nftFloor: [],
        restoreFloor: [],
      };
      for (let rep = 0; rep < reps; rep++) {
        for (const name of ["nftables", "iptables"] as const) {
          const ns = `cthbb-${process.pid}-${n}-${rep}-${name.slice(0, 3)}`;
          await netns("add", [ns]);
          const metrics = new AgentMetrics();
          const backend = makeBackend(name, metrics);
          const agent = await core(backend, metrics, ns, ns);
          (name === "nftables" ? samples.nft : samples.ipt).push(
            await applyTimed(agent, body(randomUUID(), 1, helpers(n))),
          );
          await netns("delete", [ns]);
        }
        samples.nftFloor.push(await floorSeconds(nftFloor, n));
        if (n === 500) samples.restoreFloor.push(await floorSeconds(restoreFloor, n));
      }
      const row: FloorRow = {
        n,
        reps,
        oursSeconds: median(samples.nft),
        nftFloorSeconds: median(samples.nftFloor),
        restoreFloorSeconds: samples.restoreFloor.length ? median(samples.restoreFloor) : undefined,
        iptablesSeconds: median(samples.ipt),
      };
      floors.push(row);
      options.log(
        `  nftables apply N=${n}: ${(row.oursSeconds * 1000).toFixed(2)} ms, nft floor ${(row.nftFloorSeconds * 1000).toFixed(2)} ms, iptables backend ${(row.iptablesSeconds * 1000).toFixed(2)} ms`,
      );
    }

    let neutronSeconds: number | undefined;
    if (options.neutron) {
      options.log("  neutron 2 --routers 100 (about 15 s) ...");
      const { stdout } = await run(
        join(options.sharedDir, "neutron_cth_bench.py"),
        ["2", "--routers", "100"],
        {
          timeoutMs: 900_000,
        },
      );
      neutronSeconds = (JSON.parse(stdout.trim().split("\n").pop() ?? "{}") as { seconds: number }).seconds;
    }
    for (const routers of options.routers) {
      const seconds: Record<RealBackend, number> = { nftables: Number.NaN, iptables: Number.NaN };
      for (const name of ["nftables", "iptables"] as const) {
        const ids = Array.from({ length: routers }, () => randomUUID());
        const names = ids.map((id) => `cthbn-${id}`);
        options.log(`  node: ${routers} routers (${name}): creating namespaces ...`);
        await netns("add", names);
        const metrics = new AgentMetrics();
        const backend = makeBackend(name, metrics);
        const agent = await core(backend, metrics, `node-${name}-${routers}`, "cthbn-{router_id}");
        const bodies = ids.map((id, i) => body(id, 1, helpers(2, 2000 + (i % 50) * 2)));
        const limit = pLimit(options.concurrency);
        const started = performance.now();
        await Promise.all(
          bodies.map((text) =>
            limit(async () => {
              const outcome = await agent.apply(schema.parse(JSON.parse(text)));
              if (outcome.kind !== "applied" || outcome.rules.ipv4 !== 2)
                throw new Error(`not applied: ${outcome.kind}`);
            }),
          ),
        );
        seconds[name] = (performance.now() - started) / 1000;
        options.log(`  node: ${routers} routers (${name}): ${seconds[name].toFixed(3)} s`);
        await netns("delete", names);
      }
      node.push({
        routers,
        helpersPerRouter: 2,
        concurrency: options.concurrency,
        seconds,
        neutronSeconds,
        neutronRouters: neutronSeconds === undefined ? undefined : 100,
      });
    }
  } finally {
    for (const runner of Object.values(runners)) runner.close();
    rmSync(stateDir, { recursive: true, force: true });
  }
  return { floors, node };
}
