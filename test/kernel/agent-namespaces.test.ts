/**
 * `--create-namespaces` (local stack) on the real kernel: a missing router namespace is created and filled;
 * an empty snapshot removes a namespace the agent created, never one it found.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, expect, it } from "vitest";
import { AgentCore } from "../../agent/core.ts";
import { ExecIptables } from "../../agent/iptables/port.ts";
import { ownedHelperIds } from "../../agent/iptables/render.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { StateStore } from "../../agent/state.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import type { HelperRule, RouterSyncMessage } from "../../lib/schemas/index.ts";
import { iptablesBackend } from "../support/backends.ts";
import { rawSave, Sandbox } from "../support/netns.ts";
import { describeKernel } from "../support/requirements.ts";

describeKernel("agent --create-namespaces on the real kernel", () => {
  const sandbox = new Sandbox();
  const iptables = new ExecIptables();
  let stateDir: string;
  let core: AgentCore;

  const snapshot = (routerId: string, revision: number, helpers: HelperRule[]): RouterSyncMessage => ({
    v: 1,
    kind: "router-sync",
    router_id: routerId,
    revision,
    helpers,
    correlation_id: `ns-${revision}`,
    issued_at: new Date().toISOString(),
  });

  beforeAll(async () => {
    stateDir = await mkdtemp(join(tmpdir(), "cth-agent-ns-"));
    core = new AgentCore({
      node: "ns",
      backend: iptablesBackend(iptables, { catalog: new HelperCatalog() }),
      state: await StateStore.load(stateDir, "ns"),
      status: { send: async () => undefined },
      metrics: new AgentMetrics(),
      logger: pino({ level: "silent" }),
      namespacePattern: `cthns${sandbox.tag}-{router_id}`,
      createNamespaces: true,
    });
  });

  afterAll(async () => {
    await sandbox.cleanup();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  it("creates a missing namespace, fills it, and removes it again on an empty snapshot", async () => {
    const routerId = randomUUID();
    const ns = core.namespaceFor(routerId);
    sandbox.adopt(ns);
    expect(await iptables.namespaceExists(ns)).toBe(false);
    const ftp: HelperRule = { id: randomUUID(), protocol: "tcp", port: 21, helper: "ftp" };
    expect(await core.apply(snapshot(routerId, 1, [ftp]))).toMatchObject({ kind: "applied", changed: true });
    expect(ownedHelperIds(await rawSave(ns, "ipv4"))).toEqual([ftp.id]);
    await core.apply(snapshot(routerId, 2, []));
    expect(await iptables.namespaceExists(ns)).toBe(false);
  });

  it("empties but keeps a namespace it did not create", async () => {
    const routerId = randomUUID();
    const ns = await sandbox.namespace("", core.namespaceFor(routerId));
    const pristine = await rawSave(ns, "ipv4");
    await core.apply(
      snapshot(routerId, 1, [{ id: randomUUID(), protocol: "udp", port: 69, helper: "tftp" }]),
    );
    await core.apply(snapshot(routerId, 2, []));
    expect(await iptables.namespaceExists(ns)).toBe(true);
    expect(await rawSave(ns, "ipv4")).toBe(pristine);
  });
});
