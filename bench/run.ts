/**
 * `npm run bench [-- --json] [--quick] [--skip-neutron] [--only apply,backends,handler,e2e,replicas,cold,sweep,cost,burst,node] [--shared DIR]`
 * Every figure comes with the baseline measured in the same run and the ratio against the goal.
 * The shared dir (restore_floor.sh, neutron_cth_bench.py) defaults to ../shared beside the repo
 * (CTH_SHARED_DIR or --shared to override).
 */

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join, resolve } from "node:path";
import { type ApplyRow, benchAgentApply, neutronAvailable } from "./agent-apply.ts";
import { benchBackends, type FloorRow, type NodeRow } from "./backends.ts";
import { type BurstResult, benchBurst } from "./burst.ts";
import { benchColdStart, type ColdRow } from "./cold-start.ts";
import { benchCostCounts, type CostCounts } from "./cost-counts.ts";
import { benchEndToEnd, type EndToEndResult } from "./e2e.ts";
import {
  benchHandler,
  benchObservability,
  benchSigning,
  type HandlerRow,
  type ObservabilityRow,
  type SigningRow,
} from "./handler.ts";
import { benchNodeScale, benchStateBytes, type NodeScaleRow, type StateBytesRow } from "./node-scale.ts";
import { benchReconcileScale, type SweepRow } from "./reconcile-scale.ts";
import { benchReplicas, type ReplicasResult } from "./replicas.ts";
import { fmt, run } from "./stats.ts";

const ROOT = resolve(import.meta.dirname, "..");

interface Flags {
  json: boolean;
  quick: boolean;
  skipNeutron: boolean;
  only: Set<string>;
  shared: string;
}

function parseFlags(argv: readonly string[]): Flags {
  const flags: Flags = {
    json: false,
    quick: false,
    skipNeutron: false,
    only: new Set([
      "apply",
      "backends",
      "handler",
      "e2e",
      "replicas",
      "cold",
      "sweep",
      "cost",
      "burst",
      "node",
    ]),
    shared: process.env.CTH_SHARED_DIR ?? resolve(ROOT, "../shared/bench"),
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--json") flags.json = true;
    else if (arg === "--quick") flags.quick = true;
    else if (arg === "--skip-neutron") flags.skipNeutron = true;
    else if (arg === "--only") flags.only = new Set((argv[++i] ?? "").split(","));
    else if (arg === "--shared") flags.shared = resolve(argv[++i] ?? "");
    else throw new Error(`unknown flag ${arg}`);
  }
  // Accept either the shared dir itself or its bench/ subfolder.
  try {
    readFileSync(resolve(flags.shared, "restore_floor.sh"));
  } catch {
    flags.shared = resolve(flags.shared, "bench");
  }
  return flags;
}

async function machine() {
  const version = async (tool: string) => {
    try {
      return (await run(tool, ["--version"])).stdout.trim();
    } catch {
      return "missing";
    }
  };
  return {
    date: new Date().toISOString(),
    nproc: cpus().length,
    cpu: cpus()[0]?.model ?? "unknown",
    kernel: (await run("uname", ["-r"])).stdout.trim(),
    iptables: await version("iptables"),
    node: process.version,
  };
}

interface Goal {
  readonly name: string;
  readonly measured: string;
  readonly baseline: string;
  readonly ratio: string;
  readonly goal: string;
  readonly met: boolean | undefined;
}

