/**
 * Real traffic: a client namespace talks to a router namespace over a veth pair (198.18.0.0/15). What the
 * agent applied must change what conntrack does to real packets: `helper=ftp` on a connection to a port
 * with the ftp helper, none once the helper is removed.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, expect, it } from "vitest";
import { AgentCore } from "../../agent/core.ts";
import { ExecIptables } from "../../agent/iptables.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { StateStore } from "../../agent/state.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import type { RouterSyncMessage, StatusMessage } from "../../lib/schemas/index.ts";
import { eventually, inNs, Sandbox } from "../support/netns.ts";
import { describeKernel } from "../support/requirements.ts";

const ROUTER_IP = "198.18.7.1";
const CLIENT_IP = "198.18.7.2";
const FTP_PORT = 2121;

describeKernel("real traffic through a router namespace the agent manages", () => {
  const sandbox = new Sandbox();
  const routerId = randomUUID();
  const ns = `qrouter-${routerId}`;
  let client: string;
  let stateDir: string;
  let core: AgentCore;
  const sent: StatusMessage[] = [];

  /** Connects from the client namespace, reads the banner, returns the client's source port. */
  const connect = async (): Promise<number> => {
    const script = `const s=require('net').connect(${FTP_PORT},'${ROUTER_IP}',()=>console.log(s.localPort));s.on('data',()=>{});s.on('end',()=>process.exit(0));s.on('error',e=>{console.error(e.message);process.exit(1)});`;
    const { stdout } = await inNs(client, [process.execPath, "-e", script]);
    return Number(stdout.trim());
  };

  const flow = async (sport: number): Promise<string> => {
    const { stdout } = await inNs(ns, ["conntrack", "-L", "-p", "tcp", "--sport", String(sport)]).catch(
      (error: { stdout?: string }) => ({ stdout: error.stdout ?? "" }),
    );
    return stdout;
  };

  beforeAll(async () => {
    await sandbox.namespace("", ns);
    client = await sandbox.namespace("cthcl");
    await sandbox.veth(client, `${CLIENT_IP}/24`, ns, `${ROUTER_IP}/24`);
    // A stateful filter rule, as every Neutron router has: conntrack stays active in the namespace whether or
    // not our raw chain exists, so "no helper" below is observed on a tracked connection.
    await inNs(ns, [
      "iptables",
      "-A",
      "INPUT",
      "-m",
      "conntrack",
      "--ctstate",
      "NEW,ESTABLISHED",
      "-j",
      "ACCEPT",
    ]);
    const listener = sandbox.spawn("ip", [
      "netns",
      "exec",
      ns,
      process.execPath,
      "-e",
      `require('net').createServer(s=>s.end('220 cth test\\r\\n')).listen(${FTP_PORT},'${ROUTER_IP}',()=>console.log('ready'))`,
    ]);
    await new Promise<void>((resolve, reject) => {
      listener.stdout?.once("data", () => resolve());
      listener.once("exit", (code) => reject(new Error(`listener exited ${code}`)));
    });
    stateDir = await mkdtemp(join(tmpdir(), "cth-agent-traffic-"));
    core = new AgentCore({
      node: "traffic",
      catalog: new HelperCatalog(),
      iptables: new ExecIptables(),
      state: await StateStore.load(stateDir, "traffic"),
      status: { send: async (message) => void sent.push(message) },
      metrics: new AgentMetrics(),
      logger: pino({ level: "silent" }),
      namespacePattern: "qrouter-{router_id}",
    });
  });

  afterAll(async () => {
    await sandbox.cleanup();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  const snapshot = (revision: number, helpers: { id: string; port: number }[]): RouterSyncMessage => ({
    v: 1,
    kind: "router-sync",
    router_id: routerId,
    revision,
    helpers: helpers.map(({ id, port }) => ({ id, protocol: "tcp" as const, port, helper: "ftp" })),
    correlation_id: `traffic-${revision}`,
    issued_at: new Date().toISOString(),
  });

  it("a connection to a port with the ftp helper is tracked with helper=ftp", async () => {
    const outcome = await core.apply(snapshot(1, [{ id: randomUUID(), port: FTP_PORT }]));
    expect(outcome).toMatchObject({ kind: "applied", changed: true, rules: { ipv4: 1, ipv6: 1 } });
    const sport = await connect();
    const entry = await eventually(async () => (await flow(sport)).includes(`sport=${sport}`) && flow(sport));
    expect(entry).toContain(`dport=${FTP_PORT}`);
    expect(entry).toContain("helper=ftp");
  });

  it("after the helper is removed, a new connection is tracked without a helper", async () => {
    await core.apply(snapshot(2, []));
    const sport = await connect();
    const entry = await eventually(async () => (await flow(sport)).includes(`sport=${sport}`) && flow(sport));
    expect(entry).toContain(`dport=${FTP_PORT}`);
    expect(entry).not.toContain("helper=");
    expect(sent.map((m) => m.kind === "applied" && m.revision)).toEqual([1, 2]);
  });
});
