/**
 * The agent's SQS side against fauxqs (real SDK, real FIFO queue + DLQ + redrive), in-process, with the
 * in-memory iptables model (its contract suite holds it to the kernel). Needs no root.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type MessageAttributeValue, SendMessageCommand } from "@aws-sdk/client-sqs";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryIptables } from "../../agent/iptables/memory.ts";
import { ownedHelperIds } from "../../agent/iptables/render.ts";
import { type RunningAgent, startAgent } from "../../agent/main.ts";
import { loadVerifyKeys } from "../../agent/verify-keys.ts";
import { SqsStatusSink } from "../../lib/aws/sqs-status-sink.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import type { HelperRule, RouterSyncMessage } from "../../lib/schemas/index.ts";
import { KEY_ID_ATTRIBUTE, SIGNATURE_ATTRIBUTE } from "../../lib/signing.ts";
import { iptablesBackend } from "../support/backends.ts";
import { type Emulators, type QueuePair, startEmulators } from "../support/emulators.ts";
import { helperRule as helper, routerSync as snapshot } from "../support/factories.ts";
import { signedAttributes, type TestKey, testKey, verifyKeysDir } from "../support/signing.ts";

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

/** The dispatcher's key and the one it rotates to: the agent trusts both. */
const dispatcher = testKey("dispatcher-2026");
const rotated = testKey("dispatcher-2027");
const keysDir = verifyKeysDir(dispatcher, rotated);

const isKey = (value: TestKey | Record<string, MessageAttributeValue>): value is TestKey =>
  typeof value.privateKeyPem === "string";

afterAll(async () => {
  await rm(keysDir, { recursive: true, force: true });
});

const counterValue = async (agent: RunningAgent, outcome: string): Promise<number> => {
  const text = await agent.metrics.registry.getSingleMetricAsString("cth_agent_messages_total");
  return Number(new RegExp(`outcome="${outcome}"\\} (\\d+)`).exec(text)?.[1] ?? 0);
};

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

/** Queues `message` in its router's group, signed by the dispatcher. */
async function sendSigned(emu: Emulators, queueUrl: string, message: RouterSyncMessage): Promise<void> {
  const body = JSON.stringify(message);
  await emu.clients().sqs.send(
    new SendMessageCommand({
      QueueUrl: queueUrl,
      MessageBody: body,
      MessageGroupId: message.router_id,
      MessageDeduplicationId: randomUUID(),
      MessageAttributes: await signedAttributes(dispatcher, body),
    }),
  );
}