function applyGoals(rows: readonly ApplyRow[]): Goal[] {
  return rows.map((row) => {
    const floorRatio = row.floorSeconds ? row.oursSeconds / row.floorSeconds : undefined;
    const neutronRatio = row.neutronSeconds ? row.neutronSeconds / row.oursSeconds : undefined;
    const isFull = row.case.startsWith("full");
    const goals: string[] = [];
    let met: boolean | undefined = floorRatio === undefined ? undefined : floorRatio <= 2;
    if (isFull) goals.push("<= 2x floor");
    else goals.push("(no goal; floor = 1-helper restore)");
    if (isFull && row.n === 500) {
      goals.push(">= 200x faster than Neutron");
      if (neutronRatio !== undefined) met = (met ?? true) && neutronRatio >= 200;
      else met = undefined;
    }
    if (!isFull) met = undefined;
    return {
      name: `agent apply: ${row.case}, N=${row.n} (median of ${row.reps})`,
      measured: fmt(row.oursSeconds * 1000, " ms"),
      baseline: `floor ${fmt((row.floorSeconds ?? Number.NaN) * 1000, " ms")}${row.restoreOnlySeconds ? `; our text, restores only ${fmt(row.restoreOnlySeconds * 1000, " ms")}` : ""}${row.neutronSeconds ? `; Neutron ${fmt(row.neutronSeconds, " s")}` : ""}`,
      ratio: `${fmt(floorRatio, "x floor")}${neutronRatio ? `; ${fmt(neutronRatio, "x faster than Neutron")}` : ""}`,
      goal: goals.join("; "),
      met,
    };
  });
}

function floorGoals(rows: readonly FloorRow[]): Goal[] {
  return rows.flatMap((row) => {
    const ratio = row.oursSeconds / row.nftFloorSeconds;
    const goals: Goal[] = [
      {
        name: `nftables backend apply, N=${row.n}: message to rules verified by the echo (median of ${row.reps})`,
        measured: fmt(row.oursSeconds * 1000, " ms"),
        baseline: `nft_floor.sh ${row.n} ${fmt(row.nftFloorSeconds * 1000, " ms")}; iptables backend ${fmt(row.iptablesSeconds * 1000, " ms")}`,
        ratio: `${fmt(ratio, "x nft floor")}; ${fmt(row.iptablesSeconds / row.oursSeconds, "x faster than the iptables backend")}`,
        goal: row.n === 1 ? "(reported)" : "<= 2x nft floor",
        met: row.n === 1 ? undefined : ratio <= 2,
      },
    ];
    if (row.restoreFloorSeconds !== undefined) {
      const vsRestore = row.oursSeconds / row.restoreFloorSeconds;
      goals.push({
        name: `nftables backend apply, N=${row.n}, against the iptables floor`,
        measured: fmt(row.oursSeconds * 1000, " ms"),
        baseline: `restore_floor.sh ${row.n} ${fmt(row.restoreFloorSeconds * 1000, " ms")}`,
        ratio: fmt(vsRestore, "x restore floor"),
        goal: "<= 0.5x restore floor",
        met: vsRestore <= 0.5,
      });
    }
    return goals;
  });
}

function nodeGoals(rows: readonly NodeRow[]): Goal[] {
  return rows.map((row) => {
    const perRouter =
      row.neutronSeconds === undefined ? undefined : row.neutronSeconds / (row.neutronRouters ?? 100);
    const neutronHere = perRouter === undefined ? undefined : perRouter * row.routers;
    const speedup = neutronHere === undefined ? undefined : neutronHere / row.seconds.nftables;
    return {
      name: `network node: ${row.routers} routers x ${row.helpersPerRouter} helpers at once, to every router verified (apply concurrency ${row.concurrency})`,
      measured: `nftables ${fmt(row.seconds.nftables, " s")}; iptables ${fmt(row.seconds.iptables, " s")}`,
      baseline:
        neutronHere === undefined
          ? "Neutron not run"
          : `Neutron --routers 100: ${fmt(row.neutronSeconds, " s")}${row.routers === 100 ? "" : ` (x ${row.routers / 100} = ${fmt(neutronHere, " s")})`}`,
      ratio:
        speedup === undefined
          ? `iptables / nftables ${fmt(row.seconds.iptables / row.seconds.nftables, "x")}`
          : `nftables ${fmt(speedup, "x")}, iptables ${fmt((neutronHere ?? 0) / row.seconds.iptables, "x")} faster than Neutron`,
      goal: row.routers === 100 ? ">= 50x faster than Neutron (nftables)" : "(reported)",
      met: row.routers === 100 && speedup !== undefined ? speedup >= 50 : undefined,
    };
  });
}

