/**
 * (g) A busy network node: the real agent process (the bundle `scripts/build-agent.ts` builds, as installed),
 * started with an empty state directory on a node whose queue holds one signed snapshot per router (what the
 * control plane sends for the agent's resync request), R routers x 2 helpers in R real namespaces. Measured:
 * from the agent's spawn until every router is applied and verified (its `cth_agent_applies_total` reaches
 * R), per backend and apply concurrency; the agent's peak RSS (VmHWM) and its command helper's apart; the
 * bytes in its state directory. Then every namespace is read back.
 *
 * (h) State bytes per snapshot: an agent (intake + core, in-memory nftables) holding N routers takes K
 * snapshots one after another; the bytes written per snapshot, beside the whole map that one rewrite of the
 * former state file (every flush the whole map) wrote.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pino } from "pino";
import { AgentCore } from "../agent/core.ts";
import { Intake } from "../agent/intake.ts";
import { AgentMetrics } from "../agent/metrics.ts";
import { MemoryNft } from "../agent/nftables/memory.ts";
import { StateStore } from "../agent/state.ts";
import { SqsCommandQueue } from "../lib/aws/command-queue.ts";
import type { RouterSyncMessage } from "../lib/schemas/index.ts";
import { nftablesBackend } from "../test/support/backends.ts";
import { EMULATOR_CREDENTIALS, EMULATOR_REGION, startEmulators } from "../test/support/emulators.ts";
import { testKey, verifyKeysDir } from "../test/support/signing.ts";
import { freePort } from "./stack-child.ts";
import { run } from "./stats.ts";

export type NodeScaleBackend = "nftables" | "iptables";

export interface NodeScaleRow {
  readonly backend: NodeScaleBackend;
  readonly routers: number;
  readonly concurrency: number;
  /** Agent spawn to every router applied and verified. */
  readonly seconds: number;
  /** Agent spawn to its first router applied: start-up (probe, resync request, first receive). */
  readonly firstAppliedSeconds: number;
  /** Peak resident set of the agent process (VmHWM), MiB. */
  readonly agentRssMiB: number;
  /** Peak resident set of its command helper, MiB (undefined: none seen). */
  readonly helperRssMiB: number | undefined;
  /**
   * CPU seconds spent until every router was verified: the agent itself, its command helper, the commands the
   * helper ran (nsenter, nft, iptables-restore...), and this bench process, which hosts the SQS emulator.
   */
  readonly cpuSeconds: {
    readonly agent: number;
    readonly helper: number;
    readonly commands: number;
    readonly emulatorAndBench: number;
  };
  /** Bytes in the state directory at the end. */
  readonly stateBytes: number;
  /** Namespaces read back at the end holding exactly their two helpers, of those read. */
  readonly verified: { readonly held: number; readonly read: number };
}

export interface StateBytesRow {
  readonly routers: number;
  readonly changes: number;
  /** Bytes the agent wrote to its state per snapshot (kept, applied, cleared; file folds included). */
  readonly bytesPerChange: number;
  /** What one whole-map rewrite per change writes (the store before issue 12). */
  readonly wholeMapBytes: number;
}

export interface NodeScaleOptions {
  readonly root: string;
  readonly routers: number;
  readonly backends: readonly NodeScaleBackend[];
  readonly concurrencyLevels: readonly number[];
  /** Namespaces read back at the end of each run (all when >= routers). */
  readonly verifySample: number;
  readonly log: (line: string) => void;
}

const HELPERS_PER_ROUTER = 2;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function snapshotFor(routerId: string, index: number): RouterSyncMessage {
  const port = 2000 + (index % 500) * 2;
  return {
    v: 1,
    kind: "router-sync",
    router_id: routerId,
    revision: 1,
    helpers: [
      { id: randomUUID(), protocol: "tcp", port, helper: "ftp" },
      { id: randomUUID(), protocol: "udp", port: port + 1, helper: "tftp" },
    ],
    correlation_id: `bench-${index}`,
    issued_at: new Date().toISOString(),
  };
}

/** `ip -batch`: one process for a thousand namespaces. */
function netns(verb: "add" | "delete", names: readonly string[]): void {
  if (names.length === 0) return;
  try {
    execFileSync("ip", ["-force", "-batch", "-"], {
      input: names.map((name) => `netns ${verb} ${name}\n`).join(""),
      stdio: ["pipe", "ignore", "pipe"],
    });
  } catch (error) {
    // -force goes on past a line that fails and exits 1: deleting what is not there is fine.
    if (verb === "add") throw error;
  }
}

/** VmHWM of a process in MiB, undefined once it is gone. */
function peakRssMiB(pid: number): number | undefined {
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

function childrenOf(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).flatMap((task) =>
      readFileSync(`/proc/${pid}/task/${task}/children`, "utf8")
        .trim()
        .split(/\s+/)
        .filter(Boolean)
        .map(Number),
    );
  } catch {
    return [];
  }
}

