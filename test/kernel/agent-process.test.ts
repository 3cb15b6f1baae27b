/**
 * The real agent process, the real queue (fauxqs through the AWS SDK) and real iptables in namespaces this
 * suite creates: what the kernel holds after each snapshot, not what the agent believes.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Message, SendMessageCommand } from "@aws-sdk/client-sqs";
import { afterAll, beforeAll, expect, it } from "vitest";
import { expectedOwnedLines, ownedHelperIds, ownedLines } from "../../agent/iptables/render.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { planFamily } from "../../lib/rules.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";
import { type Emulators, type QueuePair, startEmulators } from "../support/emulators.ts";
import { helperRule as helper, routerSync as snapshot } from "../support/factories.ts";
import { descendantPids, eventually, inNs, rawSave, Sandbox } from "../support/netns.ts";
import { describeKernel } from "../support/requirements.ts";
import { signedAttributes, testKey, verifyKeysDir } from "../support/signing.ts";
import { AgentProcess, agentFlags } from "./agent-support.ts";

const catalog = new HelperCatalog();
const DRIFT_SECONDS = 2;
/** The dispatcher's key: every snapshot this suite sends is signed with it, as the dispatcher does. */
const dispatcher = testKey("dispatcher");

const expected = (helpers: readonly HelperRule[], family: "ipv4" | "ipv6") =>
  expectedOwnedLines(planFamily(helpers, family, catalog).rules);

