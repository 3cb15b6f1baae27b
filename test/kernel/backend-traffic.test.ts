/**
 * Real traffic, once per backend: a client namespace talks to a router namespace over a veth pair
 * (198.18.0.0/15). What the agent applied must change what conntrack does to real packets: `helper=ftp` on
 * a connection to a port with the ftp helper, none once the helper is removed. Then a namespace switched
 * from one backend to the other keeps the helper and holds only the new backend's rules.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FirewallBackend } from "../../agent/backend.ts";
import { AgentCore } from "../../agent/core.ts";
import { ExecIptables } from "../../agent/iptables/port.ts";
import { ownedHelperIds } from "../../agent/iptables/render.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { ExecNft } from "../../agent/nftables/port.ts";
import { TABLE } from "../../agent/nftables/render.ts";
import { StateStore } from "../../agent/state.ts";
import type { RouterSyncMessage, StatusMessage } from "../../lib/schemas/index.ts";
import { iptablesBackend, nftablesBackend } from "../support/backends.ts";
import { inNs, rawSave, Sandbox } from "../support/netns.ts";
import { describeKernel } from "../support/requirements.ts";
import { routerWithListener, trackedConnection } from "../support/traffic.ts";

const FTP_PORT = 2121;
const makers = {
  iptables: (metrics: AgentMetrics) => iptablesBackend(new ExecIptables(), { metrics }),
  nftables: (metrics: AgentMetrics) => nftablesBackend(new ExecNft(), { metrics }),
} as const;
type Name = keyof typeof makers;

/** What each backend owns in `ns`, read with the kernel's own tools. */
async function owned(ns: string): Promise<{ iptables: string[]; nftables: boolean }> {
  const nft = await inNs(ns, ["nft", "list", "table", "inet", TABLE]).then(
    () => true,
    () => false,
  );
  return { iptables: ownedHelperIds(await rawSave(ns, "ipv4")), nftables: nft };
}

describeKernel("real traffic through a router namespace the agent manages", () => {
  const sandbox = new Sandbox();
  let stateDir: string;

  beforeAll(async () => {
    stateDir = await mkdtemp(join(tmpdir(), "cth-agent-traffic-"));
  });

  afterAll(async () => {
    await sandbox.cleanup();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  const snapshot = (routerId: string, revision: number, ids: string[]): RouterSyncMessage => ({
    v: 1,
    kind: "router-sync",
    router_id: routerId,
    revision,
    helpers: ids.map((id) => ({ id, protocol: "tcp" as const, port: FTP_PORT, helper: "ftp" })),
    correlation_id: `traffic-${revision}`,
    issued_at: new Date().toISOString(),
  });

  const agentCore = async (node: string, backend: Name, former: Name[], sent: StatusMessage[] = []) => {
    const metrics = new AgentMetrics();
    const formerBackends: FirewallBackend[] = former.map((name) => makers[name](metrics));
    return new AgentCore({
      node,
      backend: makers[backend](metrics),
      formerBackends,
      state: await StateStore.load(join(stateDir, node), node),
      status: { send: async (message) => void sent.push(message) },
      metrics,
      logger: pino({ level: "silent" }),
      namespacePattern: "qrouter-{router_id}",
    });
  };

  describe.each(Object.keys(makers) as Name[])("with the %s backend", (name) => {
    const routerId = randomUUID();
    const ns = `qrouter-${routerId}`;
    let client: string;
    let core: AgentCore;
    const sent: StatusMessage[] = [];

    beforeAll(async () => {
      client = await routerWithListener(sandbox, ns, FTP_PORT);
      core = await agentCore(`traffic-${name}`, name, [], sent);
    });

    it("a connection to a port with the ftp helper is tracked with helper=ftp", async () => {
      const outcome = await core.apply(snapshot(routerId, 1, [randomUUID()]));
      expect(outcome).toMatchObject({ kind: "applied", changed: true, rules: { ipv4: 1, ipv6: 1 } });
      const entry = await trackedConnection(client, ns, FTP_PORT);
      expect(entry).toContain(`dport=${FTP_PORT}`);
      expect(entry).toContain("helper=ftp");
    });

    it("after the helper is removed, a new connection is tracked without a helper", async () => {
      await core.apply(snapshot(routerId, 2, []));
      const entry = await trackedConnection(client, ns, FTP_PORT);
      expect(entry).toContain(`dport=${FTP_PORT}`);
      expect(entry).not.toContain("helper=");
      expect(sent.map((m) => m.kind === "applied" && m.revision)).toEqual([1, 2]);
    });
  });

  it.each([
    ["iptables", "nftables"],
    ["nftables", "iptables"],
  ] as [Name, Name][])(
    "a namespace switched from %s to %s keeps helper=ftp and holds only the new backend's rules",
    async (from, to) => {
      const routerId = randomUUID();
      const ns = `qrouter-${routerId}`;
      const client = await routerWithListener(sandbox, ns, FTP_PORT);
      const node = `switch-${from}-${randomUUID().slice(0, 4)}`;
      const id = randomUUID();
      const before = await agentCore(node, from, []);
      await before.apply(snapshot(routerId, 1, [id]));
      expect(await owned(ns)).toEqual(
        from === "iptables" ? { iptables: [id], nftables: false } : { iptables: [], nftables: true },
      );
      // The same node restarted with the other backend (its state intact), at the next revision.
      const after = await agentCore(node, to, [from]);
      await after.apply(snapshot(routerId, 2, [id]));
      expect(await owned(ns)).toEqual(
        to === "iptables" ? { iptables: [id], nftables: false } : { iptables: [], nftables: true },
      );
      expect(await trackedConnection(client, ns, FTP_PORT)).toContain("helper=ftp");
    },
  );
});