/** CPU time of a process and of its reaped children (/proc/PID/stat fields 14 to 17), in seconds; undefined once it is gone. */
function cpuSeconds(pid: number): { self: number; children: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command (which may hold spaces) start after the last ")".
    const fields = stat
      .slice(stat.lastIndexOf(")") + 2)
      .split(" ")
      .map(Number);
    const tick = 100; // USER_HZ on Linux
    return { self: (fields[11]! + fields[12]!) / tick, children: (fields[13]! + fields[14]!) / tick };
  } catch {
    return undefined;
  }
}

/** The long-lived `node` child among the agent's children (nsenter and nft come and go). */
function helperPid(pid: number): number | undefined {
  return childrenOf(pid).find((child) => {
    try {
      return readFileSync(`/proc/${child}/cmdline`, "utf8").includes("cth-agent-helper");
    } catch {
      return false;
    }
  });
}

async function appliedCount(port: number): Promise<number> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return text
      .split("\n")
      .filter((line) => line.startsWith("cth_agent_applies_total{"))
      .reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0);
  } catch {
    return 0;
  }
}

function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0);
}

/** What the namespace holds of ours: the helper rules' count, by the backend's own listing tool. */
function ownedRules(backend: NodeScaleBackend, ns: string): number {
  if (backend === "nftables") {
    const out = execFileSync("ip", ["netns", "exec", ns, "nft", "list", "ruleset"], { encoding: "utf8" });
    return (out.match(/ct helper set/g) ?? []).length;
  }
  const out = execFileSync("ip", ["netns", "exec", ns, "iptables-save", "-t", "raw"], { encoding: "utf8" });
  return (out.match(/-j CT --helper/g) ?? []).length;
}

async function buildAgent(root: string, outDir: string): Promise<string> {
  const outfile = join(outDir, "cth-agent.mjs");
  await run(
    process.execPath,
    [resolve(root, "node_modules/tsx/dist/cli.mjs"), "scripts/build-agent.ts", "--outfile", outfile],
    {
      cwd: root,
      timeoutMs: 120_000,
    },
  );
  return outfile;
}