function handlerGoals(rows: readonly HandlerRow[]): Goal[] {
  return rows.map((row) => {
    const ratio = row.floorPerSecond / row.perSecond;
    return {
      name: `handler CPU path (${row.stores === "memory" ? "test/support/memory.ts stores" : "no-copy stores"}): ${row.helpers}-helper notification (${row.requests} requests, ${row.bodyBytes} B body)`,
      measured: `${fmt(row.perSecond, "/s")}, p50 ${fmt(row.p50Ms, " ms")}, p99 ${fmt(row.p99Ms, " ms")}`,
      baseline: `JSON.parse+zod ${fmt(row.floorPerSecond, "/s")}, p50 ${fmt(row.floorP50Ms, " ms")}, p99 ${fmt(row.floorP99Ms, " ms")}`,
      ratio: `${fmt(ratio, "x floor")} (time per request)`,
      goal: "<= 3x floor",
      met: ratio <= 3,
    };
  });
}

function observabilityGoals(rows: readonly ObservabilityRow[]): Goal[] {
  return rows.map((row) => {
    const ratio = row.plainPerSecond / row.observedPerSecond;
    return {
      name: `metrics and logging (Powertools Logger + Metrics, as deployed): ${row.helpers}-helper notification, no-copy stores (${row.requests} requests each, alternating; ${row.stdoutBytes} B to stdout)`,
      measured: `${fmt(row.observedPerSecond, "/s")}, p50 ${fmt(row.observedP50Ms, " ms")}, p99 ${fmt(row.observedP99Ms, " ms")}`,
      baseline: `same chain without them ${fmt(row.plainPerSecond, "/s")}, p50 ${fmt(row.plainP50Ms, " ms")}, p99 ${fmt(row.plainP99Ms, " ms")}`,
      ratio: `${fmt(ratio, "x")} (time per request)`,
      goal: row.helpers === 64 ? "<= 1.10x" : "(reported)",
      met: row.helpers === 64 ? ratio <= 1.1 : undefined,
    };
  });
}

function signingGoals(rows: readonly SigningRow[]): Goal[] {
  return rows.flatMap((row) => [
    {
      name: `snapshot signing in the handler: ${row.helpers}-helper notification, one snapshot each (${row.requests} requests, median of rounds)`,
      measured: `signing queue ${fmt(row.signedPerSecond, "/s")}, p50 ${fmt(row.signedP50Ms, " ms")}; +${fmt(row.addedUsPerSnapshot, " µs")} per snapshot`,
      baseline: `same queue, constant signer ${fmt(row.baselinePerSecond, "/s")}, p50 ${fmt(row.baselineP50Ms, " ms")}`,
      ratio: `${fmt(row.baselinePerSecond / row.signedPerSecond, "x")} baseline (time per request)`,
      goal: "(reported; no goal)",
      met: undefined,
    },
    {
      name: `signing alone: ECDSA P-256 over a ${row.snapshotBytes} B snapshot body`,
      measured: `sign p50 ${fmt(row.signP50Us, " µs")}, mean ${fmt(row.signMeanUs, " µs")}`,
      baseline: `agent verify mean ${fmt(row.verifyMeanUs, " µs")}; baseline request ${fmt(1_000_000 / row.baselinePerSecond, " µs")}`,
      ratio: `${fmt(row.signMeanUs / (1_000_000 / row.baselinePerSecond), "x")} of a baseline request`,
      goal: "(reported; no goal)",
      met: undefined,
    },
  ]);
}

