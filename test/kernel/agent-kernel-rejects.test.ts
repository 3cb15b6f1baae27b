/**
 * A helper the running kernel lacks must not take a router's other helpers down (Neutron defect 5).
 * This kernel has every catalog helper, so the test seam below makes the real kernel reject one: the
 * restore input for `snmp` (IPv4) and `sip` (IPv6) is rewritten to name `nosuchhelper`, which the kernel
 * refuses exactly as it refuses a helper whose module is missing (ENOENT, whole commit failed).
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, expect, it } from "vitest";
import { AgentCore } from "../../agent/core.ts";
import { ExecIptables } from "../../agent/iptables/port.ts";
import { probeHelpers } from "../../agent/iptables/probe.ts";
import { ownedHelperIds, renderRestore } from "../../agent/iptables/render.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { StateStore } from "../../agent/state.ts";
import type { Family } from "../../lib/catalog.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import type { HelperRule, StatusMessage } from "../../lib/schemas/index.ts";
import { iptablesBackend } from "../support/backends.ts";
import { rawSave, Sandbox } from "../support/netns.ts";
import { describeKernel } from "../support/requirements.ts";

const catalog = new HelperCatalog();

/** The real adapter, but this pretend kernel lacks `snmp` in IPv4 and `sip` in IPv6. */
class KernelWithoutSome extends ExecIptables {
  readonly missing: Record<Family, string> = { ipv4: "snmp", ipv6: "sip" };
  private rewrite(family: Family, text: string): string {
    return text.replaceAll(`--helper ${this.missing[family]}\n`, "--helper nosuchhelper\n");
  }
  override restore(ns: string, family: Family, text: string): Promise<void> {
    return super.restore(ns, family, this.rewrite(family, text));
  }
  override probeRestore(family: Family, text: string): Promise<void> {
    return super.probeRestore(family, this.rewrite(family, text));
  }
}

describeKernel("a helper the kernel rejects does not take the router's other helpers down", () => {
  const sandbox = new Sandbox();
  let stateDir: string;

  beforeAll(async () => {
    stateDir = await mkdtemp(join(tmpdir(), "cth-agent-rejects-"));
  });

  afterAll(async () => {
    await sandbox.cleanup();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  const helper = (name: string, protocol: "tcp" | "udp", port: number): HelperRule => ({
    id: randomUUID(),
    protocol,
    port,
    helper: name,
  });

  it("classifies the kernel's restore error per helper, leaves that helper out and applies the rest", async () => {
    const routerId = randomUUID();
    const ns = await sandbox.namespace("", `qrouter-${routerId}`);
    const sent: StatusMessage[] = [];
    const core = new AgentCore({
      node: "rejects",
      backend: iptablesBackend(new KernelWithoutSome(), { catalog }),
      state: await StateStore.load(join(stateDir, "a"), "rejects"),
      status: { send: async (message) => void sent.push(message) },
      metrics: new AgentMetrics(),
      logger: pino({ level: "silent" }),
      namespacePattern: "qrouter-{router_id}",
    });
    const snmp = helper("snmp", "udp", 161);
    const sip = helper("sip", "udp", 5060);
    const ftp = helper("ftp", "tcp", 21);
    const tftp = helper("tftp", "udp", 69);
    const outcome = await core.apply({
      v: 1,
      kind: "router-sync",
      router_id: routerId,
      revision: 1,
      helpers: [snmp, sip, ftp, tftp],
      correlation_id: "rejects-1",
      issued_at: new Date().toISOString(),
    });
    expect(outcome).toMatchObject({ kind: "applied", rules: { ipv4: 3, ipv6: 2 } });
    expect(ownedHelperIds(await rawSave(ns, "ipv4")).sort()).toEqual([sip.id, ftp.id, tftp.id].sort());
    expect(ownedHelperIds(await rawSave(ns, "ipv6")).sort()).toEqual([ftp.id, tftp.id].sort());
    expect(sent).toHaveLength(1);
    const report = sent[0]!;
    expect(report.kind === "applied" && report.errors).toEqual([
      expect.objectContaining({ helper_id: snmp.id, code: "helper_unavailable" }),
      expect.objectContaining({ helper_id: sip.id, code: "helper_unavailable" }),
    ]);
    expect([...core.backend.unavailable.ipv4]).toEqual(["snmp"]);
    expect([...core.backend.unavailable.ipv6]).toEqual(["sip"]);
  });

  it("the start-up probe (throwaway namespace) finds the same helpers missing", async () => {
    const lacking = await probeHelpers(new KernelWithoutSome(), catalog);
    expect([...lacking.ipv4]).toEqual(["snmp"]);
    expect([...lacking.ipv6]).toEqual(["sip"]);
  });

  it("on the real kernel, every helper the probe reports present applies in one transaction", async () => {
    const real = new ExecIptables();
    const lacking = await probeHelpers(real, catalog);
    const ns = await sandbox.namespace("cthall");
    for (const family of ["ipv4", "ipv6"] as const) {
      let port = 100;
      const rules = catalog
        .names()
        .filter((name) => catalog.families(name).includes(family) && !lacking[family].has(name))
        .flatMap((name) =>
          (catalog.spec(name)?.protocols ?? []).map((protocol) => helper(name, protocol, port++)),
        );
      await real.restore(ns, family, renderRestore(rules, "")!);
      expect(ownedHelperIds(await rawSave(ns, family)).sort()).toEqual(rules.map((r) => r.id).sort());
    }
  });
});