describe("agent poll loop on fauxqs", () => {
  let emu: Emulators;
  let queue: QueuePair;
  let status: QueuePair;
  let dir: string;
  let agent: RunningAgent | undefined;
  const iptables = new MemoryIptables();

  /** Sends `body` signed by `key` (default: the dispatcher's), with the attributes given, or (null) unsigned. */
  const send = async (
    body: unknown,
    group: string,
    key: TestKey | Record<string, MessageAttributeValue> | null = dispatcher,
  ) => {
    const text = typeof body === "string" ? body : JSON.stringify(body);
    const attributes = key === null ? undefined : isKey(key) ? await signedAttributes(key, text) : key;
    await emu.clients().sqs.send(
      new SendMessageCommand({
        QueueUrl: queue.url,
        MessageBody: text,
        MessageGroupId: group,
        MessageDeduplicationId: randomUUID(),
        ...(attributes ? { MessageAttributes: attributes } : {}),
      }),
    );
  };

  const reportsFor = async (routerId: string) =>
    (await emu.drain(status.url)).map((m) => JSON.parse(m.Body!)).filter((r) => r.router_id === routerId);

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
      backend: (metrics) => iptablesBackend(iptables, { metrics }),
      verifyKeys: loadVerifyKeys(keysDir),
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
    expect(mine.every((r) => r.digest === helperSetDigest(newest))).toBe(true);
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
      { ...snapshot(routerId, 1, [helper("ftp", "tcp", 21)]), namespace: "fip" },
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

  /** Waits until the queue is empty and returns what was parked in the DLQ meanwhile. */
  const parkedAfter = async (count: number, timeoutMs = 5_000) =>
    eventually(async () => {
      if ((await emu.depth(queue.url)) !== 0 || (await emu.depth(queue.dlqUrl)) < count) return undefined;
      return emu.drain(queue.dlqUrl);
    }, timeoutMs);

  it("finding 1a: a forged r+1 with someone else's helpers is parked, and the real r+1 is still applied", async () => {
    const routerId = randomUUID();
    const ns = `qrouter-${routerId}`;
    await iptables.createNamespace(ns);
    const real1 = [helper("ftp", "tcp", 21)];
    await send(snapshot(routerId, 1, real1), routerId);
    await eventually(async () => ownedHelperIds(await iptables.save(ns, "ipv4")).length === 1);
    const before = await counterValue(agent!, "unauthenticated");
    const forged = JSON.stringify(
      snapshot(routerId, 2, [helper("irc", "tcp", 6667), helper("ftp", "tcp", 2121)]),
    );
    await send(forged, routerId, null);
    // Parked at once (the retry cycle would take 1 + 2 + 4 + 8 s): well within 5 s.
    const parked = await parkedAfter(1);
    expect(parked.map((m) => m.Body)).toEqual([forged]);
    expect(parked[0]?.MessageAttributes?.cth_reason?.StringValue).toBe("unauthenticated:unsigned");
    expect(await counterValue(agent!, "unauthenticated")).toBe(before + 1);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([real1[0]!.id]);
    // The tenant's real revision 2 is not taken for a duplicate of the forgery.
    const real2 = [helper("tftp", "udp", 69)];
    await send(snapshot(routerId, 2, real2), routerId);
    await eventually(async () => ownedHelperIds(await iptables.save(ns, "ipv4"))[0] === real2[0]!.id);
    const reports = await eventually(async () => {
      const mine = await reportsFor(routerId);
      return mine.some((r) => r.revision === 2) && mine;
    });
    expect(reports.filter((r) => r.revision === 2)).toEqual([
      expect.objectContaining({ revision: 2, digest: helperSetDigest(real2) }),
    ]);
  });

  it("finding 1b: a forged revision 2^53-1 with no helpers removes nothing and blocks no later snapshot", async () => {
    const routerId = randomUUID();
    const ns = `qrouter-${routerId}`;
    await iptables.createNamespace(ns);
    const held = [helper("sip", "udp", 5060)];
    await send(snapshot(routerId, 4, held), routerId);
    await eventually(async () => ownedHelperIds(await iptables.save(ns, "ipv4")).length === 1);
    const forged = JSON.stringify(snapshot(routerId, Number.MAX_SAFE_INTEGER, []));
    // Signed, but by a key the agent does not hold.
    await send(forged, routerId, testKey("dispatcher-2026"));
    const parked = await parkedAfter(1);
    expect(parked.map((m) => m.Body)).toEqual([forged]);
    expect(parked[0]?.MessageAttributes?.cth_reason?.StringValue).toBe("unauthenticated:bad-signature");
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([held[0]!.id]);
    const later = [helper("sane", "tcp", 6566), helper("amanda", "udp", 10080)];
    await send(snapshot(routerId, 5, later), routerId);
    await eventually(async () => ownedHelperIds(await iptables.save(ns, "ipv4")).length === 2);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4")).sort()).toEqual(later.map((h) => h.id).sort());
  });

  it("unknown keys, tampered bodies and broken signature attributes are parked; neither rotation key is", async () => {
    const routerId = randomUUID();
    const ns = `qrouter-${routerId}`;
    await iptables.createNamespace(ns);
    const before = await counterValue(agent!, "unauthenticated");
    const attacker = testKey("attacker");
    const signedOther = await signedAttributes(dispatcher, JSON.stringify(snapshot(routerId, 1, [])));
    const tampered = JSON.stringify(snapshot(routerId, 1, [helper("irc", "tcp", 6667)]));
    const hostile: [string, TestKey | Record<string, MessageAttributeValue>, string][] = [
      [JSON.stringify(snapshot(routerId, 1, [helper("ftp", "tcp", 21)])), attacker, "unknown-key"],
      // A valid dispatcher signature, of another body.
      [tampered, signedOther, "bad-signature"],
      [
        JSON.stringify(snapshot(routerId, 1, [helper("ftp", "tcp", 2121)])),
        { [KEY_ID_ATTRIBUTE]: { DataType: "String", StringValue: dispatcher.keyId } },
        "unsigned",
      ],
      [
        JSON.stringify(snapshot(routerId, 1, [helper("ftp", "tcp", 2122)])),
        {
          [KEY_ID_ATTRIBUTE]: { DataType: "String", StringValue: "../dispatcher-2026" },
          [SIGNATURE_ATTRIBUTE]: signedOther[SIGNATURE_ATTRIBUTE]!,
        },
        "unknown-key",
      ],
      [
        JSON.stringify(snapshot(routerId, 1, [helper("ftp", "tcp", 2123)])),
        {
          [KEY_ID_ATTRIBUTE]: signedOther[KEY_ID_ATTRIBUTE]!,
          [SIGNATURE_ATTRIBUTE]: { DataType: "String", StringValue: "not base64 at all!" },
        },
        "bad-signature",
      ],
    ];
    for (const [body, key] of hostile) await send(body, routerId, key);
    const parked = await parkedAfter(hostile.length);
    expect(parked.map((m) => m.Body).sort()).toEqual(hostile.map(([body]) => body).sort());
    const reasons = new Map(parked.map((m) => [m.Body, m.MessageAttributes?.cth_reason?.StringValue]));
    for (const [body, , reason] of hostile) expect(reasons.get(body)).toBe(`unauthenticated:${reason}`);
    expect(await counterValue(agent!, "unauthenticated")).toBe(before + hostile.length);
    expect(iptables.restores.get(ns)).toBeUndefined();
    // Rotation: both keys in the directory are trusted at once.
    const old = [helper("ftp", "tcp", 21)];
    await send(snapshot(routerId, 2, old), routerId, dispatcher);
    await eventually(async () => ownedHelperIds(await iptables.save(ns, "ipv4"))[0] === old[0]!.id);
    const next = [helper("tftp", "udp", 69)];
    await send(snapshot(routerId, 3, next), routerId, rotated);
    await eventually(async () => ownedHelperIds(await iptables.save(ns, "ipv4"))[0] === next[0]!.id);
    expect(await emu.depth(queue.dlqUrl)).toBe(0);
  });

  it("finding 9: a snapshot repeating a helper id is parked at its first receive; nothing is applied", async () => {
    const routerId = randomUUID();
    const ns = `qrouter-${routerId}`;
    await iptables.createNamespace(ns);
    const id = randomUUID();
    const body = JSON.stringify(
      snapshot(routerId, 1, [
        { id, protocol: "tcp", port: 21, helper: "ftp" },
        { id, protocol: "udp", port: 69, helper: "tftp" },
      ]),
    );
    const failuresBefore = await agent!.metrics.registry.getSingleMetricAsString(
      "cth_agent_apply_failures_total",
    );
    await send(body, routerId);
    const parked = await parkedAfter(1, 3_000);
    expect(parked.map((m) => m.Body)).toEqual([body]);
    // Parked by the agent (its reason attribute), not by the queue's redrive after maxReceiveCount.
    expect(parked[0]?.MessageAttributes?.cth_reason?.StringValue).toBe("invalid-router-sync");
    expect(iptables.restores.get(ns)).toBeUndefined();
    expect(await agent!.metrics.registry.getSingleMetricAsString("cth_agent_apply_failures_total")).toBe(
      failuresBefore,
    );
  });

  it("a missing namespace: the snapshot is taken off the queue, kept, and retried (backed off) until it appears", async () => {
    const routerId = randomUUID();
    const ns = `qrouter-${routerId}`;
    const helpers = [helper("ftp", "tcp", 2121)];
    await send(snapshot(routerId, 1, helpers), routerId);
    await eventually(async () =>
      (await agent!.metrics.registry.getSingleMetricAsString("cth_agent_namespace_missing_total")).endsWith(
        " 1",
      ),
    );
    expect(await emu.depth(queue.url)).toBe(0);
    expect(agent!.core.state.pending(routerId)?.revision).toBe(1);
    await iptables.createNamespace(ns);
    await eventually(async () => ownedHelperIds(await iptables.save(ns, "ipv4")).length === 1, 20_000);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4"))).toEqual([helpers[0]!.id]);
    await eventually(async () => agent!.core.state.pending(routerId) === undefined);
    // Backed off, not spun on: a handful of attempts in several seconds, not hundreds.
    const misses = await agent!.metrics.registry.getSingleMetricAsString("cth_agent_namespace_missing_total");
    expect(Number(misses.trim().split(" ").at(-1))).toBeLessThan(5);
  });
});