function e2eGoals(result: EndToEndResult, backend: string): Goal[] {
  if (result.skipped) {
    return [
      {
        name: `end to end on the local stack (${backend})`,
        measured: "skipped",
        baseline: "-",
        ratio: "-",
        goal: "p50 < 150 ms, p99 < 500 ms",
        met: undefined,
      },
    ];
  }
  return [
    {
      name: `end to end (${backend} backend): 202 -> rule in namespace (${result.notifications} notifications, ${result.clients} clients, ${result.routers} routers)`,
      measured: `p50 ${fmt(result.p50Ms, " ms")}, p99 ${fmt(result.p99Ms, " ms")}, max ${fmt(result.maxMs, " ms")}`,
      baseline: `1 client alone: p50 ${fmt(result.aloneP50Ms, " ms")}, p99 ${fmt(result.aloneP99Ms, " ms")}; POST p50 ${fmt(result.postP50Ms, " ms")}; ${fmt(result.throughputPerSecond, "/s")} through`,
      ratio: `${fmt(result.p50Ms / 150, "x")} of p50 goal, ${fmt(result.p99Ms / 500, "x")} of p99 goal`,
      goal: "p50 < 150 ms, p99 < 500 ms",
      met: result.p50Ms < 150 && result.p99Ms < 500,
    },
  ];
}

function replicaGoals(result: ReplicasResult): Goal[] {
  const goal = "(reported: the cost of a second replica)";
  if (result.skipped) {
    return [
      { name: "HA router, 2 replicas", measured: "skipped", baseline: "-", ratio: "-", goal, met: undefined },
    ];
  }
  return [
    {
      name: `HA router: 202 -> rule in both replicas (${result.samples} samples, alternating)`,
      measured: `p50 ${fmt(result.haP50Ms, " ms")}, p99 ${fmt(result.haP99Ms, " ms")} (first replica p50 ${fmt(result.haFirstP50Ms, " ms")})`,
      baseline: `1 replica: p50 ${fmt(result.singleP50Ms, " ms")}, p99 ${fmt(result.singleP99Ms, " ms")}`,
      ratio: `${fmt(result.haP50Ms / result.singleP50Ms, "x")} of 1 replica (p50)`,
      goal,
      met: undefined,
    },
  ];
}

function coldGoals(rows: readonly ColdRow[]): Goal[] {
  const bare = rows.find((row) => row.name === "(bare handler)");
  const sdk = rows.find((row) => row.name === "(SDK clients only)");
  return rows
    .filter((row) => row !== bare && row !== sdk)
    .map((row) => ({
      name: `cold start: ${row.name}`,
      measured: `${fmt(row.bytes / 1024, " KB")}, import ${fmt(row.importMs, " ms")} (process ${fmt(row.processMs, " ms")})`,
      baseline: `bare handler: import ${fmt(bare?.importMs, " ms")} (process ${fmt(bare?.processMs, " ms")}); SDK clients alone: import ${fmt(sdk?.importMs, " ms")}`,
      ratio: `${fmt(row.importMs / (bare?.importMs ?? Number.NaN), "x")} bare; ours beyond the SDK ${fmt(row.importMs - (sdk?.importMs ?? Number.NaN), " ms")}`,
      goal: "< 150 KB, import < 100 ms",
      met: row.bytes < 150 * 1024 && row.importMs < 100,
    }));
}

function sweepGoals(rows: readonly SweepRow[]): Goal[] {
  const smallest = rows[0];
  const largest = rows.at(-1);
  if (!smallest || !largest) return [];
  const requests = (row: SweepRow) => Object.values(row.dynamo.requests).reduce((sum, n) => sum + n, 0);
  const perSize = rows.map((row) => ({
    name: `reconciler sweep: ${row.outOfSync} out of sync in ${row.routers} routers (dynalite, fauxqs; median of ${row.sweeps})`,
    measured: `${fmt(row.medianSweepMs, " ms")}; DynamoDB ${requests(row)} requests, ${row.dynamo.itemsRead} items, ${fmt(row.dynamo.readUnits, " RCU")}; SQS ${row.sqs.billedRequests} requests`,
    baseline: `loaded in ${fmt(row.loadSeconds, " s")}; resent ${row.summary.resent}`,
    ratio: "-",
    goal: "(reported)",
    met: undefined,
  }));
  const time = largest.medianSweepMs / smallest.medianSweepMs;
  const items = largest.dynamo.itemsRead / smallest.dynamo.itemsRead;
  return [
    ...perSize,
    {
      name: `reconciler sweep: ${largest.routers} routers against ${smallest.routers}`,
      measured: `${fmt(largest.medianSweepMs, " ms")}, ${largest.dynamo.itemsRead} items read`,
      baseline: `${fmt(smallest.medianSweepMs, " ms")}, ${smallest.dynamo.itemsRead} items read`,
      ratio: `time ${fmt(time, "x")}; items read ${fmt(items, "x")}; requests ${fmt(requests(largest) / requests(smallest), "x")}`,
      goal: "<= 1.5x (time and items read)",
      met: time <= 1.5 && items <= 1.5,
    },
  ];
}