describeKernel("agent process: fauxqs queue -> real iptables in router namespaces", () => {
  const sandbox = new Sandbox();
  const node = `k${sandbox.tag}`;
  const routerA = randomUUID();
  const routerB = randomUUID();
  const nsA = `qrouter-${routerA}`;
  const nsB = `qrouter-${routerB}`;
  let emu: Emulators;
  let queue: QueuePair;
  let status: QueuePair;
  let stateDir: string;
  let keysDir: string;
  let agent: AgentProcess;
  let flags: string[];
  let env: NodeJS.ProcessEnv;
  const pristine: Record<string, string> = {};
  const reports: Record<string, unknown>[] = [];

  /** Sends `body` signed by the dispatcher, or by `key` (null: unsigned). */
  const send = async (body: unknown, group: string, key: ReturnType<typeof testKey> | null = dispatcher) => {
    const text = typeof body === "string" ? body : JSON.stringify(body);
    await emu.clients().sqs.send(
      new SendMessageCommand({
        QueueUrl: queue.url,
        MessageBody: text,
        MessageGroupId: group,
        MessageDeduplicationId: randomUUID(),
        ...(key ? { MessageAttributes: await signedAttributes(key, text) } : {}),
      }),
    );
  };

  const waitReport = (routerId: string, revision: number, timeoutMs = 20_000) =>
    eventually(
      async () => {
        reports.push(...(await emu.drain(status.url)).map((m: Message) => JSON.parse(m.Body!)));
        return reports.find((r) => r.router_id === routerId && r.revision === revision);
      },
      timeoutMs,
      `applied report ${routerId}@${revision}`,
    );

  beforeAll(async () => {
    emu = await startEmulators();
    queue = await emu.createNodeQueue(node);
    status = await emu.createStatusQueue(`cth-status-${sandbox.tag}`);
    stateDir = await mkdtemp(join(tmpdir(), "cth-agent-k-"));
    keysDir = verifyKeysDir(dispatcher);
    await sandbox.namespace("", nsA);
    await sandbox.namespace("", nsB);
    for (const ns of [nsA, nsB]) {
      for (const family of ["ipv4", "ipv6"] as const) pristine[`${ns}/${family}`] = await rawSave(ns, family);
    }
    flags = agentFlags(
      { node, queueUrl: queue.url, statusQueueUrl: status.url, stateDir, verifyKeysDir: keysDir },
      [
        ...["--metrics-port", "0", "--drift-interval", String(DRIFT_SECONDS)],
        ...["--visibility-timeout", "3", "--retry-base", "1"],
      ],
    );
    env = { ...emu.env(emu.makeConfig()), LOG_LEVEL: "debug", CTH_MAX_HELPERS_PER_ROUTER: "2000" };
    agent = await AgentProcess.start(sandbox, flags, env);
  });

  afterAll(async () => {
    await sandbox.cleanup();
    await emu?.stop();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
    if (keysDir) await rm(keysDir, { recursive: true, force: true });
  });

  const v1 = [
    helper("ftp", "tcp", 21),
    helper("tftp", "udp", 69),
    helper("irc", "tcp", 6667),
    helper("sip", "udp", 5060),
    helper("snmp", "udp", 161),
    helper("Q.931", "tcp", 1720),
  ];

  it("converges a snapshot into both families; IPv4-only helpers stay out of ip6tables", async () => {
    await send(snapshot(routerA, 1, v1), routerA);
    const report = await waitReport(routerA, 1);
    expect(report).toEqual({
      v: 1,
      kind: "applied",
      router_id: routerA,
      revision: 1,
      host: node,
      namespace: "qrouter",
      // Parsed back out of the real iptables-save of both families.
      digest: helperSetDigest(v1),
      rules: { ipv4: 6, ipv6: 4 },
      errors: [],
    });
    const v4 = await rawSave(nsA, "ipv4");
    const v6 = await rawSave(nsA, "ipv6");
    expect(ownedLines(v4)).toEqual(expected(v1, "ipv4"));
    expect(ownedLines(v6)).toEqual(expected(v1, "ipv6"));
    expect(v6).not.toMatch(/--helper (irc|snmp|pptp|netbios-ns)\b/);
    expect(v4).toContain("--helper irc");
    const metrics = await (await fetch(`http://127.0.0.1:${agent.metricsPort()}/metrics`)).text();
    expect(metrics).toMatch(/cth_agent_applies_total\{result="changed"\} [1-9]/);
    expect(metrics).toContain("cth_agent_apply_seconds_bucket");
  });

  it("re-applying the same snapshot rewrites nothing: iptables-save (with counters) unchanged", async () => {
    // Loopback SYNs to port 21 pass raw PREROUTING: the rule's counters become non-zero. A rewrite would
    // reset them to zero, so equal counters prove nothing was rewritten.
    await inNs(nsA, [
      process.execPath,
      "-e",
      "const s=require('net').connect(21,'127.0.0.1');s.on('error',()=>{});setTimeout(()=>process.exit(0),300)",
    ]);
    const before = await rawSave(nsA, "ipv4", true);
    expect(before).toMatch(/\[[1-9]\d*:\d+\] -A CTH-HELPERS -p tcp -m tcp --dport 21 /);
    const before6 = await rawSave(nsA, "ipv6", true);
    await send(snapshot(routerA, 2, [...v1].reverse()), routerA);
    await waitReport(routerA, 2);
    expect(await rawSave(nsA, "ipv4", true)).toBe(before);
    expect(await rawSave(nsA, "ipv6", true)).toBe(before6);
    const line = await agent.waitFor((l) => l.revision === 2 && l.router_id === routerA && "changed" in l);
    expect(line.changed).toBe(false);
    expect(line.msg).toBe("snapshot already in place, nothing written");
  });

  it("an update and then a removal converge; removal leaves the table as it was before the agent", async () => {
    const next = [helper("ftp", "tcp", 2121), helper("pptp", "tcp", 1723)];
    await send(snapshot(routerA, 3, next), routerA);
    await waitReport(routerA, 3);
    expect(ownedLines(await rawSave(nsA, "ipv4"))).toEqual(expected(next, "ipv4"));
    expect(ownedLines(await rawSave(nsA, "ipv6"))).toEqual(expected(next, "ipv6"));
    await send(snapshot(routerA, 4, []), routerA);
    await waitReport(routerA, 4);
    expect(await rawSave(nsA, "ipv4")).toBe(pristine[`${nsA}/ipv4`]);
    expect(await rawSave(nsA, "ipv6")).toBe(pristine[`${nsA}/ipv6`]);
  });

  const staleCount = async (): Promise<number> => {
    const text = await (await fetch(`http://127.0.0.1:${agent.metricsPort()}/metrics`)).text();
    return Number(/cth_agent_messages_total\{outcome="stale"\} (\d+)/.exec(text)?.[1] ?? 0);
  };

  it("stale, duplicated and out-of-order messages leave the newest state", async () => {
    const newest = [helper("sane", "tcp", 6566), helper("amanda", "udp", 10080)];
    await send(snapshot(routerA, 7, newest), routerA);
    await send(snapshot(routerA, 5, [helper("ftp", "tcp", 21)]), routerA);
    await send(snapshot(routerA, 7, newest), routerA);
    await send(snapshot(routerA, 6, [helper("tftp", "udp", 69)]), routerA);
    await waitReport(routerA, 7);
    await eventually(async () => (await emu.depth(queue.url)) === 0, 20_000, "queue drained");
    expect(ownedLines(await rawSave(nsA, "ipv4"))).toEqual(expected(newest, "ipv4"));
    expect(ownedLines(await rawSave(nsA, "ipv6"))).toEqual(expected(newest, "ipv6"));
    expect(reports.some((r) => r.router_id === routerA && (r.revision === 5 || r.revision === 6))).toBe(
      false,
    );
    // An older revision arriving after the newest one was applied (not in the same batch, so no coalescing):
    // the state file's guard drops it.
    const staleBefore = await staleCount();
    await send(snapshot(routerA, 4, [helper("ftp", "tcp", 2121)]), routerA);
    await eventually(async () => (await staleCount()) > staleBefore, 20_000, "stale counted");
    await eventually(async () => (await emu.depth(queue.url)) === 0, 20_000, "queue drained");
    expect(ownedLines(await rawSave(nsA, "ipv4"))).toEqual(expected(newest, "ipv4"));
  });

  it("an invalid message reaches the DLQ and touches no rule", async () => {
    const before = await rawSave(nsA, "ipv4", true);
    const before6 = await rawSave(nsA, "ipv6", true);
    const bad = [
      {
        ...snapshot(routerA, 99, [helper("ftp", "tcp", 21)]),
        helpers: [{ id: randomUUID(), protocol: "tcp", port: 0, helper: "ftp" }],
      },
      { ...snapshot(routerA, 99, []), v: 2 },
      '{"v":1,"kind":"router-sync"',
    ];
    for (const body of bad) await send(body, routerA);
    const parked = await eventually(
      async () => {
        const depth = await emu.depth(queue.dlqUrl);
        return depth === bad.length && depth;
      },
      20_000,
      "DLQ holds the invalid messages",
    );
    expect(parked).toBe(bad.length);
    expect(await emu.depth(queue.url)).toBe(0);
    const metrics = await (await fetch(`http://127.0.0.1:${agent.metricsPort()}/metrics`)).text();
    expect(metrics).toContain(`cth_agent_messages_total{outcome="invalid"} ${bad.length}`);
    expect(metrics).toMatch(/cth_agent_messages_total\{outcome="(stale|superseded)"\} [1-9]/);
    expect(await rawSave(nsA, "ipv4", true)).toBe(before);
    expect(await rawSave(nsA, "ipv6", true)).toBe(before6);
  });

  it("a forged snapshot (unsigned, or signed by another key) is parked and counted; the kernel is untouched", async () => {
    const before = await rawSave(nsA, "ipv4", true);
    const before6 = await rawSave(nsA, "ipv6", true);
    const dlqBefore = await emu.depth(queue.dlqUrl);
    await send(snapshot(routerA, 2 ** 40, [helper("irc", "tcp", 6668)]), routerA, null);
    await send(snapshot(routerA, Number.MAX_SAFE_INTEGER, []), routerA, testKey("dispatcher"));
    await eventually(
      async () => (await emu.depth(queue.dlqUrl)) - dlqBefore === 2 && (await emu.depth(queue.url)) === 0,
      10_000,
      "forgeries parked",
    );
    const metrics = await (await fetch(`http://127.0.0.1:${agent.metricsPort()}/metrics`)).text();
    expect(metrics).toContain('cth_agent_messages_total{outcome="unauthenticated"} 2');
    expect(await rawSave(nsA, "ipv4", true)).toBe(before);
    expect(await rawSave(nsA, "ipv6", true)).toBe(before6);
    // Logged with the reason, never with the body.
    const line = await agent.waitFor((l) => l.msg === "unauthenticated queue message, parking it in the DLQ");
    expect(line.reason).toBe("unsigned");
    expect(JSON.stringify(agent.logs)).not.toContain("6668");
  });

  it("Neutron defect 2: two helpers whose ids share 7 characters; deleting one keeps the other", async () => {
    const prefix = randomUUID().slice(0, 7);
    const a = helper("ftp", "tcp", 21, `${prefix}${randomUUID().slice(7)}`);
    const b = helper("ftp", "tcp", 2121, `${prefix}${randomUUID().slice(7)}`);
    await send(snapshot(routerA, 8, [a, b]), routerA);
    await waitReport(routerA, 8);
    expect(ownedHelperIds(await rawSave(nsA, "ipv4"))).toEqual([a.id, b.id]);
    await send(snapshot(routerA, 9, [b]), routerA);
    await waitReport(routerA, 9);
    expect(ownedHelperIds(await rawSave(nsA, "ipv4"))).toEqual([b.id]);
    expect(ownedHelperIds(await rawSave(nsA, "ipv6"))).toEqual([b.id]);
  });

  it("Neutron defect 3: syncing one router never touches another router's rules", async () => {
    const forB = [helper("tftp", "udp", 69), helper("irc", "tcp", 6667)];
    await send(snapshot(routerB, 1, forB), routerB);
    await waitReport(routerB, 1);
    const b4 = await rawSave(nsB, "ipv4", true);
    const b6 = await rawSave(nsB, "ipv6", true);
    await send(snapshot(routerA, 10, [helper("sip", "tcp", 5060)]), routerA);
    await waitReport(routerA, 10);
    await send(snapshot(routerA, 11, []), routerA);
    await waitReport(routerA, 11);
    expect(await rawSave(nsB, "ipv4", true)).toBe(b4);
    expect(await rawSave(nsB, "ipv6", true)).toBe(b6);
    expect(ownedLines(await rawSave(nsB, "ipv4"))).toEqual(expected(forB, "ipv4"));
  });

  it("drift: the owned chain deleted by hand is restored within the drift interval", async () => {
    const want = [helper("ftp", "tcp", 21), helper("tftp", "udp", 69)];
    await send(snapshot(routerA, 12, want), routerA);
    await waitReport(routerA, 12);
    const repairsBefore = agent.logs.filter((l) => l.msg === "drift found, re-applying").length;
    await inNs(
      nsA,
      ["iptables-restore", "--noflush"],
      "*raw\n-D PREROUTING -j CTH-HELPERS\n-F CTH-HELPERS\n-X CTH-HELPERS\nCOMMIT\n",
    );
    await inNs(nsA, ["ip6tables-restore", "--noflush"], "*raw\n-F CTH-HELPERS\nCOMMIT\n");
    const cut = Date.now();
    await eventually(
      async () =>
        JSON.stringify(ownedLines(await rawSave(nsA, "ipv4"))) === JSON.stringify(expected(want, "ipv4")) &&
        JSON.stringify(ownedLines(await rawSave(nsA, "ipv6"))) === JSON.stringify(expected(want, "ipv6")),
      (DRIFT_SECONDS + 3) * 1000,
      "drift repaired",
    );
    expect(Date.now() - cut).toBeLessThan((DRIFT_SECONDS + 3) * 1000);
    // The agent noticed the deletion (with a short interval its repair can beat any read-back of the gap).
    await eventually(
      async () => agent.logs.filter((l) => l.msg === "drift found, re-applying").length > repairsBefore,
      5_000,
      "drift repair logged",
    );
  });

  it("SIGKILL in the middle of an apply, then a restart, converges to the newest snapshot", async () => {
    // Kill the agent while its iptables-restore runs (under its command helper). A restore of 2000 rules
    // takes tens of milliseconds, so watch /proc in a tight loop, and send another big snapshot if one
    // apply slipped through unseen.
    const restoreUnder = (root: number): string | undefined => {
      for (const pid of descendantPids(root)) {
        let cmd = "";
        try {
          cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
        } catch {
          continue;
        }
        if (cmd.includes("restore")) return cmd.replaceAll("\0", " ");
      }
      return undefined;
    };
    let revision = 13;
    let caught: string | undefined;
    for (let attempt = 0; attempt < 5 && caught === undefined; attempt++) {
      const big = Array.from({ length: 2000 }, (_, i) => helper("ftp", "tcp", 10_000 + attempt * 2000 + i));
      revision = 13 + attempt;
      await send(snapshot(routerA, revision, big), routerA);
      const deadline = Date.now() + 8_000;
      while (caught === undefined && Date.now() < deadline) {
        caught = restoreUnder(agent.pid);
        if (caught === undefined) await new Promise((resolve) => setTimeout(resolve, 1));
      }
      if (caught === undefined) await waitReport(routerA, revision);
    }
    if (caught === undefined) throw new Error("never caught the agent inside an iptables-restore");
    process.kill(agent.pid, "SIGKILL");
    expect(caught).toContain("--noflush");
    expect((await agent.exited).signal).toBe("SIGKILL");
    const newest = [helper("ftp", "tcp", 21), helper("sip", "udp", 5060), helper("snmp", "udp", 161)];
    await send(snapshot(routerA, revision + 1, newest), routerA);
    agent = await AgentProcess.start(sandbox, flags, env);
    await waitReport(routerA, revision + 1, 40_000);
    expect(ownedLines(await rawSave(nsA, "ipv4"))).toEqual(expected(newest, "ipv4"));
    expect(ownedLines(await rawSave(nsA, "ipv6"))).toEqual(expected(newest, "ipv6"));
    await eventually(async () => (await emu.depth(queue.url)) === 0, 20_000, "queue drained");
  });

  it("SIGTERM stops the agent cleanly with exit code 0", async () => {
    process.kill(agent.pid, "SIGTERM");
    const { code } = await agent.exited;
    expect(code).toBe(0);
    expect(agent.logs.some((l) => l.msg === "agent stopped")).toBe(true);
    // The metrics endpoint went down with it.
    await expect(fetch(`http://127.0.0.1:${agent.metricsPort()}/metrics`)).rejects.toThrow();
  });
});
