import { randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ApplyFailedError } from "../../agent/backend.ts";
import { AgentCore, coalesce } from "../../agent/core.ts";
import { MemoryIptables } from "../../agent/iptables/memory.ts";
import { RestoreError } from "../../agent/iptables/port.ts";
import { probeHelpers } from "../../agent/iptables/probe.ts";
import { expectedOwnedLines, ownedHelperIds, ownedLines, ruleLine } from "../../agent/iptables/render.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { StateStore } from "../../agent/state.ts";
import type { Family } from "../../lib/catalog.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import {
  type DomainDeps,
  deleteRouter,
  submitNotification,
  upsertRouter,
} from "../../lib/domain/services.ts";
import type { StatusSink } from "../../lib/ports.ts";
import { planFamily } from "../../lib/rules.ts";
import type { HelperRule, StatusMessage } from "../../lib/schemas/index.ts";
import { iptablesBackend } from "../support/backends.ts";
import {
  admin,
  helperRule as helper,
  NEUTRON_RAW,
  notification,
  routerSync as snapshot,
} from "../support/factories.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../support/memory.ts";

const catalog = new HelperCatalog();
const NODE = "node-a";

class RecordingSink implements StatusSink {
  readonly sent: StatusMessage[] = [];
  async send(message: StatusMessage): Promise<void> {
    this.sent.push(message);
  }
}

/** What Neutron's L3 agent keeps in a router's raw table: not ours, never to be touched. */