function costGoals(counts: CostCounts): Goal[] {
  const steps = [
    ["HTTP function, POST /v1/notifications", counts.http],
    ["HTTP function with an Idempotency-Key", counts.httpIdempotent],
    ["agent's applied report (SqsStatusSink)", counts.statusReport],
    ["status function on that report", counts.status],
  ] as const;
  return steps.map(([name, step]) => ({
    name: `cost counts per notification (1 router, 1 helper created): ${name} (median of ${counts.notifications})`,
    measured: `DynamoDB ${JSON.stringify(step.dynamo.requests)}, ${fmt(step.dynamo.readUnits, " RCU")}, ${fmt(step.dynamo.writeUnits, " WCU")} + ${fmt(step.dynamo.indexWriteUnits, " WCU")} in indexes; SQS ${JSON.stringify(step.sqs.requests)} (${step.sqs.billedRequests} billed)`,
    baseline: `${fmt(step.medianMs, " ms")} in process on the emulators; snapshot ${counts.snapshotBytes} B, item ${counts.routerItemBytes} B`,
    ratio: step.alike ? "every notification alike" : "notifications differ",
    goal: "(reported: RESULTS.md cost model)",
    met: undefined,
  }));
}

function burstGoals(result: BurstResult): Goal[] {
  const size = `${result.notifications} notifications over ${result.routers} routers from ${result.clients} clients (${result.backend})`;
  if (result.skipped) {
    const goal = "drain <= 10 s after the last 202";
    return [{ name: `burst: ${size}`, measured: "skipped", baseline: "-", ratio: "-", goal, met: undefined }];
  }
  const replay = result.replay;
  const replayOk =
    replay !== undefined &&
    replay.statuses["202"] === result.notifications &&
    replay.differing === 0 &&
    replay.moved.length === 0 &&
    replay.appliesDelta === 0 &&
    replay.messagesDelta === 0;
  const allTaken = result.statuses["202"] === result.notifications;
  const converged =
    result.converged &&
    result.notAtLastRevision.length === 0 &&
    result.desiredMismatch.length === 0 &&
    result.kernelMismatch.length === 0;
  const dlqEmpty = result.dlq.node === 0 && result.dlq.status === 0;
  return [
    {
      name: `burst: ${size}, end to end against intake`,
      measured: `end to end ${fmt(result.endToEndPerSecond, "/s")}; drained ${fmt(result.drainSeconds, " s")} after the last 202 (queue empty after ${fmt(result.queueEmptySeconds, " s")}; peak ${result.peakQueued} queued, ${result.queuedAtLast202} at the last 202); CPU s: stack ${fmt(result.cpu.stack)}, agent ${fmt(result.cpu.agent)}; load ${fmt(result.loadAverage)}`,
      baseline: `intake ${fmt(result.intakePerSecond, "/s")} (${fmt(result.intakeSeconds, " s")}, ${result.retries} retries); POST p50 ${fmt(result.post.p50Ms, " ms")}, p99 ${fmt(result.post.p99Ms, " ms")}`,
      ratio: `${fmt(result.endToEndPerSecond / result.intakePerSecond, "x")} of intake`,
      goal: "drain <= 10 s after the last 202",
      met: result.converged && result.drainSeconds <= 10,
    },
    {
      name: `burst: 202 -> rule in the kernel (${result.latency.samples} samples from rule monitors)`,
      measured: `p50 ${fmt(result.latency.p50Ms, " ms")}, p99 ${fmt(result.latency.p99Ms, " ms")}, max ${fmt(result.latency.maxMs, " ms")} (a rule committed before its 202 arrived counts 0); POST sent -> kernel p50 ${fmt(result.latency.fromSendP50Ms, " ms")}, p99 ${fmt(result.latency.fromSendP99Ms, " ms")}`,
      baseline: `POST p50 ${fmt(result.post.p50Ms, " ms")}, p99 ${fmt(result.post.p99Ms, " ms")}`,
      ratio: `p99 ${fmt(result.latency.p99Ms / result.post.p99Ms, "x")} POST p99`,
      goal: "(reported)",
      met: undefined,
    },
    {
      name: "burst: agent applies per notification",
      measured: `${fmt(result.appliesPerNotification)} (${result.applies.changed} changed, ${result.applies.unchanged} unchanged; messages ${JSON.stringify(result.messages)})`,
      baseline: `1 per notification without coalescing; ${result.routers} at the least (one per router)`,
      ratio: fmt(result.appliesPerNotification, "x"),
      goal: "(reported; coalescing shows as well below 1)",
      met: undefined,
    },
    {
      name: "burst: all taken, every router at its last revision, DLQs empty, replay changes nothing",
      measured: `202s ${JSON.stringify(result.statuses)}; ${result.notAtLastRevision.length} behind, ${result.kernelMismatch.length} namespaces differ; DLQs ${result.dlq.node}/${result.dlq.status}; replay ${replay ? `${JSON.stringify(replay.statuses)}, ${replay.differing} answers differ, ${replay.moved.length} routers moved, ${replay.appliesDelta} applies` : "not run (not converged)"}`,
      baseline: `registration ${fmt(result.registerSeconds, " s")} (each router with one helper)`,
      ratio: "-",
      goal: "all yes",
      met: allTaken && converged && dlqEmpty && replayOk,
    },
  ];
}