export async function benchNodeScale(options: NodeScaleOptions): Promise<NodeScaleRow[]> {
  const { routers, log } = options;
  const out = mkdtempSync(join(tmpdir(), "cth-node-scale-"));
  const emu = await startEmulators();
  const rows: NodeScaleRow[] = [];
  const ids = Array.from({ length: routers }, () => randomUUID());
  const names = ids.map((id) => `cthns-${id}`);
  try {
    log("  node scale: building the agent bundle ...");
    const bundle = await buildAgent(options.root, out);
    const key = testKey("bench-node-scale");
    const keys = verifyKeysDir(key);
    for (const backend of options.backends) {
      for (const concurrency of options.concurrencyLevels) {
        const node = `scale-${backend}-${concurrency}-${randomUUID().slice(0, 4)}`;
        const { url } = await emu.createNodeQueue(node);
        const status = await emu.createStatusQueue(`cth-${node}-status`);
        // Fresh, empty namespaces each run: a cold start, not a re-read of the last run's rules.
        netns("delete", names);
        netns("add", names);
        // What the control plane sends for the agent's resync request, queued before the agent starts.
        await new SqsCommandQueue(emu.clients().sqs, () => url, key.signer).send(node, ids.map(snapshotFor));
        const stateDir = join(out, `state-${node}`);
        const port = await freePort();
        log(`  node scale: ${routers} routers, ${backend}, concurrency ${concurrency}: agent starting ...`);
        const started = performance.now();
        const benchCpu = process.cpuUsage();
        const agent: ChildProcess = spawn(
          process.execPath,
          [
            bundle,
            "--node",
            node,
            "--queue-url",
            url,
            "--status-queue-url",
            status.url,
            "--endpoint",
            emu.sqsEndpoint,
            "--verify-keys",
            keys,
            "--state-dir",
            stateDir,
            "--metrics-port",
            String(port),
            "--backend",
            backend,
            "--apply-concurrency",
            String(concurrency),
            "--namespace-pattern",
            "cthns-{router_id}",
            "--wait-seconds",
            "1",
            "--drift-interval",
            "3600",
            "--log-level",
            "warn",
          ],
          {
            stdio: ["ignore", "ignore", "inherit"],
            env: {
              ...process.env,
              AWS_REGION: EMULATOR_REGION,
              AWS_ACCESS_KEY_ID: EMULATOR_CREDENTIALS.accessKeyId,
              AWS_SECRET_ACCESS_KEY: EMULATOR_CREDENTIALS.secretAccessKey,
            },
          },
        );
        const pid = agent.pid!;
        let agentRss = 0;
        let helperRss: number | undefined;
        let helper: number | undefined;
        let applied = 0;
        let seconds = Number.NaN;
        let firstApplied: number | undefined;
        let cpu: NodeScaleRow["cpuSeconds"] = {
          agent: Number.NaN,
          helper: Number.NaN,
          commands: Number.NaN,
          emulatorAndBench: Number.NaN,
        };
        let lastLog = started;
        const deadline = started + 600_000;
        try {
          while (performance.now() < deadline) {
            if (agent.exitCode !== null) throw new Error(`agent exited with ${agent.exitCode}`);
            helper ??= helperPid(pid);
            agentRss = Math.max(agentRss, peakRssMiB(pid) ?? 0);
            if (helper !== undefined) helperRss = Math.max(helperRss ?? 0, peakRssMiB(helper) ?? 0);
            applied = await appliedCount(port);
            if (applied > 0 && firstApplied === undefined)
              firstApplied = (performance.now() - started) / 1000;
            if (performance.now() - lastLog > 2_000) {
              lastLog = performance.now();
              log(`    ${((lastLog - started) / 1000).toFixed(1)} s: ${applied} of ${routers} applied`);
            }
            if (applied >= routers) {
              seconds = (performance.now() - started) / 1000;
              break;
            }
            // Not faster: each scrape costs the agent a few ms of CPU (default process metrics), ~1% at this rate.
            await sleep(250);
          }
          if (Number.isNaN(seconds))
            throw new Error(`only ${applied} of ${routers} routers applied in 600 s`);
          agentRss = Math.max(agentRss, peakRssMiB(pid) ?? 0);
          const bench = process.cpuUsage(benchCpu);
          const agentCpu = cpuSeconds(pid);
          const helperCpu = helper === undefined ? undefined : cpuSeconds(helper);
          cpu = {
            agent: agentCpu?.self ?? Number.NaN,
            helper: helperCpu?.self ?? 0,
            // nsenter and the tools are the helper's children (or the agent's, without a helper).
            commands: (helperCpu?.children ?? 0) + (agentCpu?.children ?? 0),
            emulatorAndBench: (bench.user + bench.system) / 1e6,
          };
        } finally {
          agent.kill("SIGTERM");
          await new Promise((resolve) =>
            agent.exitCode !== null ? resolve(undefined) : agent.once("exit", resolve),
          );
        }
        const sample = names.filter(
          (_, i) => i % Math.max(1, Math.floor(routers / options.verifySample)) === 0,
        );
        const held = sample.filter((ns) => ownedRules(backend, ns) === HELPERS_PER_ROUTER).length;
        const row: NodeScaleRow = {
          backend,
          routers,
          concurrency,
          seconds,
          firstAppliedSeconds: firstApplied ?? Number.NaN,
          agentRssMiB: agentRss,
          helperRssMiB: helperRss,
          cpuSeconds: cpu,
          stateBytes: dirBytes(stateDir),
          verified: { held, read: sample.length },
        };
        rows.push(row);
        log(
          `  node scale: ${routers} routers, ${backend}, concurrency ${concurrency}: ${seconds.toFixed(2)} s, agent RSS ${agentRss.toFixed(0)} MiB, helper ${helperRss?.toFixed(0) ?? "-"} MiB, CPU s agent ${cpu.agent.toFixed(1)} helper ${cpu.helper.toFixed(1)} commands ${cpu.commands.toFixed(1)} emulator+bench ${cpu.emulatorAndBench.toFixed(1)}, ${held}/${sample.length} read back`,
        );
      }
    }
  } finally {
    netns("delete", names);
    await emu.stop();
    rmSync(out, { recursive: true, force: true });
  }
  return rows;
}

/**
 * Bytes the agent writes to its state per snapshot on a node of `routers`: the real intake and core (kept,
 * applied, cleared) over the in-memory nftables model, `changes` snapshots one after another.
 */
export async function benchStateBytes(routers: number, changes: number): Promise<StateBytesRow> {
  const dir = mkdtempSync(join(tmpdir(), "cth-state-bytes-"));
  try {
    const metrics = new AgentMetrics();
    const logger = pino({ level: "silent" });
    const state = await StateStore.load(dir, "bench");
    const nft = new MemoryNft();
    const core = new AgentCore({
      node: "bench",
      backend: nftablesBackend(nft, { metrics, logger }),
      state,
      status: { send: async () => undefined },
      metrics,
      logger,
      namespacePattern: "qrouter-{router_id}",
    });
    const intake = new Intake({
      core,
      state,
      metrics,
      logger,
      applyConcurrency: 4,
      retryBaseSeconds: 5,
      retryMaxSeconds: 300,
    });
    const ids = Array.from({ length: routers }, () => randomUUID());
    for (const id of ids) await nft.createNamespace(`qrouter-${id}`);
    const at = (index: number, revision: number) => ({ ...snapshotFor(ids[index]!, index), revision });
    await Promise.all(ids.map((_, index) => intake.accept(at(index, 1))));
    await intake.idle();
    const wholeMapBytes = Buffer.byteLength(
      JSON.stringify({ v: 1, node: "bench", routers: Object.fromEntries(state.entries()) }),
    );
    const before = state.bytesWritten;
    for (let change = 0; change < changes; change++) {
      await intake.accept(at(change % routers, 2 + change));
      await intake.idle();
    }
    if (state.pendingRouters().length > 0) throw new Error("snapshots left unapplied");
    return { routers, changes, bytesPerChange: (state.bytesWritten - before) / changes, wholeMapBytes };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
