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
import { Sandbox } from "../support/netns.ts";
import { describeKernel } from "../support/requirements.ts";
import { routerWithListener, trackedConnection } from "../support/traffic.ts";

const FTP_PORT = 2121;

describeKernel("real traffic through a router namespace the agent manages", () => {
  const sandbox = new Sandbox();
  const routerId = randomUUID();
  const ns = `qrouter-${routerId}`;
  let client: string;
  let stateDir: string;
  let core: AgentCore;
  const sent: StatusMessage[] = [];

  const connect = () => trackedConnection(client, ns, FTP_PORT);

  beforeAll(async () => {
    client = await routerWithListener(sandbox, ns, FTP_PORT);
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
    const entry = await connect();
    expect(entry).toContain(`dport=${FTP_PORT}`);
    expect(entry).toContain("helper=ftp");
  });

  it("after the helper is removed, a new connection is tracked without a helper", async () => {
    await core.apply(snapshot(2, []));
    const entry = await connect();
    expect(entry).toContain(`dport=${FTP_PORT}`);
    expect(entry).not.toContain("helper=");
    expect(sent.map((m) => m.kind === "applied" && m.revision)).toEqual([1, 2]);
  });
});