/** Node scale against Neutron's per-router time x routers; the best concurrency per backend is the one judged. */
function nodeScaleGoals(rows: readonly NodeScaleRow[], neutronPerRouterSeconds: number | undefined): Goal[] {
  const best = new Map<string, NodeScaleRow>();
  for (const row of rows) {
    const held = best.get(row.backend);
    if (!held || row.seconds < held.seconds) best.set(row.backend, row);
  }
  return rows.map((row) => {
    const neutron = neutronPerRouterSeconds === undefined ? undefined : neutronPerRouterSeconds * row.routers;
    const speedup = neutron === undefined ? undefined : neutron / row.seconds;
    const judged = best.get(row.backend) === row;
    return {
      name: `node cold start: agent process, empty state, ${row.routers} routers x 2 helpers queued, ${row.backend}, apply concurrency ${row.concurrency}${judged ? " (best)" : ""}`,
      measured: `${fmt(row.seconds, " s")} (first apply at ${fmt(row.firstAppliedSeconds, " s")}); agent RSS ${fmt(row.agentRssMiB, " MiB")}, command helper ${fmt(row.helperRssMiB ?? Number.NaN, " MiB")}; state dir ${fmt(row.stateBytes / 1024, " KiB")}; ${row.verified.held}/${row.verified.read} namespaces read back`,
      baseline:
        neutron === undefined
          ? "Neutron not run"
          : `Neutron ${fmt(neutronPerRouterSeconds! * 1000, " ms")}/router (--routers 100) x ${row.routers} = ${fmt(neutron, " s")}`,
      ratio: speedup === undefined ? "-" : `${fmt(speedup, "x")} faster than Neutron`,
      goal: ">= 50x faster than Neutron; agent RSS <= 150 MiB; every namespace read back",
      met:
        row.verified.held === row.verified.read &&
        row.agentRssMiB <= 150 &&
        (speedup === undefined || !judged ? undefined : speedup >= 50),
    };
  });
}

