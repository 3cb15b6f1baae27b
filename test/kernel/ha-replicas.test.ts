/**
 * L3 HA and DVR on one machine: the local stack's real functions and emulators, and two real agent processes
 * standing for two network nodes (own node queues, own status queues, own `--namespace-pattern` prefixes).
 * What each replica's kernel holds, what real FTP traffic through each replica gets from conntrack, and what
 * the API says while one node is frozen (SIGSTOP) and after it thaws (SIGCONT).
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { DeleteMessageCommand, ReceiveMessageCommand, SQSClient } from "@aws-sdk/client-sqs";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ownedHelperIds } from "../../agent/iptables/render.ts";
import { type RunningStack, startStack } from "../../scripts/local/stack.ts";
import { EMULATOR_CREDENTIALS } from "../support/emulators.ts";
import { eventually, inNs, rawSave, Sandbox } from "../support/netns.ts";
import { describeKernel } from "../support/requirements.ts";
import { routerWithListener, trackedConnection } from "../support/traffic.ts";
import { AgentProcess, agentFlags } from "./agent-support.ts";

const FTP_PORT = 2121;

interface Replica {
  host: string;
  namespace: string;
  applied_revision: number;
  in_sync: boolean;
}
interface HelperState {
  in_sync: boolean;
  revision: number;
  replicas: Replica[];
  draining: { host: string; revision: number }[];
}

describeKernel("HA and DVR routers: two agents, two node queues, real namespaces and traffic", () => {
  const sandbox = new Sandbox();
  const nodes = [`ha1-${sandbox.tag}`, `ha2-${sandbox.tag}`] as const;
  /** Each node's namespaces carry its own prefix, as two machines would keep them apart. */
  const prefixes = [`n1${sandbox.tag}`, `n2${sandbox.tag}`] as const;
  const nsOf = (node: 0 | 1, kind: "qrouter" | "snat", routerId: string) =>
    `${prefixes[node]}-${kind}-${routerId}`;
  /** The HA router's bindings: a qrouter replica on each node. */
  const onBothNodes = nodes.map((host) => ({ host, namespace: "qrouter" }));
  const haRouter = randomUUID();
  const dvrRouter = randomUUID();
  const migrated = randomUUID();
  const clients: string[] = [];
  const agents: AgentProcess[] = [];
  let stack: RunningStack;
  let dir: string;
  let sqs: SQSClient;

  const api = async (path: string, init: RequestInit = {}, token = stack.adminToken) => {
    const response = await fetch(`${stack.info.apiUrl}${path}`, {
      ...init,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    });
    return { status: response.status, body: (await response.json().catch(() => undefined)) as unknown };
  };
  const bind = (routerId: string, bindings: { host: string; namespace: string }[]) =>
    api(`/v1/routers/${routerId}`, {
      method: "PUT",
      body: JSON.stringify({ project_id: "demo", bindings }),
    });
  const addHelper = async (routerId: string, port: number): Promise<string> => {
    const id = randomUUID();
    const result = await api(
      "/v1/notifications",
      {
        method: "POST",
        body: JSON.stringify({
          event: "created",
          conntrack_helpers: [{ id, router_id: routerId, protocol: "tcp", port, helper: "ftp" }],
        }),
      },
      stack.demoToken,
    );
    expect(result.status, JSON.stringify(result.body)).toBe(202);
    return id;
  };
  const stateOf = async (routerId: string) =>
    (await api(`/v1/routers/${routerId}/conntrack-helpers`)).body as HelperState;
  const waitState = (routerId: string, what: string, test: (state: HelperState) => boolean) =>
    eventually(
      async () => {
        const state = await stateOf(routerId);
        return test(state) ? state : undefined;
      },
      60_000,
      what,
    );
  /** The helper ids our rules in `ns` carry (IPv4; the agent writes both families alike). */
  const ownRules = async (ns: string) => ownedHelperIds(await rawSave(ns, "ipv4"));
  const holds = async (ns: string, helperId: string) => (await ownRules(ns)).includes(helperId);

  /** Takes every message off `node`'s queue for `seconds`: a snapshot lost on its way. */
  async function loseSnapshots(node: 0 | 1, seconds: number): Promise<number> {
    const url = stack.info.nodes.find((entry) => entry.host === nodes[node])!.queue;
    let lost = 0;
    const until = Date.now() + seconds * 1000;
    while (Date.now() < until) {
      const got = await sqs.send(
        new ReceiveMessageCommand({ QueueUrl: url, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }),
      );
      for (const message of got.Messages ?? []) {
        await sqs.send(new DeleteMessageCommand({ QueueUrl: url, ReceiptHandle: message.ReceiptHandle! }));
        lost++;
      }
    }
    return lost;
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "cth-ha-"));
    for (const node of [0, 1] as const) {
      clients.push(await routerWithListener(sandbox, nsOf(node, "qrouter", haRouter), FTP_PORT));
    }
    // A dvr_snat node holds both namespaces of a DVR router; the migrated router ends up with both too.
    for (const ns of [nsOf(0, "qrouter", dvrRouter), nsOf(0, "snat", dvrRouter)])
      await sandbox.namespace("", ns);
    for (const ns of [nsOf(1, "qrouter", migrated), nsOf(1, "snat", migrated)])
      await sandbox.namespace("", ns);
    // Neutron's own rule in the raw table of the DVR router's qrouter namespace: never ours to touch.
    await inNs(nsOf(0, "qrouter", dvrRouter), [
      "iptables",
      "-t",
      "raw",
      "-A",
      "PREROUTING",
      "-p",
      "tcp",
      "--dport",
      "9697",
      "-j",
      "NOTRACK",
    ]);
    stack = await startStack({
      port: 0,
      dir,
      reconcileSeconds: 2,
      backend: "auto",
      agent: false,
      metricsPort: "0",
      demoRouterId: randomUUID(),
      print: () => undefined,
    });
    sqs = new SQSClient({
      region: "us-east-1",
      endpoint: stack.info.awsEndpoint,
      credentials: EMULATOR_CREDENTIALS,
      useQueueUrlAsEndpoint: false,
    });
    // Registering the HA router creates both nodes' queues; then each node's agent starts on its own.
    expect((await bind(haRouter, onBothNodes)).status).toBe(201);
    for (const node of [0, 1] as const) {
      const queues = stack.info.nodes.find((entry) => entry.host === nodes[node])!;
      agents.push(
        await AgentProcess.start(
          sandbox,
          agentFlags(
            {
              node: nodes[node],
              queueUrl: queues.queue,
              statusQueueUrl: queues.status_queue,
              stateDir: join(dir, `agent-${node}`),
              verifyKeysDir: stack.info.signing.verifyKeysDir,
            },
            [
              ...["--endpoint", stack.info.awsEndpoint, "--metrics-port", "off", "--visibility-timeout", "5"],
              ...["--namespace-pattern", `${prefixes[node]}-{namespace}-{router_id}`],
            ],
          ),
          {},
        ),
      );
    }
  }, 180_000);

  afterAll(async () => {
    for (const agent of agents) {
      if (agent.child.exitCode === null) {
        agent.child.kill("SIGCONT");
        agent.child.kill("SIGTERM");
        await agent.exited;
      }
    }
    sqs?.destroy();
    await stack?.stop();
    await sandbox.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it("an HA router bound to both nodes: both replicas hold the rule and the API says in sync", async () => {
    const helper = await addHelper(haRouter, FTP_PORT);
    const state = await waitState(haRouter, "both replicas in sync", (s) => s.in_sync);
    expect(state.replicas).toMatchObject([
      { host: nodes[0], namespace: "qrouter", applied_revision: state.revision, in_sync: true },
      { host: nodes[1], namespace: "qrouter", applied_revision: state.revision, in_sync: true },
    ]);
    for (const node of [0, 1] as const)
      expect(await holds(nsOf(node, "qrouter", haRouter), helper)).toBe(true);
  });

  it("real FTP traffic through each replica is tracked with helper=ftp", async () => {
    for (const node of [0, 1] as const) {
      const entry = await trackedConnection(clients[node]!, nsOf(node, "qrouter", haRouter), FTP_PORT);
      expect(entry).toContain(`dport=${FTP_PORT}`);
      expect(entry).toContain("helper=ftp");
    }
  });

  it("a frozen node (SIGSTOP) is the only replica behind, and the router reads in_sync false", async () => {
    agents[1]!.child.kill("SIGSTOP");
    const helper = await addHelper(haRouter, FTP_PORT + 1);
    const state = await waitState(
      haRouter,
      "node 1 at the new revision",
      (s) => s.replicas[0]!.in_sync && s.replicas[0]!.applied_revision === s.revision,
    );
    expect(state.in_sync).toBe(false);
    expect(state.replicas[1]).toMatchObject({ host: nodes[1], in_sync: false });
    expect(state.replicas[1]!.applied_revision).toBeLessThan(state.revision);
    expect(await holds(nsOf(0, "qrouter", haRouter), helper)).toBe(true);
    expect(await holds(nsOf(1, "qrouter", haRouter), helper)).toBe(false);
  });

  it("SIGCONT: the thawed node converges and the router is in sync again", async () => {
    agents[1]!.child.kill("SIGCONT");
    const state = await waitState(haRouter, "in sync after SIGCONT", (s) => s.in_sync);
    expect(state.replicas.every((replica) => replica.applied_revision === state.revision)).toBe(true);
    expect(await ownRules(nsOf(1, "qrouter", haRouter))).toHaveLength(2);
  });

  it("a DVR router: its rules in snat-<id>, none in qrouter-<id>, whose Neutron rule stays", async () => {
    expect((await bind(dvrRouter, [{ host: nodes[0], namespace: "snat" }])).status).toBe(201);
    const helper = await addHelper(dvrRouter, 21);
    await waitState(dvrRouter, "the DVR router in sync", (s) => s.in_sync);
    expect(await holds(nsOf(0, "snat", dvrRouter), helper)).toBe(true);
    expect(await ownRules(nsOf(0, "qrouter", dvrRouter))).toEqual([]);
    expect(await rawSave(nsOf(0, "qrouter", dvrRouter), "ipv4")).toContain("--dport 9697 -j NOTRACK");
  });

  it("migrating a legacy router to DVR moves its rules from qrouter-<id> to snat-<id>", async () => {
    expect((await bind(migrated, [{ host: nodes[1], namespace: "qrouter" }])).status).toBe(201);
    const helper = await addHelper(migrated, 21);
    await waitState(migrated, "the legacy router in sync", (s) => s.in_sync);
    expect(await holds(nsOf(1, "qrouter", migrated), helper)).toBe(true);
    expect((await bind(migrated, [{ host: nodes[1], namespace: "snat" }])).status).toBe(200);
    const state = await waitState(migrated, "the migrated router in sync", (s) => s.in_sync);
    expect(state.replicas).toMatchObject([{ namespace: "snat" }]);
    expect(await holds(nsOf(1, "snat", migrated), helper)).toBe(true);
    expect(await ownRules(nsOf(1, "qrouter", migrated))).toEqual([]);
  });

  it("removing a replica empties that namespace and its confirmation clears draining", async () => {
    expect((await bind(haRouter, [{ host: nodes[0], namespace: "qrouter" }])).status).toBe(200);
    const state = await waitState(
      haRouter,
      "unbound node confirmed",
      (s) => s.in_sync && s.draining.length === 0,
    );
    expect(state.replicas.map((replica) => replica.host)).toEqual([nodes[0]]);
    expect(await ownRules(nsOf(1, "qrouter", haRouter))).toEqual([]);
    expect(await ownRules(nsOf(0, "qrouter", haRouter))).toHaveLength(2);
  });

  it("a removed replica whose empty snapshot was lost is healed by the reconciler", async () => {
    expect((await bind(haRouter, onBothNodes)).status).toBe(200);
    await waitState(haRouter, "both replicas back in sync", (s) => s.in_sync && s.replicas.length === 2);
    expect(await ownRules(nsOf(1, "qrouter", haRouter))).toHaveLength(2);
    agents[1]!.child.kill("SIGSTOP");
    // Past the agent's long poll: no receive of the frozen agent is still open to take the empty snapshot.
    await sleep(1_500);
    expect((await bind(haRouter, [{ host: nodes[0], namespace: "qrouter" }])).status).toBe(200);
    // Longer than the agent's visibility timeout: whatever it had received comes back and is lost too.
    expect(await loseSnapshots(1, 7)).toBeGreaterThan(0);
    expect((await stateOf(haRouter)).draining).toMatchObject([{ host: nodes[1] }]);
    expect(await ownRules(nsOf(1, "qrouter", haRouter))).toHaveLength(2);
    agents[1]!.child.kill("SIGCONT");
    await waitState(haRouter, "the reconciler's re-send confirmed", (s) => s.draining.length === 0);
    expect(await ownRules(nsOf(1, "qrouter", haRouter))).toEqual([]);
  });
});