describe("agent poll loop on fauxqs: slow applies", () => {
  let emu: Emulators;
  let queue: QueuePair;
  let dir: string;
  let agent: RunningAgent | undefined;
  const iptables = new SlowIptables();

  beforeAll(async () => {
    emu = await startEmulators();
    queue = await emu.createNodeQueue(`slow-${randomUUID().slice(0, 6)}`);
    dir = await mkdtemp(join(tmpdir(), "cth-agent-slow-"));
    agent = await startAgent({
      node: "slow",
      sqs: emu.clients().sqs,
      queueUrl: queue.url,
      backend: (metrics) => iptablesBackend(iptables, { metrics }),
      verifyKeys: loadVerifyKeys(keysDir),
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

  const sendSnapshot = (routerId: string, revision: number, helpers: HelperRule[]) =>
    sendSigned(emu, queue.url, snapshot(routerId, revision, helpers));

  it("a message leaves the queue once its snapshot is kept, while the apply still runs", async () => {
    const routerId = randomUUID();
    await iptables.createNamespace(`qrouter-${routerId}`);
    iptables.delayMs = 3_000;
    const before = iptables.started;
    await sendSnapshot(routerId, 1, [helper("ftp", "tcp", 21)]);
    await eventually(async () => iptables.started > before);
    // Mid-apply: the message is gone from the queue, its snapshot is on disk, nothing is applied yet.
    expect(await emu.depth(queue.url)).toBe(0);
    expect(agent!.core.state.pending(routerId)?.revision).toBe(1);
    expect(agent!.core.state.get(routerId)).toBeUndefined();
    await eventually(
      async () => ownedHelperIds(await iptables.save(`qrouter-${routerId}`, "ipv4")).length === 1,
    );
    await eventually(async () => agent!.core.state.pending(routerId) === undefined);
    expect(agent!.core.state.get(routerId)?.revision).toBe(1);
  }, 30_000);

  it("revisions that arrive while their router is applied are coalesced: only the newest is applied, once", async () => {
    const routerId = randomUUID();
    const ns = `qrouter-${routerId}`;
    await iptables.createNamespace(ns);
    iptables.delayMs = 2_000;
    iptables.slowNamespace = ns;
    const restores = () => iptables.restores.get(ns) ?? 0;
    const before = iptables.started;
    await sendSnapshot(routerId, 1, [helper("ftp", "tcp", 21)]);
    await eventually(async () => iptables.started > before);
    // Sent one after another into one message group: each is handed out only once the one before is deleted.
    const newest = [helper("tftp", "udp", 69), helper("ftp", "tcp", 2121)];
    for (const revision of [2, 3, 4]) {
      await sendSnapshot(
        routerId,
        revision,
        revision === 4 ? newest : [helper("ftp", "tcp", 2000 + revision)],
      );
    }
    await eventually(
      async () => (await emu.depth(queue.url)) === 0 && agent!.core.state.pending(routerId)?.revision === 4,
    );
    await eventually(async () => agent!.core.state.get(routerId)?.revision === 4, 20_000);
    expect(ownedHelperIds(await iptables.save(ns, "ipv4")).sort()).toEqual(newest.map((h) => h.id).sort());
    // Revision 1, then revision 4 once: 2 and 3 were never applied.
    expect(restores()).toBeLessThanOrEqual(2 * 2);
    // Cleared once the apply has reported, just after the applied revision is recorded.
    await eventually(async () => agent!.core.state.pending(routerId) === undefined);
    iptables.slowNamespace = undefined;
  }, 40_000);

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
    await eventually(
      async () => ownedHelperIds(await iptables.save(`qrouter-${slow}`, "ipv4")).length === 1,
      20_000,
    );
    expect(await emu.depth(queue.url)).toBe(0);
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

describe("agent restart: what was kept and not applied is applied by the next start", () => {
  let emu: Emulators;
  let dir: string;

  beforeAll(async () => {
    emu = await startEmulators();
    dir = await mkdtemp(join(tmpdir(), "cth-agent-restart-"));
  });

  afterAll(async () => {
    await emu?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("a snapshot taken off the queue before a stop is applied after the restart, with no message left", async () => {
    const node = `restart-${randomUUID().slice(0, 6)}`;
    const queue = await emu.createNodeQueue(node);
    const iptables = new SlowIptables();
    iptables.delayMs = 1_500;
    const start = () =>
      startAgent({
        node,
        sqs: emu.clients().sqs,
        queueUrl: queue.url,
        backend: (metrics) => iptablesBackend(iptables, { metrics }),
        verifyKeys: loadVerifyKeys(keysDir),
        catalog: new HelperCatalog(),
        limits: DEFAULT_LIMITS,
        logger: pino({ level: "silent" }),
        stateDir: dir,
        namespacePattern: "qrouter-{router_id}",
        driftIntervalSeconds: 3600,
        waitSeconds: 1,
        applyConcurrency: 1,
      });
    const first = await start();
    const [busy, waiting] = [randomUUID(), randomUUID()];
    for (const routerId of [busy, waiting]) {
      await iptables.createNamespace(`qrouter-${routerId}`);
      await sendSigned(emu, queue.url, snapshot(routerId, 3, [helper("ftp", "tcp", 21)]));
    }
    // One apply slot: one router is being applied while the other waits, both off the queue.
    await eventually(
      async () => first.core.state.pendingRouters().length === 2 && (await emu.depth(queue.url)) === 0,
    );
    await first.stop();
    const appliedFirst = [busy, waiting].filter((id) => first.core.state.get(id) !== undefined);
    expect(appliedFirst).toHaveLength(1);
    const left = [busy, waiting].find((id) => !appliedFirst.includes(id))!;
    expect(ownedHelperIds(await iptables.save(`qrouter-${left}`, "ipv4"))).toEqual([]);

    const second = await start();
    try {
      await eventually(
        async () => ownedHelperIds(await iptables.save(`qrouter-${left}`, "ipv4")).length === 1,
      );
      await eventually(async () => second.core.state.pendingRouters().length === 0);
      expect(second.core.state.get(left)?.revision).toBe(3);
    } finally {
      await second.stop();
    }
  }, 30_000);
});