function stateBytesGoals(rows: readonly StateBytesRow[]): Goal[] {
  const small = rows.find((row) => row.routers === Math.min(...rows.map((r) => r.routers)));
  return rows.map((row) => ({
    name: `agent state bytes per snapshot on a node of ${row.routers} routers (${row.changes} snapshots, kept, applied, cleared)`,
    measured: `${fmt(row.bytesPerChange, " B")}`,
    baseline: `${small ? `${fmt(small.bytesPerChange, " B")} at ${small.routers} routers; ` : ""}a whole-map rewrite: ${fmt(row.wholeMapBytes / 1024, " KiB")}`,
    ratio: small ? `${fmt(row.bytesPerChange / small.bytesPerChange, "x")} the small node's` : "-",
    goal: "<= 10x those at 10 routers",
    met: small ? row.bytesPerChange <= 10 * small.bytesPerChange : undefined,
  }));
}

function table(goals: readonly Goal[]): string {
  const header = ["benchmark", "measured", "same-run baseline", "ratio", "goal", "met"];
  const cells = goals.map((g) => [
    g.name,
    g.measured,
    g.baseline,
    g.ratio,
    g.goal,
    g.met === undefined ? "-" : g.met ? "yes" : "NO",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((row) => row[i]!.length)));
  const line = (row: readonly string[]) => `| ${row.map((cell, i) => cell.padEnd(widths[i]!)).join(" | ")} |`;
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...cells.map(line)].join("\n");
}

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  const log = (line: string) => {
    if (!flags.json) console.log(line);
    else console.error(line);
  };
  const result: Record<string, unknown> = {
    machine: await machine(),
    flags: { ...flags, only: [...flags.only] },
  };
  const goals: Goal[] = [];
  if (flags.only.has("handler")) {
    log("handler CPU path ...");
    const rows = await benchHandler({
      requests: flags.quick ? { 1: 3_000, 64: 500 } : { 1: 20_000, 64: 3_000 },
    });
    result.handler = rows;
    goals.push(...handlerGoals(rows));
    log("metrics and logging cost ...");
    const observed = await benchObservability({
      requests: flags.quick ? { 1: 3_000, 64: 500 } : { 1: 20_000, 64: 3_000 },
    });
    result.observability = observed;
    goals.push(...observabilityGoals(observed));
    log("snapshot signing cost ...");
    const signing = await benchSigning({
      requests: flags.quick ? { 1: 2_000, 64: 300 } : { 1: 10_000, 64: 1_500 },
      rounds: flags.quick ? 2 : 5,
      signs: flags.quick ? 2_000 : 10_000,
    });
    result.signing = signing;
    goals.push(...signingGoals(signing));
  }
  if (flags.only.has("cold")) {
    log("cold start ...");
    const rows = await benchColdStart({ root: ROOT, reps: flags.quick ? 3 : 7 });
    result.coldStart = rows;
    goals.push(...coldGoals(rows));
  }
  if (flags.only.has("apply")) {
    log("agent apply ...");
    const rows = await benchAgentApply({
      sizes: [1, 100, 500, 2000],
      reps: flags.quick ? 3 : 5,
      sharedDir: flags.shared,
      neutronMax: 500,
      skipNeutron: flags.skipNeutron || flags.quick,
      log,
    });
    result.agentApply = rows;
    goals.push(...applyGoals(rows));
  }
  if (flags.only.has("backends")) {
    log("firewall backends: nftables against its floor, a network node ...");
    const neutronMissing =
      flags.skipNeutron || flags.quick ? "skipped" : await neutronAvailable(flags.shared);
    const backends = await benchBackends({
      sizes: [1, 100, 500, 2000],
      reps: flags.quick ? 3 : 7,
      routers: flags.quick ? [100] : [100, 1000],
      concurrency: 4,
      sharedDir: flags.shared,
      neutron: neutronMissing === undefined,
      log,
    });
    result.backends = backends;
    goals.push(...floorGoals(backends.floors), ...nodeGoals(backends.node));
  }
  if (flags.only.has("e2e")) {
    log("end to end on the local stack ...");
    const runs: Record<string, EndToEndResult> = {};
    for (const backend of ["iptables", "nftables"] as const) {
      log(`  with the ${backend} backend ...`);
      const e2e = await benchEndToEnd({
        root: ROOT,
        notifications: flags.quick ? 100 : 240,
        clients: 10,
        backend,
        log,
      });
      runs[backend] = e2e;
      if (e2e.skipped) log(`  end to end skipped: ${e2e.skipped}`);
      goals.push(...e2eGoals(e2e, backend));
    }
    result.endToEnd = runs;
  }
  if (flags.only.has("replicas")) {
    log("HA router on two nodes vs one ...");
    const replicas = await benchReplicas({ root: ROOT, samples: flags.quick ? 20 : 60, log });
    result.replicas = replicas;
    if (replicas.skipped) log(`  replicas skipped: ${replicas.skipped}`);
    goals.push(...replicaGoals(replicas));
  }
  if (flags.only.has("sweep")) {
    log("reconciler sweep against table size ...");
    const rows = await benchReconcileScale({
      sizes: flags.quick ? [1_000, 10_000] : [10_000, 100_000],
      outOfSync: 10,
      sweeps: flags.quick ? 3 : 7,
      log,
    });
    result.reconcileSweep = rows;
    goals.push(...sweepGoals(rows));
  }
  if (flags.only.has("cost")) {
    log("requests per notification, for the cost model ...");
    const counts = await benchCostCounts({ notifications: flags.quick ? 10 : 50, log });
    result.costCounts = counts;
    goals.push(...costGoals(counts));
  }
  if (flags.only.has("burst")) {
    const size = flags.quick
      ? { routers: 100, notifications: 1_000, clients: 20 }
      : { routers: 1_000, notifications: 10_000, clients: 50 };
    log(
      `a burst on the local stack: ${size.notifications} notifications, ${size.routers} routers, ${size.clients} clients ...`,
    );
    const burst = await benchBurst({ root: ROOT, ...size, log });
    result.burst = burst;
    if (burst.skipped) log(`  burst skipped: ${burst.skipped}`);
    goals.push(...burstGoals(burst));
  }
  if (flags.only.has("node")) {
    log("a busy network node: the agent's cold start on 1,000 routers, its state bytes ...");
    const states = [await benchStateBytes(10, 500), await benchStateBytes(1_000, 500)];
    result.stateBytes = states;
    goals.push(...stateBytesGoals(states));
    let neutronPerRouterSeconds: number | undefined;
    const neutronMissing =
      flags.skipNeutron || flags.quick ? "skipped" : await neutronAvailable(flags.shared);
    if (neutronMissing === undefined) {
      log("  neutron 2 --routers 100 (about 15 s) ...");
      const { stdout } = await run(join(flags.shared, "neutron_cth_bench.py"), ["2", "--routers", "100"], {
        timeoutMs: 900_000,
      });
      neutronPerRouterSeconds =
        (JSON.parse(stdout.trim().split("\n").pop() ?? "{}") as { seconds: number }).seconds / 100;
    } else log(`  Neutron not run: ${neutronMissing}`);
    const rows = await benchNodeScale({
      root: ROOT,
      routers: flags.quick ? 200 : 1_000,
      backends: ["nftables", "iptables"],
      concurrencyLevels: flags.quick ? [4] : [2, 4, 8],
      verifySample: flags.quick ? 200 : 1_000,
      log,
    });
    result.nodeScale = { neutronPerRouterSeconds, rows };
    goals.push(...nodeScaleGoals(rows, neutronPerRouterSeconds));
  }
  result.goals = goals;
  // The last run is kept for RESULTS.md (bench/out is ignored by git).
  mkdirSync(resolve(ROOT, "bench/out"), { recursive: true });
  writeFileSync(resolve(ROOT, "bench/out/last.json"), `${JSON.stringify(result, null, 2)}\n`);
  if (flags.json) console.log(JSON.stringify(result));
  else {
    console.log("");
    console.log(table(goals));
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
