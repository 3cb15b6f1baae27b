/**
 * The agent's SQS side against fauxqs (real SDK, real FIFO queue + DLQ + redrive), in-process, with the
 * in-memory iptables model (its contract suite holds it to the kernel). Needs no root.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SendMessageCommand } from "@aws-sdk/client-sqs";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryIptables } from "../../agent/iptables-memory.ts";
import { type RunningAgent, startAgent } from "../../agent/main.ts";
import { SqsStatusSink } from "../../lib/aws/sqs-status-sink.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import { ownedHelperIds } from "../../lib/render.ts";
import type { HelperRule, RouterSyncMessage } from "../../lib/schemas/index.ts";
import { type Emulators, type QueuePair, startEmulators } from "../support/emulators.ts";

const NODE = `agent-q-${randomUUID().slice(0, 6)}`;

async function eventually<T>(check: () => Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const helper = (name: string, protocol: "tcp" | "udp", port: number): HelperRule => ({
  id: randomUUID(),
  protocol,
  port,
  helper: name,
});

const snapshot = (routerId: string, revision: number, helpers: HelperRule[]): RouterSyncMessage => ({
  v: 1,
  kind: "router-sync",
  router_id: routerId,
  revision,
  helpers,
  correlation_id: `t-${revision}`,
  issued_at: new Date().toISOString(),
});

describe("agent poll loop on fauxqs", () => {
  let emu: Emulators;
  let queue: QueuePair;
  let status: QueuePair;
  let dir: string;
  let agent: RunningAgent | undefined;
  const iptables = new MemoryIptables();

  const send = async (body: unknown, group: string, dedup = randomUUID()) => {
    await emu.clients().sqs.send(
      new SendMessageCommand({
        QueueUrl: queue.url,
        MessageBody: typeof body === "string" ? body : JSON.stringify(body),
        MessageGroupId: group,
        MessageDeduplicationId: dedup,
      }),
    );
  };

  beforeAll(async () => {
    emu = await startEmulators();
    queue = await emu.createNodeQueue(NODE);
    status = await emu.createStatusQueue(`cth-status-${randomUUID().slice(0, 6)}`);
    dir = await mkdtemp(join(tmpdir(), "cth-agent-q-"));
    const sqs = emu.clients().sqs;
    agent = await startAgent({
      node: NODE,
      sqs,
      queueUrl: queue.url,
      status: new SqsStatusSink(sqs, status.url),
      iptables,
      catalog: new HelperCatalog(),
      limits: DEFAULT_LIMITS,
      logger: pino({ level: "silent" }),
      stateDir: dir,
      namespacePattern: "qrouter-{router_id}",
      driftIntervalSeconds: 3600,
      waitSeconds: 1,
      visibilitySeconds: 30,
      backoffBaseSeconds: 1,
    });
  });

  afterAll(async () => {
    await agent?.stop();
    await emu?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("sends a resync request at start", async () => {
    const messages = await eventually(async () => {
      const drained = await emu.drain(status.url);
      return drained.length > 0 && drained;
    });
    expect(messages.map((m) => JSON.parse(m.Body!))).toContainEqual({
      v: 1,
      kind: "resync-request",
      host: NODE,
    });
  });

  it("applies the newest of out-of-order, duplicated revisions and reports it", async () => {
    const routerId = randomUUID();
    const ns = `qrouter-${routerId}`;
    await iptables.createNamespace(ns);
    const newest = [helper("ftp", "tcp", 21), helper("tftp", "udp", 69)];
    await send(snapshot(routerId, 3, newest), routerId);
    await send(snapshot(routerId, 1, [helper("sane", "tcp", 6566)]), routerId);
    await send(snapshot(routerId, 3, newest), routerId);
    await send(snapshot(routerId, 2, [helper("irc", "tcp", 6667)]), routerId);
    await eventually(async () => (await emu.depth(queue.url)) === 0);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4")).sort()).toEqual(newest.map((h) => h.id).sort());
    const reports = (await emu.drain(status.url)).map((m) => JSON.parse(m.Body!));
    const mine = reports.filter((r) => r.router_id === routerId);
    expect(mine.length).toBeGreaterThan(0);
    expect(mine.every((r) => r.revision === 3 && r.host === NODE && r.rules.ipv4 === 2)).toBe(true);
  });

  it("parks invalid messages in the DLQ (explicitly, at once) and touches no rule", async () => {
    const routerId = randomUUID();
    const ns = `qrouter-${routerId}`;
    await iptables.createNamespace(ns);
    const invalid = [
      "not json at all",
      { ...snapshot(routerId, 1, [helper("ftp", "tcp", 21)]), extra: true },
      snapshot(routerId, 1, [{ id: randomUUID(), protocol: "tcp", port: 21, helper: "h323" }]),
      snapshot(routerId, 1, [{ id: randomUUID(), protocol: "tcp", port: 21, helper: 'ftp" -j DROP' }]),
      { ...snapshot(routerId, 1, []), router_id: "../../etc" },
    ];
    for (const body of invalid) await send(body, routerId);
    await eventually(async () => (await emu.depth(queue.url)) === 0);
    const parked = await emu.drain(queue.dlqUrl);
    expect(parked).toHaveLength(invalid.length);
    expect(parked.map((m) => m.Body)).toContain("not json at all");
    expect(iptables.restores.get(ns)).toBeUndefined();
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([]);
    expect(await agent!.metrics.registry.getSingleMetricAsString("cth_agent_messages_total")).toContain(
      `outcome="invalid"} ${invalid.length}`,
    );
  });

  it("a missing namespace keeps the message (backed off, not deleted) until the namespace appears", async () => {
    const routerId = randomUUID();
    const ns = `qrouter-${routerId}`;
    const helpers = [helper("ftp", "tcp", 2121)];
    await send(snapshot(routerId, 1, helpers), routerId);
    await eventually(async () =>
      (await agent!.metrics.registry.getSingleMetricAsString("cth_agent_namespace_missing_total")).endsWith(
        " 1",
      ),
    );
    expect(await emu.depth(queue.url)).toBe(1);
    await iptables.createNamespace(ns);
    await eventually(async () => (await emu.depth(queue.url)) === 0, 20_000);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([helpers[0]!.id]);
    // Backed off, not spun on: a handful of receives in several seconds, not hundreds.
    const misses = await agent!.metrics.registry.getSingleMetricAsString("cth_agent_namespace_missing_total");
    expect(Number(misses.trim().split(" ").at(-1))).toBeLessThan(5);
  });
});

describe("agent poll loop on fauxqs: slow applies", () => {
  let emu: Emulators;
  let queue: QueuePair;
  let dir: string;
  let agent: RunningAgent | undefined;
  /** restore() takes a while, like a large table on a busy host. */
  class SlowIptables extends MemoryIptables {
    delayMs = 0;
    /** When set, only this namespace is slow. */
    slowNamespace: string | undefined;
    started = 0;
    override async restore(ns: string, family: "ipv4" | "ipv6", text: string): Promise<void> {
      this.started++;
      if (this.slowNamespace === undefined || this.slowNamespace === ns)
        await new Promise((resolve) => setTimeout(resolve, this.delayMs));
      await super.restore(ns, family, text);
    }
  }
  const iptables = new SlowIptables();

  beforeAll(async () => {
    emu = await startEmulators();
    queue = await emu.createNodeQueue(`slow-${randomUUID().slice(0, 6)}`);
    dir = await mkdtemp(join(tmpdir(), "cth-agent-slow-"));
    agent = await startAgent({
      node: "slow",
      sqs: emu.clients().sqs,
      queueUrl: queue.url,
      iptables,
      catalog: new HelperCatalog(),
      limits: DEFAULT_LIMITS,
      logger: pino({ level: "silent" }),
      stateDir: dir,
      namespacePattern: "qrouter-{router_id}",
      driftIntervalSeconds: 3600,
      waitSeconds: 1,
      visibilitySeconds: 2,
      backoffBaseSeconds: 1,
    });
  });

  afterAll(async () => {
    await agent?.stop();
    await emu?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const sendSnapshot = async (routerId: string, revision: number, helpers: HelperRule[]) => {
    await emu.clients().sqs.send(
      new SendMessageCommand({
        QueueUrl: queue.url,
        MessageBody: JSON.stringify(snapshot(routerId, revision, helpers)),
        MessageGroupId: routerId,
        MessageDeduplicationId: randomUUID(),
      }),
    );
  };

  it("keeps the message invisible while an apply outlasts the visibility timeout", async () => {
    const routerId = randomUUID();
    await iptables.createNamespace(`qrouter-${routerId}`);
    iptables.delayMs = 5_000;
    const before = iptables.started;
    await sendSnapshot(routerId, 1, [helper("ftp", "tcp", 21)]);
    await eventually(async () => iptables.started > before);
    // Past the 2 s visibility timeout, mid-apply: without the heartbeat the message would be visible again.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    const { ReceiveMessageCommand } = await import("@aws-sdk/client-sqs");
    const stolen = await emu
      .clients()
      .sqs.send(new ReceiveMessageCommand({ QueueUrl: queue.url, WaitTimeSeconds: 0, VisibilityTimeout: 1 }));
    expect(stolen.Messages ?? []).toEqual([]);
    expect(await agent!.metrics.registry.getSingleMetricAsString("cth_agent_applies_total")).not.toContain(
      'result="changed"} 1',
    );
    await eventually(async () => (await emu.depth(queue.url)) === 0, 20_000);
    expect(ownedHelperIds(await iptables.save(`qrouter-${routerId}`, "ipv4"))).toHaveLength(1);
    expect(await agent!.metrics.registry.getSingleMetricAsString("cth_agent_applies_total")).toContain(
      'result="changed"} 1',
    );
  }, 30_000);

  it("a snapshot that arrives while another router's apply runs is applied without waiting for it", async () => {
    const slow = randomUUID();
    const quick = randomUUID();
    await iptables.createNamespace(`qrouter-${slow}`);
    await iptables.createNamespace(`qrouter-${quick}`);
    iptables.delayMs = 4_000;
    iptables.slowNamespace = `qrouter-${slow}`;
    const before = iptables.started;
    await sendSnapshot(slow, 1, [helper("ftp", "tcp", 21)]);
    await eventually(async () => iptables.started > before);
    await sendSnapshot(quick, 1, [helper("tftp", "udp", 69)]);
    // The quick router converges while the slow router's restore is still sleeping.
    await eventually(
      async () => ownedHelperIds(await iptables.save(`qrouter-${quick}`, "ipv4")).length === 1,
      3_000,
    );
    expect(ownedHelperIds(await iptables.save(`qrouter-${slow}`, "ipv4"))).toEqual([]);
    await eventually(async () => (await emu.depth(queue.url)) === 0, 20_000);
    expect(ownedHelperIds(await iptables.save(`qrouter-${slow}`, "ipv4"))).toHaveLength(1);
    iptables.slowNamespace = undefined;
  }, 30_000);

  it("stop() lets the apply in flight finish, deletes its message and records it", async () => {
    const routerId = randomUUID();
    await iptables.createNamespace(`qrouter-${routerId}`);
    iptables.delayMs = 1_500;
    const before = iptables.started;
    await sendSnapshot(routerId, 4, [helper("tftp", "udp", 69)]);
    await eventually(async () => iptables.started > before);
    await agent!.stop();
    agent = undefined;
    expect(ownedHelperIds(await iptables.save(`qrouter-${routerId}`, "ipv4"))).toHaveLength(1);
    expect(await emu.depth(queue.url)).toBe(0);
  }, 30_000);
});
