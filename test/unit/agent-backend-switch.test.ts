/** A node switched from one --backend to the other: the core's part, over both in-memory models. */
import { randomUUID } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { beforeEach, expect, it } from "vitest";
import type { FirewallBackend } from "../../agent/backend.ts";
import { AgentCore } from "../../agent/core.ts";
import { MemoryIptables } from "../../agent/iptables/memory.ts";
import { ownedHelperIds } from "../../agent/iptables/render.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { MemoryNft } from "../../agent/nftables/memory.ts";
import { StateStore } from "../../agent/state.ts";
import { iptablesBackend, nftablesBackend } from "../support/backends.ts";
import { helperRule, routerSync } from "../support/factories.ts";

let dir: string;
let ipt: MemoryIptables;
let nft: MemoryNft;
const routerId = randomUUID();
const ns = `qrouter-${routerId}`;
const ftp = helperRule("ftp", "tcp", 21);

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cth-switch-"));
  ipt = new MemoryIptables();
  nft = new MemoryNft();
  await ipt.createNamespace(ns);
  await nft.createNamespace(ns);
});

const core = async (backend: FirewallBackend, formerBackends: FirewallBackend[] = []) =>
  new AgentCore({
    node: "n1",
    backend,
    formerBackends,
    state: await StateStore.load(dir, "n1"),
    status: { send: async () => undefined },
    metrics: new AgentMetrics(),
    logger: pino({ level: "silent" }),
    namespacePattern: "qrouter-{router_id}",
  });

it("the same revision re-sent after a switch is written by the new backend, and the old one's rules go", async () => {
  await (await core(iptablesBackend(ipt))).apply(routerSync(routerId, 1, [ftp]));
  const after = await core(nftablesBackend(nft), [iptablesBackend(ipt)]);
  expect(await after.apply(routerSync(routerId, 1, [ftp]))).toMatchObject({ kind: "applied", changed: true });
  expect(await nft.list(ns)).toContain(`cth:${ftp.id}`);
  expect(ownedHelperIds(await ipt.save(ns, "ipv4"))).toEqual([]);
});

it("a release of the former backend's rules that failed is tried again on the next drift pass", async () => {
  await (await core(iptablesBackend(ipt))).apply(routerSync(routerId, 1, [ftp]));
  const former = iptablesBackend(ipt);
  const release = former.release.bind(former);
  // Fails at the apply and at the first drift pass; the second pass must try again.
  let failures = 2;
  former.release = async (name) => {
    if (failures-- > 0) throw new Error("iptables-save: command not found");
    return release(name);
  };
  const after = await core(nftablesBackend(nft), [former]);
  await after.apply(routerSync(routerId, 2, [ftp]));
  expect(ownedHelperIds(await ipt.save(ns, "ipv4"))).toEqual([ftp.id]);
  await after.checkDrift();
  expect(ownedHelperIds(await ipt.save(ns, "ipv4"))).toEqual([ftp.id]);
  await after.checkDrift();
  expect(ownedHelperIds(await ipt.save(ns, "ipv4"))).toEqual([]);
  expect(await nft.list(ns)).toContain(`cth:${ftp.id}`);
});