describe("agent core (in-memory iptables model)", () => {
  let dir: string;
  let iptables: MemoryIptables;
  let sink: RecordingSink;
  let state: StateStore;
  let metrics: AgentMetrics;
  let routerId: string;
  let ns: string;

  const makeCore = (overrides: Partial<ConstructorParameters<typeof AgentCore>[0]> = {}) =>
    new AgentCore({
      node: NODE,
      backend: iptablesBackend(iptables, { catalog, metrics }),
      state,
      status: sink,
      metrics,
      logger: pino({ level: "silent" }),
      namespacePattern: "qrouter-{router_id}",
      ...overrides,
    });

  const owned = async (name: string, family: Family) => ownedLines(await iptables.save(name, family));

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "cth-agent-core-"));
    iptables = new MemoryIptables();
    sink = new RecordingSink();
    state = await StateStore.load(dir, NODE);
    metrics = new AgentMetrics();
    routerId = randomUUID();
    ns = `qrouter-${routerId}`;
    await iptables.createNamespace(ns);
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("applies a snapshot to both families, records the revision and reports it", async () => {
    const helpers = [helper("ftp", "tcp", 21), helper("irc", "tcp", 6667)];
    const outcome = await makeCore().apply(snapshot(routerId, 1, helpers));
    expect(outcome).toEqual({ kind: "applied", changed: true, rules: { ipv4: 2, ipv6: 1 }, errors: [] });
    expect(await owned(ns, "ipv4")).toEqual(expectedOwnedLines(planFamily(helpers, "ipv4", catalog).rules));
    expect(ownedHelperIds(await iptables.save(ns, "ipv6"))).toEqual([helpers[0]!.id]);
    expect(sink.sent).toEqual([
      {
        v: 1,
        kind: "applied",
        router_id: routerId,
        revision: 1,
        host: NODE,
        namespace: "qrouter",
        digest: helperSetDigest(helpers),
        rules: { ipv4: 2, ipv6: 1 },
        errors: [],
      },
    ]);
    const reloaded = await StateStore.load(dir, NODE);
    expect(reloaded.get(routerId)?.revision).toBe(1);
  });

  it("the same helpers at a newer revision write nothing and still report the revision", async () => {
    const helpers = [helper("ftp", "tcp", 21)];
    const core = makeCore();
    await core.apply(snapshot(routerId, 1, helpers));
    const restores = iptables.restores.get(ns);
    const outcome = await core.apply(snapshot(routerId, 2, [...helpers].reverse()));
    expect(outcome).toMatchObject({ kind: "applied", changed: false });
    expect(iptables.restores.get(ns)).toBe(restores);
    expect(sink.sent.at(-1)).toMatchObject({ kind: "applied", revision: 2 });
    expect(await metrics.registry.getSingleMetricAsString("cth_agent_applies_total")).toContain(
      'result="unchanged"} 1',
    );
  });

  it("ignores stale revisions, re-reports a duplicate, and touches no rule", async () => {
    const core = makeCore();
    const newest = [helper("ftp", "tcp", 21)];
    await core.apply(snapshot(routerId, 5, newest));
    const before = await owned(ns, "ipv4");
    const restores = iptables.restores.get(ns);
    expect(await core.apply(snapshot(routerId, 4, [helper("sane", "tcp", 6566)]))).toEqual({
      kind: "stale",
      appliedRevision: 5,
    });
    expect(await core.apply(snapshot(routerId, 5, []))).toEqual({ kind: "duplicate", appliedRevision: 5 });
    expect(await owned(ns, "ipv4")).toEqual(before);
    expect(iptables.restores.get(ns)).toBe(restores);
    expect(sink.sent.map((m) => (m.kind === "applied" ? m.revision : -1))).toEqual([5, 5]);
    expect(state.get(routerId)?.revision).toBe(5);
  });

  it("a report's digest is of what the read-back found: a hand-edited table digests differently", async () => {
    const helpers = [helper("ftp", "tcp", 21), helper("tftp", "udp", 69)];
    await makeCore().apply(snapshot(routerId, 3, helpers));
    expect(sink.sent.at(-1)).toMatchObject({ revision: 3, digest: helperSetDigest(helpers) });
    // By hand, behind the agent: tftp's rule replaced by someone else's on another port.
    const forged = helper("sip", "udp", 5060);
    const [ftpLine, tftpLine] = planFamily(helpers, "ipv4", catalog).rules.map(ruleLine);
    for (const family of ["ipv4", "ipv6"] as const) {
      await iptables.restore(ns, family, `*raw\n-D ${tftpLine!.slice(3)}\n${ruleLine(forged)}\nCOMMIT\n`);
    }
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([helpers[0]!.id, forged.id]);
    expect(ftpLine).toContain(helpers[0]!.id);
    // A restarted agent (nothing read back yet) gets the same revision re-sent: the duplicate path reads.
    const outcome = await makeCore().apply(snapshot(routerId, 3, helpers));
    expect(outcome).toEqual({ kind: "duplicate", appliedRevision: 3 });
    const report = sink.sent.at(-1);
    expect(report).toMatchObject({ kind: "applied", revision: 3 });
    expect(report?.kind === "applied" && report.digest).not.toBe(helperSetDigest(helpers));
    expect(report?.kind === "applied" && report.digest).toBe(helperSetDigest([helpers[0]!, forged]));
  });

  it("the duplicate of an applied revision re-reports the digest of the last read-back", async () => {
    const helpers = [helper("irc", "tcp", 6667), helper("sane", "tcp", 6566)];
    let saves = 0;
    class Counting extends MemoryIptables {
      override async save(name: string, family: Family): Promise<string> {
        saves++;
        return super.save(name, family);
      }
    }
    iptables = new Counting();
    await iptables.createNamespace(ns);
    const core = makeCore();
    await core.apply(snapshot(routerId, 2, helpers));
    const afterApply = saves;
    await core.apply(snapshot(routerId, 2, helpers));
    // Served from what the apply read back: no further save.
    expect(saves).toBe(afterApply);
    expect(sink.sent.map((m) => m.kind === "applied" && m.digest)).toEqual([
      helperSetDigest(helpers),
      helperSetDigest(helpers),
    ]);
  });

  it("coalesces a batch to the newest revision per router", () => {
    const other = randomUUID();
    const batch = [
      snapshot(routerId, 3, []),
      snapshot(other, 1, []),
      snapshot(routerId, 7, []),
      snapshot(routerId, 5, []),
    ];
    const groups = coalesce(batch, (s) => s);
    expect(
      groups.map((g) => [g.newest.router_id, g.newest.revision, g.superseded.map((s) => s.revision)]),
    ).toEqual([
      [routerId, 7, [3, 5]],
      [other, 1, []],
    ]);
  });

  it("a missing namespace is reported and nothing is recorded; an empty snapshot for it holds already", async () => {
    const gone = randomUUID();
    const core = makeCore();
    expect(await core.apply(snapshot(gone, 1, [helper("ftp", "tcp", 21)]))).toEqual({
      kind: "namespace-missing",
      namespace: `qrouter-${gone}`,
    });
    expect(state.get(gone)).toBeUndefined();
    expect(sink.sent).toEqual([]);
    expect(await iptables.namespaceExists(`qrouter-${gone}`)).toBe(false);
    expect(await core.apply(snapshot(gone, 2, []))).toMatchObject({ kind: "applied", changed: false });
    expect(state.get(gone)?.revision).toBe(2);
  });

  it("--create-namespaces creates a missing namespace and removes only one it created on an empty snapshot", async () => {
    const fresh = randomUUID();
    const core = makeCore({ createNamespaces: true });
    await core.apply(snapshot(fresh, 1, [helper("ftp", "tcp", 21)]));
    expect(await iptables.namespaceExists(`qrouter-${fresh}`)).toBe(true);
    await core.apply(snapshot(fresh, 2, []));
    expect(await iptables.namespaceExists(`qrouter-${fresh}`)).toBe(false);
    // Not created by the agent: emptied, kept.
    await core.apply(snapshot(routerId, 1, [helper("ftp", "tcp", 21)]));
    await core.apply(snapshot(routerId, 2, []));
    expect(await iptables.namespaceExists(ns)).toBe(true);
    expect(await owned(ns, "ipv4")).toEqual([]);
  });

  it("a helper the kernel lacks is left out with a per-helper error; the router's other helpers are applied", async () => {
    iptables.lacking.ipv4.add("snmp");
    const snmp = helper("snmp", "udp", 161);
    const ftp = helper("ftp", "tcp", 21);
    const core = makeCore();
    const outcome = await core.apply(snapshot(routerId, 1, [snmp, ftp, helper("tftp", "udp", 69)]));
    expect(outcome).toMatchObject({ kind: "applied", rules: { ipv4: 2, ipv6: 2 } });
    expect(outcome.kind === "applied" && outcome.errors).toEqual([
      expect.objectContaining({ helper_id: snmp.id, code: "helper_unavailable" }),
    ]);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).not.toContain(snmp.id);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toContain(ftp.id);
    expect(core.backend.unavailable.ipv4.has("snmp")).toBe(true);
    expect(sink.sent.at(-1)).toMatchObject({ errors: [expect.objectContaining({ helper_id: snmp.id })] });
  });

  it("a helper the kernel lacks, added to a chain edited in place, is left out the same way", async () => {
    const core = makeCore();
    const existing = Array.from({ length: 6 }, (_, i) => helper("ftp", "tcp", 2100 + i));
    await core.apply(snapshot(routerId, 1, existing));
    iptables.lacking.ipv4.add("snmp");
    const snmp = helper("snmp", "udp", 161);
    const tftp = helper("tftp", "udp", 69);
    const restoresBefore = iptables.restores.get(ns) ?? 0;
    const outcome = await core.apply(snapshot(routerId, 2, [...existing, snmp, tftp]));
    expect(outcome).toMatchObject({ kind: "applied", rules: { ipv4: 7, ipv6: 7 } });
    expect(outcome.kind === "applied" && outcome.errors).toEqual([
      expect.objectContaining({ helper_id: snmp.id, code: "helper_unavailable" }),
    ]);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([...existing, tftp].map((h) => h.id));
    // Successful restores: ipv4, the whole rewrite without snmp (the refused edit and the refused rewrite that
    // named snmp commit nothing); ipv6 (no snmp there), one edit.
    expect((iptables.restores.get(ns) ?? 0) - restoresBefore).toBe(2);
  });

  it("a namespace recreated empty behind the agent's back: the failed edit brands no helper missing", async () => {
    const core = makeCore();
    const ftp = helper("ftp", "tcp", 2121);
    const tftp = helper("tftp", "udp", 69);
    await core.apply(snapshot(routerId, 1, [ftp, tftp]));
    // Neutron's L3 agent recreates the namespace: it exists, but our chain is gone.
    await iptables.deleteNamespace(ns);
    await iptables.createNamespace(ns);
    const more = helper("ftp", "tcp", 21);
    const outcome = await core.apply(snapshot(routerId, 2, [ftp, tftp, more]));
    expect(outcome).toMatchObject({ kind: "applied", errors: [] });
    expect(core.backend.unavailable.ipv4.size).toBe(0);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4")).sort()).toEqual(
      [ftp, tftp, more].map((h) => h.id).sort(),
    );
  });

  it("the start-up probe finds what the kernel lacks and touches no namespace", async () => {
    iptables.lacking.ipv4.add("pptp");
    iptables.lacking.ipv6.add("sip");
    const before = await iptables.save(ns, "ipv4");
    const lacking = await probeHelpers(iptables, catalog);
    expect([...lacking.ipv4]).toEqual(["pptp"]);
    expect([...lacking.ipv6]).toEqual(["sip"]);
    expect(ownedLines(await iptables.save(ns, "ipv4"))).toEqual(ownedLines(before));
    expect(iptables.restores.size).toBe(0);
  });

  it("a read-back that differs from the rendered rules fails the apply and records nothing", async () => {
    class Liar extends MemoryIptables {
      override async restore(): Promise<void> {}
    }
    iptables = new Liar();
    await iptables.createNamespace(ns);
    const core = makeCore();
    await expect(core.apply(snapshot(routerId, 1, [helper("ftp", "tcp", 21)]))).rejects.toMatchObject({
      name: "ApplyFailedError",
      reason: "verify",
    });
    expect(state.get(routerId)).toBeUndefined();
    expect(sink.sent).toEqual([]);
  });

  it("a restore error that names no missing helper fails the apply; rules and state stay as they were", async () => {
    class Flaky extends MemoryIptables {
      failWith: string | undefined;
      override async restore(name: string, family: Family, text: string): Promise<void> {
        if (this.failWith) throw new RestoreError(family, this.failWith);
        await super.restore(name, family, text);
      }
    }
    const flaky = new Flaky();
    iptables = flaky;
    await iptables.createNamespace(ns);
    const core = makeCore();
    await core.apply(snapshot(routerId, 1, [helper("ftp", "tcp", 21)]));
    const before = await owned(ns, "ipv4");
    flaky.failWith = "iptables-restore: line 3 failed (Resource temporarily unavailable)";
    const error = await core
      .apply(snapshot(routerId, 2, [helper("sane", "tcp", 6566)]))
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApplyFailedError);
    expect(error).toMatchObject({ reason: "restore" });
    expect(state.get(routerId)?.revision).toBe(1);
    expect(await owned(ns, "ipv4")).toEqual(before);
    expect(sink.sent.map((m) => m.kind === "applied" && m.revision)).toEqual([1]);
    expect(await metrics.registry.getSingleMetricAsString("cth_agent_apply_failures_total")).toContain(
      'reason="restore"} 1',
    );
  });

  it("two helpers whose ids share their first 7 characters: deleting one leaves the other (Neutron defect 2)", async () => {
    const a = helper("ftp", "tcp", 21, `1234567${randomUUID().slice(7)}`);
    const b = helper("ftp", "tcp", 2121, `1234567${randomUUID().slice(7)}`);
    const core = makeCore();
    await core.apply(snapshot(routerId, 1, [a, b]));
    await core.apply(snapshot(routerId, 2, [b]));
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([b.id]);
    expect(ownedHelperIds(await iptables.save(ns, "ipv6"))).toEqual([b.id]);
  });

  it("syncing one router never touches another router's rules (Neutron defect 3)", async () => {
    const other = randomUUID();
    await iptables.createNamespace(`qrouter-${other}`);
    const core = makeCore();
    await core.apply(snapshot(other, 1, [helper("tftp", "udp", 69)]));
    const otherBefore = await iptables.save(`qrouter-${other}`, "ipv4");
    const otherRestores = iptables.restores.get(`qrouter-${other}`);
    await core.apply(snapshot(routerId, 1, [helper("ftp", "tcp", 21)]));
    await core.apply(snapshot(routerId, 2, []));
    expect(ownedLines(await iptables.save(`qrouter-${other}`, "ipv4"))).toEqual(ownedLines(otherBefore));
    expect(iptables.restores.get(`qrouter-${other}`)).toBe(otherRestores);
  });

  it("drift: a chain deleted by hand is restored by the drift check, and a clean check repairs nothing", async () => {
    const helpers = [helper("ftp", "tcp", 21), helper("sip", "udp", 5060)];
    const core = makeCore();
    await core.apply(snapshot(routerId, 1, helpers));
    const expected = await owned(ns, "ipv4");
    await iptables.restore(
      ns,
      "ipv4",
      "*raw\n-D PREROUTING -j CTH-HELPERS\n-F CTH-HELPERS\n-X CTH-HELPERS\nCOMMIT\n",
    );
    expect(await owned(ns, "ipv4")).toEqual([]);
    expect(await core.checkDrift()).toEqual([routerId]);
    expect(await owned(ns, "ipv4")).toEqual(expected);
    expect(await core.checkDrift()).toEqual([]);
    expect(await metrics.registry.getSingleMetricAsString("cth_agent_drift_repairs_total")).toContain(" 1");
  });

  it("drift: a paced pass spreads its routers evenly over the spread, and stops when told", async () => {
    const core = makeCore();
    const routers = [routerId, randomUUID(), randomUUID(), randomUUID()];
    for (const id of routers.slice(1)) await iptables.createNamespace(`qrouter-${id}`);
    for (const id of routers) await core.apply(snapshot(id, 1, [helper("ftp", "tcp", 21)]));
    const reads = vi.spyOn(iptables, "save");
    const timeline: string[] = [];
    const sleep = async (ms: number) => {
      timeline.push(`sleep ${ms} after ${reads.mock.calls.length} reads`);
    };
    expect(await core.checkDrift({ spreadMs: 1_000, sleep })).toEqual([]);
    const perRouter = reads.mock.calls.length / routers.length;
    expect(perRouter).toBeGreaterThan(0);
    expect(timeline).toEqual([1, 2, 3].map((n) => `sleep 250 after ${n * perRouter} reads`));

    reads.mockClear();
    const stop = new AbortController();
    let sleeps = 0;
    await core.checkDrift({
      spreadMs: 1_000,
      signal: stop.signal,
      sleep: async () => {
        if (++sleeps === 2) stop.abort();
      },
    });
    expect(reads.mock.calls.length).toBe(2 * perRouter);
  });

  it("a table changed behind the agent's back between applies is still converged (stale read-back view)", async () => {
    const helpers = [helper("ftp", "tcp", 21)];
    const core = makeCore();
    await core.apply(snapshot(routerId, 1, helpers));
    // The namespace is replaced by an empty one: the same helpers must be written again, not skipped.
    await iptables.deleteNamespace(ns);
    await iptables.createNamespace(ns);
    expect(await core.apply(snapshot(routerId, 2, helpers))).toMatchObject({
      kind: "applied",
      changed: true,
    });
    expect(await owned(ns, "ipv4")).toEqual(expectedOwnedLines(helpers));
    expect(await owned(ns, "ipv6")).toEqual(expectedOwnedLines(helpers));
    // Someone adds a second jump and removes the chain's rules: the next snapshot still ends with one jump.
    await iptables.restore(ns, "ipv4", "*raw\n:CTH-HELPERS - [0:0]\n-A PREROUTING -j CTH-HELPERS\nCOMMIT\n");
    const next = [helper("sane", "tcp", 6566)];
    await core.apply(snapshot(routerId, 3, next));
    expect(await owned(ns, "ipv4")).toEqual(expectedOwnedLines(next));
  });

  it("a restarted agent whose state was lost still ends with exactly one jump (first apply guesses, read-back decides)", async () => {
    const before = [helper("ftp", "tcp", 21)];
    await makeCore().apply(snapshot(routerId, 1, before));
    const amnesiac = makeCore({
      state: await StateStore.load(await mkdtemp(join(tmpdir(), "cth-lost-")), NODE),
    });
    const after = [helper("tftp", "udp", 69)];
    expect(await amnesiac.apply(snapshot(routerId, 2, after))).toMatchObject({
      kind: "applied",
      changed: true,
    });
    for (const family of ["ipv4", "ipv6"] as const) {
      expect(await owned(ns, family)).toEqual(expectedOwnedLines(after));
    }
  });

  it("applies different routers in parallel but never overlaps two transactions of one router", async () => {
    const other = randomUUID();
    await iptables.createNamespace(ns);
    await iptables.createNamespace(`qrouter-${other}`);
    let gate: () => void = () => undefined;
    const opened = new Promise<void>((resolve) => {
      gate = resolve;
    });
    const inFlight = new Map<string, number>();
    let overlapped = false;
    const real = iptables.restore.bind(iptables);
    iptables.restore = async (name, family, text) => {
      const count = (inFlight.get(`${name}/${family}`) ?? 0) + 1;
      inFlight.set(`${name}/${family}`, count);
      if (count > 1) overlapped = true;
      if (name === ns) await opened; // this router's namespace is slow until the gate opens
      await real(name, family, text);
      inFlight.set(`${name}/${family}`, (inFlight.get(`${name}/${family}`) ?? 1) - 1);
    };
    const core = makeCore();
    const slowFirst = core.apply(snapshot(routerId, 1, [helper("ftp", "tcp", 21)]));
    const slowSecond = core.apply(snapshot(routerId, 2, [helper("ftp", "tcp", 2121)]));
    // The other router completes while the slow one is still held at the gate.
    expect(await core.apply(snapshot(other, 1, [helper("tftp", "udp", 69)]))).toMatchObject({
      kind: "applied",
    });
    gate();
    await Promise.all([slowFirst, slowSecond]);
    expect(overlapped).toBe(false);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toHaveLength(1);
    expect(await owned(ns, "ipv4")).toContain(
      '-A CTH-HELPERS -p tcp -m tcp --dport 2121 -m comment --comment "cth:' +
        ownedHelperIds(await iptables.save(ns, "ipv4"))[0] +
        '" -j CT --helper ftp',
    );
  });

  it("--families ipv4 on a host without IPv6 netfilter: ip6tables is never touched; the probe says why it fails", async () => {
    class NoIpv6 extends MemoryIptables {
      override async save(name: string, family: Family): Promise<string> {
        if (family === "ipv6") throw new Error("ip6tables-save: can't initialize ip6tables table `raw'");
        return super.save(name, family);
      }
      override async restore(name: string, family: Family, text: string): Promise<void> {
        if (family === "ipv6")
          throw new RestoreError(family, "ip6tables-restore: unable to initialize table 'raw'");
        await super.restore(name, family, text);
      }
      override async probeRestore(family: Family, text: string): Promise<void> {
        if (family === "ipv6")
          throw new RestoreError(family, "ip6tables-restore: unable to initialize table 'raw'");
        await super.probeRestore(family, text);
      }
    }
    iptables = new NoIpv6();
    await iptables.createNamespace(ns);
    const ftp = helper("ftp", "tcp", 21);
    const everything = makeCore();
    await expect(everything.apply(snapshot(routerId, 1, [ftp]))).rejects.toBeInstanceOf(ApplyFailedError);
    const v4only = makeCore({ backend: iptablesBackend(iptables, { catalog, metrics, families: ["ipv4"] }) });
    expect(await v4only.apply(snapshot(routerId, 2, [ftp]))).toMatchObject({
      kind: "applied",
      rules: { ipv4: 1, ipv6: 0 },
      errors: [],
    });
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([ftp.id]);
    await expect(probeHelpers(iptables, catalog)).rejects.toThrow(/--families ipv4/);
    expect(await probeHelpers(iptables, catalog, ["ipv4"])).toEqual({
      ipv4: new Set(),
      ipv6: new Set(),
    });
  });

  it("a corrupt state file is reported and replaced by an empty state", async () => {
    await writeFile(join(dir, `agent-${NODE}.json`), "{not json");
    const seen: unknown[] = [];
    const loaded = await StateStore.load(dir, NODE, (error) => seen.push(error));
    expect(seen).toHaveLength(1);
    expect(loaded.entries()).toEqual([]);
    await loaded.set(routerId, {
      revision: 3,
      helpers: [],
      namespace: ns,
      appliedAt: "2026-11-24T05:00:00Z",
    });
    expect(
      JSON.parse(await readFile(join(dir, `agent-${NODE}.json`), "utf8")).routers[routerId].revision,
    ).toBe(3);
  });

  it("routers recorded at once share whole-file writes (group commit), and every one is on disk", async () => {
    const loaded = await StateStore.load(dir, NODE);
    const routers = Array.from({ length: 10 }, () => randomUUID());
    await Promise.all(
      routers.map((id, index) =>
        loaded.set(id, {
          revision: index + 1,
          helpers: [],
          namespace: `qrouter-${id}`,
          appliedAt: "2026-12-01T00:00:00Z",
        }),
      ),
    );
    // All ten arrive before the first write starts: they share it (one fsync, not ten in a row).
    expect(loaded.writes).toBe(1);
    const onDisk = JSON.parse(await readFile(join(dir, `agent-${NODE}.json`), "utf8")).routers;
    expect(routers.map((id) => onDisk[id].revision)).toEqual(routers.map((_, index) => index + 1));
  });

  it("a router deleted and registered again is applied again: the domain's revisions continue past the deletion", async () => {
    const store = new MemoryRoutersStore();
    const queue = new MemoryCommandQueue();
    const deps: DomainDeps = { store, queue, clock: { now: () => new Date() }, limits: DEFAULT_LIMITS };
    const operator = admin();
    const place = { project_id: "demo", bindings: [{ host: NODE, namespace: "qrouter" as const }] };
    const core = makeCore();
    let delivered = 0;
    const deliver = async () => {
      const messages = queue.messages(NODE);
      for (const message of messages.slice(delivered)) await core.apply(message);
      delivered = messages.length;
    };
    const add = (rule: HelperRule, correlation: string) =>
      submitNotification(
        deps,
        operator,
        notification("created", [{ ...rule, router_id: routerId }]),
        correlation,
      );
    await upsertRouter(deps, operator, routerId, place, "c1");
    const first = helper("ftp", "tcp", 21);
    await add(first, "c2");
    await deliver();
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([first.id]);
    await deleteRouter(deps, operator, routerId, "c3");
    await deliver();
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([]);
    // Registered again under the same id, then given a helper: the agent must not drop it as stale.
    await upsertRouter(deps, operator, routerId, place, "c4");
    const again = helper("tftp", "udp", 69);
    await add(again, "c5");
    await deliver();
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([again.id]);
    expect(await metrics.registry.getSingleMetricAsString("cth_agent_messages_total")).not.toMatch(
      /outcome="stale"\} [1-9]/,
    );
    const last = sink.sent.at(-1);
    expect(last).toMatchObject({ kind: "applied", router_id: routerId });
    expect((await store.get(routerId))?.revision).toBe((last as { revision: number }).revision);
    // The empty state at the re-created router's first revision went to its node too (not deduplicated away).
    expect(queue.messages(NODE).map((m) => [m.revision, m.helpers.length])).toEqual([
      [1, 1],
      [2, 0],
      [2, 0],
      [3, 1],
    ]);
  });

  describe("namespace kinds (qrouter and a DVR router's snat)", () => {
    const BY_KIND = "{namespace}-{router_id}";
    let snat: string;

    beforeEach(() => {
      snat = `snat-${routerId}`;
    });

    const holds = async (name: string) => ({
      ipv4: ownedHelperIds(await iptables.save(name, "ipv4")),
      ipv6: ownedHelperIds(await iptables.save(name, "ipv6")),
    });

    it("the default pattern applies a snat snapshot in snat-<id> and writes nothing in qrouter-<id>", async () => {
      // A dvr_snat node: both namespaces exist, Neutron's rules in qrouter's raw table.
      await iptables.createNamespace(snat);
      await iptables.restore(ns, "ipv4", NEUTRON_RAW);
      const neutron = await iptables.save(ns, "ipv4");
      const restoresBefore = iptables.restores.get(ns);
      const ftp = helper("ftp", "tcp", 21);
      const core = makeCore({ namespacePattern: BY_KIND });
      expect(core.namespaceFor(routerId, "snat")).toBe(snat);
      expect(await core.apply(snapshot(routerId, 1, [ftp], "snat"))).toMatchObject({
        kind: "applied",
        changed: true,
      });
      expect(await holds(snat)).toEqual({ ipv4: [ftp.id], ipv6: [ftp.id] });
      expect(await holds(ns)).toEqual({ ipv4: [], ipv6: [] });
      expect(iptables.restores.get(ns)).toBe(restoresBefore);
      // Without the save's timestamp lines, which tick with the clock.
      const withoutTimes = (save: string) => save.split("\n").filter((line) => !line.startsWith("#"));
      expect(withoutTimes(await iptables.save(ns, "ipv4"))).toEqual(withoutTimes(neutron));
      expect(state.get(routerId)).toMatchObject({ revision: 1, namespace: snat, kind: "snat" });
    });

    it("legacy to DVR: the rules move to snat-<id>; qrouter-<id> keeps Neutron's rules and none of ours", async () => {
      await iptables.createNamespace(snat);
      await iptables.restore(ns, "ipv4", NEUTRON_RAW);
      const core = makeCore({ namespacePattern: BY_KIND });
      const helpers = [helper("ftp", "tcp", 21), helper("tftp", "udp", 69)];
      await core.apply(snapshot(routerId, 1, helpers));
      expect(await holds(ns)).toEqual({ ipv4: helpers.map((h) => h.id), ipv6: helpers.map((h) => h.id) });
      await core.apply(snapshot(routerId, 2, helpers, "snat"));
      expect(await holds(snat)).toEqual({ ipv4: helpers.map((h) => h.id), ipv6: helpers.map((h) => h.id) });
      expect(await holds(ns)).toEqual({ ipv4: [], ipv6: [] });
      // Emptied, not removed (the agent did not create it), and Neutron's chain is still there.
      expect(await iptables.save(ns, "ipv4")).toContain("-A PREROUTING -j neutron-l3-agent-PREROUTING");
      expect(ownedLines(await iptables.save(ns, "ipv4"))).toEqual([]);
      expect(state.get(routerId)).toMatchObject({ revision: 2, namespace: snat, kind: "snat" });
    });

    it("DVR back to legacy: a snat namespace the agent created is deleted once qrouter holds the rules", async () => {
      const core = makeCore({ namespacePattern: BY_KIND, createNamespaces: true });
      const sip = helper("sip", "udp", 5060);
      await core.apply(snapshot(routerId, 1, [sip], "snat"));
      expect(await iptables.namespaceExists(snat)).toBe(true);
      expect(state.get(routerId)?.createdNamespace).toBe(true);
      await core.apply(snapshot(routerId, 2, [sip], "qrouter"));
      expect(await holds(ns)).toEqual({ ipv4: [sip.id], ipv6: [sip.id] });
      expect(await iptables.namespaceExists(snat)).toBe(false);
      // qrouter-<id> existed already: not the agent's to remove later.
      expect(state.get(routerId)).toMatchObject({
        namespace: ns,
        kind: "qrouter",
        createdNamespace: undefined,
      });
    });

    it("the applied revision again for the other kind is a move, not a duplicate (deleted, then registered as snat)", async () => {
      await iptables.createNamespace(snat);
      const core = makeCore({ namespacePattern: BY_KIND });
      await core.apply(snapshot(routerId, 3, []));
      expect(await core.apply(snapshot(routerId, 3, [], "snat"))).toMatchObject({ kind: "applied" });
      expect(state.get(routerId)).toMatchObject({ revision: 3, kind: "snat" });
      expect(sink.sent.at(-1)).toMatchObject({ revision: 3, namespace: "snat" });
      // The same revision and kind once more is the duplicate.
      expect(await core.apply(snapshot(routerId, 3, [], "snat"))).toMatchObject({ kind: "duplicate" });
    });

    it("the old namespace is left alone while the new one is missing: the rules are never in neither", async () => {
      const core = makeCore({ namespacePattern: BY_KIND });
      const ftp = helper("ftp", "tcp", 21);
      await core.apply(snapshot(routerId, 1, [ftp]));
      expect(await core.apply(snapshot(routerId, 2, [ftp], "snat"))).toEqual({
        kind: "namespace-missing",
        namespace: snat,
      });
      expect(await holds(ns)).toEqual({ ipv4: [ftp.id], ipv6: [ftp.id] });
      expect(state.get(routerId)).toMatchObject({ revision: 1, namespace: ns });
    });

    it("with no state for the router, the other kind's namespace is emptied too (an agent that lost its state)", async () => {
      await iptables.createNamespace(snat);
      const stale = [helper("ftp", "tcp", 21)];
      await makeCore({ namespacePattern: BY_KIND }).apply(snapshot(routerId, 1, stale));
      const amnesiac = makeCore({
        namespacePattern: BY_KIND,
        state: await StateStore.load(await mkdtemp(join(tmpdir(), "cth-lost-")), NODE),
      });
      const wanted = [helper("tftp", "udp", 69)];
      await amnesiac.apply(snapshot(routerId, 2, wanted, "snat"));
      expect(await holds(snat)).toEqual({ ipv4: [wanted[0]!.id], ipv6: [wanted[0]!.id] });
      expect(await holds(ns)).toEqual({ ipv4: [], ipv6: [] });
    });

    it("an empty snapshot with no state leaves nothing in either namespace, even when its own is missing", async () => {
      const left = [helper("irc", "tcp", 6667)];
      await makeCore({ namespacePattern: BY_KIND }).apply(snapshot(routerId, 1, left));
      const amnesiac = makeCore({
        namespacePattern: BY_KIND,
        state: await StateStore.load(await mkdtemp(join(tmpdir(), "cth-lost-")), NODE),
      });
      expect(await amnesiac.apply(snapshot(routerId, 2, [], "snat"))).toMatchObject({
        kind: "applied",
        rules: { ipv4: 0, ipv6: 0 },
      });
      expect(await iptables.namespaceExists(snat)).toBe(false);
      expect(await holds(ns)).toEqual({ ipv4: [], ipv6: [] });
      expect(sink.sent.at(-1)).toMatchObject({ revision: 2, namespace: "snat", digest: helperSetDigest([]) });
    });

    it("a pattern without {namespace} refuses a snat snapshot: nothing touched or recorded, a report says why", async () => {
      await iptables.createNamespace(snat);
      const core = makeCore({ namespacePattern: "qrouter-{router_id}" });
      const outcome = await core.apply(snapshot(routerId, 4, [helper("ftp", "tcp", 21)], "snat"));
      expect(outcome).toEqual({ kind: "refused", reason: "namespace_unsupported" });
      expect(iptables.restores.size).toBe(0);
      expect(await holds(ns)).toEqual({ ipv4: [], ipv6: [] });
      expect(await holds(snat)).toEqual({ ipv4: [], ipv6: [] });
      expect(state.get(routerId)).toBeUndefined();
      expect(sink.sent).toEqual([
        {
          v: 1,
          kind: "applied",
          router_id: routerId,
          revision: 4,
          host: NODE,
          namespace: "snat",
          digest: helperSetDigest([]),
          rules: { ipv4: 0, ipv6: 0 },
          errors: [
            {
              code: "namespace_unsupported",
              message:
                '--namespace-pattern "qrouter-{router_id}" has no {namespace} placeholder, so this agent cannot ' +
                "tell a DVR router's snat namespace; set e.g. {namespace}-{router_id}",
            },
          ],
        },
      ]);
      expect(await metrics.registry.getSingleMetricAsString("cth_agent_messages_total")).toContain(
        'outcome="namespace_unsupported"} 1',
      );
      expect(() => core.namespaceFor(routerId, "snat")).toThrow(/cannot name a snat namespace/);
    });

    it("a pattern without {namespace} still applies qrouter snapshots, named or not, into its namespace", async () => {
      const core = makeCore({ namespacePattern: "qrouter-{router_id}" });
      const ftp = helper("ftp", "tcp", 21);
      const tftp = helper("tftp", "udp", 69);
      await core.apply(snapshot(routerId, 1, [ftp]));
      expect(await holds(ns)).toEqual({ ipv4: [ftp.id], ipv6: [ftp.id] });
      await core.apply(snapshot(routerId, 2, [tftp], "qrouter"));
      expect(await holds(ns)).toEqual({ ipv4: [tftp.id], ipv6: [tftp.id] });
      expect(sink.sent.map((m) => m.kind === "applied" && m.namespace)).toEqual(["qrouter", "qrouter"]);
    });

    it("reports carry the kind applied, a duplicate's re-report the kind from the state", async () => {
      await iptables.createNamespace(snat);
      const core = makeCore({ namespacePattern: BY_KIND });
      const helpers = [helper("ftp", "tcp", 21)];
      await core.apply(snapshot(routerId, 1, helpers, "snat"));
      expect(await core.apply(snapshot(routerId, 1, helpers, "snat"))).toEqual({
        kind: "duplicate",
        appliedRevision: 1,
      });
      expect(sink.sent.map((m) => m.kind === "applied" && [m.revision, m.namespace, m.digest])).toEqual([
        [1, "snat", helperSetDigest(helpers)],
        [1, "snat", helperSetDigest(helpers)],
      ]);
    });

    it("a state file written before namespace kinds loads; its routers count as qrouter", async () => {
      const ftp = helper("ftp", "tcp", 21);
      await makeCore().apply(snapshot(routerId, 3, [ftp]));
      // The same router as an agent without namespace kinds recorded it.
      await writeFile(
        join(dir, `agent-${NODE}.json`),
        JSON.stringify({
          v: 1,
          node: NODE,
          routers: {
            [routerId]: { revision: 3, helpers: [ftp], namespace: ns, appliedAt: "2026-11-24T05:00:00.000Z" },
          },
        }),
      );
      const loaded = await StateStore.load(dir, NODE, (error) => {
        throw error;
      });
      expect(loaded.get(routerId)).toMatchObject({ revision: 3, namespace: ns });
      expect(loaded.get(routerId)?.kind).toBeUndefined();
      const core = makeCore({ namespacePattern: BY_KIND, state: loaded });
      expect(await core.apply(snapshot(routerId, 3, [ftp]))).toMatchObject({ kind: "duplicate" });
      expect(sink.sent.at(-1)).toMatchObject({
        revision: 3,
        namespace: "qrouter",
        digest: helperSetDigest([ftp]),
      });
    });
  });
});
