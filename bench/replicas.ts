/**
 * (d) An L3 HA router on two nodes against a router on one, in the same local stack and the same run: time
 * from the 202 until every replica's kernel holds the new rule (the later of the two commits). The second
 * node is a second real agent on this machine with its own node queue, status queue and namespace prefix,
 * as the kernel suite runs it. Samples alternate between the two routers so drift in the machine's load
 * falls on both rows alike.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type AgentProcess, spawnAgent } from "../scripts/local/agent-process.ts";
import type { StackInfo } from "../scripts/local/stack.ts";
import { EMULATOR_CREDENTIALS } from "../test/support/emulators.ts";
import { post, RuleMonitor, untilSaved } from "./e2e.ts";
import { api, stackMissing, startStackChild } from "./stack-child.ts";
import { run, summarize } from "./stats.ts";

export interface ReplicasResult {
  readonly skipped?: string;
  readonly samples: number;
  readonly singleP50Ms: number;
  readonly singleP99Ms: number;
  /** 202 until both replicas hold the rule. */
  readonly haP50Ms: number;
  readonly haP99Ms: number;
  /** 202 until the first replica holds it (the spread between the two is fan-out plus the second agent). */
  readonly haFirstP50Ms: number;
}

const SECOND_NODE = "net-2";
const SECOND_PREFIX = "cthbench2";

/** Node net-2's agent, as the stack runs node local's (spawnAgent), with its own queues and prefix. */
async function startSecondAgent(info: StackInfo, stateDir: string, backend: string): Promise<AgentProcess> {
  const node = info.nodes.find((entry) => entry.host === SECOND_NODE);
  if (!node) throw new Error(`the stack made no queues for ${SECOND_NODE}`);
  const tail: string[] = [];
  const agent = spawnAgent({
    args: [
      ...["--node", SECOND_NODE, "--queue-url", node.queue, "--status-queue-url", node.status_queue],
      ...["--verify-keys", info.signing.verifyKeysDir, "--endpoint", info.awsEndpoint],
      ...["--state-dir", stateDir, "--metrics-port", "off", "--wait-seconds", "5", "--create-namespaces"],
      ...["--namespace-pattern", `${SECOND_PREFIX}-{namespace}-{router_id}`, "--backend", backend],
    ],
    env: {
      ...process.env,
      AWS_ACCESS_KEY_ID: EMULATOR_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: EMULATOR_CREDENTIALS.secretAccessKey,
    },
    print: (line) => {
      tail.push(line);
      if (tail.length > 50) tail.shift();
    },
  });
  await agent.started.catch((error: unknown) => {
    throw new Error(`second agent did not start (${String(error)}):\n${tail.join("\n")}`);
  });
  return agent;
}

export async function benchReplicas(options: {
  root: string;
  samples: number;
  log: (line: string) => void;
}): Promise<ReplicasResult> {
  const empty = {
    samples: 0,
    singleP50Ms: Number.NaN,
    singleP99Ms: Number.NaN,
    haP50Ms: Number.NaN,
    haP99Ms: Number.NaN,
    haFirstP50Ms: Number.NaN,
  };
  const missing = stackMissing(options.root);
  if (missing) return { skipped: missing, ...empty };
  const stack = await startStackChild(options.root);
  const monitors: RuleMonitor[] = [];
  const stateDir = mkdtempSync(join(tmpdir(), "cth-bench-agent2-"));
  let second: AgentProcess | undefined;
  const single = randomUUID();
  const ha = randomUUID();
  const haSecondNs = `${SECOND_PREFIX}-qrouter-${ha}`;
  try {
    if (stack.backend !== "iptables" && stack.backend !== "nftables")
      return { skipped: `the stack's agent runs "${stack.backend}"`, ...empty };
    const backend = stack.backend;
    const register = async (routerId: string, hosts: string[]) => {
      const bindings = hosts.map((host) => ({ host, namespace: "qrouter" }));
      const put = await api(stack, stack.adminToken, "PUT", `/v1/routers/${routerId}`, {
        project_id: stack.project,
        bindings,
      });
      if (put.status >= 300) throw new Error(`PUT router: ${put.status} ${JSON.stringify(put.json)}`);
    };
    await register(single, ["local"]);
    await register(ha, ["local", SECOND_NODE]);
    const info = JSON.parse(readFileSync(join(stack.dir, "stack.json"), "utf8")) as StackInfo;
    second = await startSecondAgent(info, stateDir, backend);
    // A first helper each (not timed) makes the namespaces, so the monitors have something to watch.
    const primed = [randomUUID(), randomUUID()] as const;
    await post(stack, single, primed[0], 1000);
    await post(stack, ha, primed[1], 1000);
    const namespaces: [string, string][] = [
      [`qrouter-${single}`, primed[0]],
      [`qrouter-${ha}`, primed[1]],
      [haSecondNs, primed[1]],
    ];
    for (const [ns, id] of namespaces) await untilSaved(ns, id);
    const [onSingle, onHaLocal, onHaSecond] = await Promise.all(
      namespaces.map(([ns]) => RuleMonitor.start(ns, backend)),
    );
    monitors.push(onSingle!, onHaLocal!, onHaSecond!);
    const singleMs: number[] = [];
    const haMs: number[] = [];
    const haFirstMs: number[] = [];
    for (let i = 0; i < options.samples; i++) {
      let helperId = randomUUID();
      await post(stack, single, helperId, 2000 + i);
      let accepted = performance.now();
      singleMs.push(Math.max(0, (await onSingle!.seen(helperId, 30_000)) - accepted));
      helperId = randomUUID();
      await post(stack, ha, helperId, 2000 + i);
      accepted = performance.now();
      const both = await Promise.all([onHaLocal!.seen(helperId, 30_000), onHaSecond!.seen(helperId, 30_000)]);
      haMs.push(Math.max(0, Math.max(...both) - accepted));
      haFirstMs.push(Math.max(0, Math.min(...both) - accepted));
    }
    options.log(
      `  1 replica p50 ${summarize(singleMs).p50.toFixed(0)} ms, 2 replicas p50 ${summarize(haMs).p50.toFixed(0)} ms`,
    );
    return {
      samples: options.samples,
      singleP50Ms: summarize(singleMs).p50,
      singleP99Ms: summarize(singleMs).p99,
      haP50Ms: summarize(haMs).p50,
      haP99Ms: summarize(haMs).p99,
      haFirstP50Ms: summarize(haFirstMs).p50,
    };
  } finally {
    for (const monitor of monitors) monitor.stop();
    await second?.stop();
    await stack.stop();
    // The stack removes the namespaces of its own agent; the second node's is this benchmark's to remove.
    await run("ip", ["netns", "delete", haSecondNs]).catch(() => undefined);
    rmSync(stateDir, { recursive: true, force: true });
  }
}
