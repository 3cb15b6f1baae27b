/**
 * (f) A burst on the local stack: `routers` routers on node `local`, then `notifications` POSTs (one new helper
 * each, for router n % routers, each with its own Idempotency-Key) from `clients` concurrent clients, as fast as
 * the API takes them. Measured: intake, end-to-end throughput, 202 -> kernel latency (a rule monitor in a
 * sample of namespaces, as bench/e2e.ts), how long the backlog takes to drain after the last 202 (every router
 * in sync at the revision of its last 202), agent applies per notification (its /metrics), the DLQs. Every
 * namespace is then read back against its router's desired helpers. Then the same burst again with the same
 * keys and bodies: every answer must be the first one replayed, and nothing may move.
 * Bounded: every wait stops at a global deadline, and the stack is stopped whatever happens.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { GetQueueAttributesCommand, SQSClient } from "@aws-sdk/client-sqs";
import pLimit from "p-limit";
import { ownedHelperIds } from "../agent/iptables/render.ts";
import { readView, TABLE } from "../agent/nftables/render.ts";
import { type Family, HelperCatalog } from "../lib/catalog.ts";
import { FAMILIES, planFamily } from "../lib/rules.ts";
import type { StackInfo } from "../scripts/local/stack.ts";
import { EMULATOR_CREDENTIALS, EMULATOR_REGION } from "../test/support/emulators.ts";
import { RuleMonitor } from "./e2e.ts";
import { freePort, type StackChild, stackMissing, startStackChild } from "./stack-child.ts";
import { run, summarize } from "./stats.ts";

export interface BurstOptions {
  readonly root: string;
  readonly routers: number;
  readonly notifications: number;
  readonly clients: number;
  /** The stack agent's firewall backend (default nftables). */
  readonly backend?: "nftables" | "iptables";
  /** Routers whose namespace a rule monitor watches for the latency sample (default min(routers, 25)). */
  readonly sampleRouters?: number;
  /**
   * The stack's reconciler period (default 300 s, the deployed schedule). The local default of 10 s re-sends
   * every router still behind on each sweep, which in a burst is nearly all of them.
   */
  readonly reconcileSeconds?: number;
  /**
   * Concurrent status batches (default 5: Lambda's SQS event source starts with five and scales up; the
   * stack's default single poller read 4,000 reports behind the agent in a 10,000-notification burst).
   */
  readonly statusPollers?: number;
  /** Everything, stack start to stop, within this (default: from the sizes). */
  readonly deadlineMs?: number;
  readonly log: (line: string) => void;
}

/** One sample of the backlog while the burst and its drain run. */
export interface BacklogSample {
  /** Seconds since the first POST. */
  readonly t: number;
  /** Node `local`'s command queue: visible, in flight and delayed. */
  readonly queued: number;
  /** Node `local`'s status queue (the agent's reports, waiting for the status function). */
  readonly statusQueued: number;
  /** The agent's cth_agent_applies_total so far, counted from the burst's start. */
  readonly applies: number;
  readonly accepted: number;
}

export interface ReplayResult {
  /** Response status -> count. */
  readonly statuses: Record<string, number>;
  /** Replies whose status or body differ from the first answer to the same key. */
  readonly differing: number;
  /** Routers whose revision or ETag moved. */
  readonly moved: readonly string[];
  /** The agent's applies and message outcomes during the replay (and a settle time after it). */
  readonly appliesDelta: number;
  readonly messagesDelta: number;
  readonly queuedAfter: number;
  readonly seconds: number;
}

export interface BurstResult {
  readonly skipped?: string;
  readonly backend: string;
  readonly routers: number;
  readonly notifications: number;
  readonly clients: number;
  readonly registerSeconds: number;
  /** Status of each notification's final answer -> count (429/503 are retried with the same key). */
  readonly statuses: Record<string, number>;
  readonly retries: number;
  readonly intakeSeconds: number;
  readonly intakePerSecond: number;
  /** Whether every router reached the revision of its last 202, in sync, within the deadline. */
  readonly converged: boolean;
  /** First POST -> every router in sync at its last revision. */
  readonly endToEndSeconds: number;
  readonly endToEndPerSecond: number;
  /** Last 202 -> every router in sync at its last revision. */
  readonly drainSeconds: number;
  /** Last 202 -> the node queue empty (first time). */
  readonly queueEmptySeconds: number;
  /** 202 -> the helper's rule committed in its namespace, for the routers a rule monitor watched. */
  readonly latency: {
    readonly samples: number;
    readonly p50Ms: number;
    readonly p99Ms: number;
    readonly maxMs: number;
    /** From the POST sent (not its 202) to the rule committed. */
    readonly fromSendP50Ms: number;
    readonly fromSendP99Ms: number;
  };
  /** POST -> its final answer (retries included). */
  readonly post: { readonly p50Ms: number; readonly p99Ms: number };
  /** The agent's counters over the burst, from its /metrics. */
  readonly applies: { readonly changed: number; readonly unchanged: number };
  readonly appliesPerNotification: number;
  readonly applyFailures: number;
  /** cth_agent_messages_total by outcome (superseded, stale, duplicate, ...). */
  readonly messages: Record<string, number>;
  readonly peakQueued: number;
  /**
   * CPU seconds from the burst's first POST to convergence: the stack's process (gateway, functions,
   * emulators, status consumer, reconciler: one Node thread) and the agent's (its command helpers apart).
   */
  readonly cpu: { readonly stack: number; readonly agent: number };
  /** The machine's 1-minute load average at the end of the drain (other work on the same cores). */
  readonly loadAverage: number;
  readonly queuedAtLast202: number;
  readonly backlog: readonly BacklogSample[];
  readonly dlq: { readonly node: number; readonly status: number };
  /** Routers not at their last 202's revision, or not in sync, at the end (with the reason). */
  readonly notAtLastRevision: readonly string[];
  /** Routers whose desired helpers differ from the ones accepted for them. */
  readonly desiredMismatch: readonly string[];
  /** Routers whose namespace does not hold exactly the desired rules. */
  readonly kernelMismatch: readonly string[];
  readonly replay?: ReplayResult;
}

const catalog = new HelperCatalog();
/** USER_HZ: what Linux reports /proc/<pid>/stat times in, 100 on every architecture Node runs on. */
const CLOCK_TICKS = 100;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** Retries of one POST answered 429 or 503 (with the same Idempotency-Key, so a repeat is safe). */
const MAX_ATTEMPTS = 30;

interface Reply {
  readonly status: number;
  readonly text: string;
  readonly etag: string | undefined;
  readonly retryAfter: string | undefined;
}

/** The local API with the headers the burst needs (stack-child's `api` keeps only the body). */
async function call(
  stack: StackChild,
  token: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Reply> {
  const response = await fetch(`${stack.apiUrl}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...headers,
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(60_000),
  });
  return {
    status: response.status,
    text: await response.text(),
    etag: response.headers.get("etag") ?? undefined,
    retryAfter: response.headers.get("retry-after") ?? undefined,
  };
}

/** Sums the samples of one counter in a Prometheus text page, by one label's value. */
function counter(page: string, name: string, label?: string): Record<string, number> {
  const sums: Record<string, number> = {};
  for (const line of page.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const key = label ? (new RegExp(`${label}="([^"]*)"`).exec(line)?.[1] ?? "") : "";
    sums[key] = (sums[key] ?? 0) + Number(line.split(" ").pop());
  }
  return sums;
}

/** User + system CPU seconds of a process so far, from /proc (NaN when it is gone). */
function cpuSeconds(pid: number | undefined): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    // User and system time are fields 14 and 15 of proc_pid_stat(5), counted here from the state field (3).
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}

const sum = (values: Record<string, number>): number => Object.values(values).reduce((a, b) => a + b, 0);

interface AgentCounters {
  readonly applies: Record<string, number>;
  readonly failures: number;
  readonly messages: Record<string, number>;
}

async function agentCounters(metricsPort: number): Promise<AgentCounters> {
  const page = await (
    await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(10_000) })
  ).text();
  return {
    applies: counter(page, "cth_agent_applies_total", "result"),
    failures: sum(counter(page, "cth_agent_apply_failures_total")),
    messages: counter(page, "cth_agent_messages_total", "outcome"),
  };
}

const delta = (after: Record<string, number>, before: Record<string, number>): Record<string, number> =>
  Object.fromEntries(Object.entries(after).map(([key, value]) => [key, value - (before[key] ?? 0)]));

async function depth(sqs: SQSClient, url: string): Promise<number> {
  const { Attributes = {} } = await sqs.send(
    new GetQueueAttributesCommand({
      QueueUrl: url,
      AttributeNames: [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
      ],
    }),
  );
  return (
    Number(Attributes.ApproximateNumberOfMessages ?? 0) +
    Number(Attributes.ApproximateNumberOfMessagesNotVisible ?? 0) +
    Number(Attributes.ApproximateNumberOfMessagesDelayed ?? 0)
  );
}

/** Helper ids per family the namespace holds (each once per family it covers); undefined: unreadable. */
async function heldIds(
  namespace: string,
  backend: "nftables" | "iptables",
): Promise<Record<Family, string[]> | undefined> {
  const exec = (args: string[]) => run("ip", ["netns", "exec", namespace, ...args], { timeoutMs: 30_000 });
  try {
    if (backend === "iptables") {
      const [v4, v6] = await Promise.all([
        exec(["iptables-save", "-t", "raw"]),
        exec(["ip6tables-save", "-t", "raw"]),
      ]);
      return { ipv4: ownedHelperIds(v4.stdout), ipv6: ownedHelperIds(v6.stdout) };
    }
    const listing = await exec(["nft", "-j", "list", "table", "inet", TABLE]).catch(() => ({ stdout: "" }));
    const view = readView(listing.stdout, catalog);
    if (!view.wellFormed) return undefined;
    const held: Record<Family, string[]> = { ipv4: [], ipv6: [] };
    for (const rule of view.rules)
      for (const family of rule.only ? [rule.only] : FAMILIES) held[family].push(rule.id);
    return held;
  } catch {
    return undefined;
  }
}

interface RouterState {
  readonly revision: number;
  readonly in_sync: boolean;
  readonly helpers: { id: string; protocol: "tcp" | "udp"; port: number; helper: string }[];
}

export async function benchBurst(options: BurstOptions): Promise<BurstResult> {
  const backendWanted = options.backend ?? "nftables";
  const { log, routers: routerCount, notifications, clients } = options;
  const empty: BurstResult = {
    backend: backendWanted,
    routers: routerCount,
    notifications,
    clients,
    registerSeconds: Number.NaN,
    statuses: {},
    retries: 0,
    intakeSeconds: Number.NaN,
    intakePerSecond: Number.NaN,
    converged: false,
    endToEndSeconds: Number.NaN,
    endToEndPerSecond: Number.NaN,
    drainSeconds: Number.NaN,
    queueEmptySeconds: Number.NaN,
    latency: {
      samples: 0,
      p50Ms: Number.NaN,
      p99Ms: Number.NaN,
      maxMs: Number.NaN,
      fromSendP50Ms: Number.NaN,
      fromSendP99Ms: Number.NaN,
    },
    post: { p50Ms: Number.NaN, p99Ms: Number.NaN },
    applies: { changed: 0, unchanged: 0 },
    appliesPerNotification: Number.NaN,
    applyFailures: 0,
    messages: {},
    peakQueued: 0,
    cpu: { stack: Number.NaN, agent: Number.NaN },
    loadAverage: Number.NaN,
    queuedAtLast202: 0,
    backlog: [],
    dlq: { node: Number.NaN, status: Number.NaN },
    notAtLastRevision: [],
    desiredMismatch: [],
    kernelMismatch: [],
  };
  const missing = stackMissing(options.root);
  if (missing) return { ...empty, skipped: missing };
  const deadlineMs = options.deadlineMs ?? 180_000 + routerCount * 200 + notifications * 120;
  const deadline = Date.now() + deadlineMs;
  const left = () => deadline - Date.now();
  const check = (phase: string) => {
    if (left() <= 0) throw new Error(`burst: the ${deadlineMs / 1000} s deadline passed ${phase}`);
  };
  const metricsPort = await freePort();
  const stack = await startStackChild(options.root, {
    env: {
      CTH_LOCAL_BACKEND: backendWanted,
      CTH_LOCAL_METRICS_PORT: String(metricsPort),
      CTH_LOCAL_RECONCILE_SECONDS: String(options.reconcileSeconds ?? 300),
      CTH_LOCAL_STATUS_POLLERS: String(options.statusPollers ?? 5),
    },
  });
  const monitors: RuleMonitor[] = [];
  const info = JSON.parse(readFileSync(join(stack.dir, "stack.json"), "utf8")) as StackInfo;
  const sqs = new SQSClient({
    region: EMULATOR_REGION,
    endpoint: info.awsEndpoint,
    credentials: EMULATOR_CREDENTIALS,
  });
  const routerIds = Array.from({ length: routerCount }, () => randomUUID());
  const mine = new Set<string>(routerIds);
  try {
    if (stack.backend !== backendWanted)
      return { ...empty, skipped: `the stack's agent runs backend "${stack.backend}", not ${backendWanted}` };
    const backend = backendWanted;

    /** Routers of this run the listing says some host has not confirmed (all pages). */
    const outOfSync = async (): Promise<Map<string, number>> => {
      const found = new Map<string, number>();
      let cursor: string | undefined;
      do {
        const query = `host=local&in_sync=false&limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
        const page = await call(stack, stack.adminToken, "GET", `/v1/routers?${query}`);
        if (page.status !== 200)
          throw new Error(`GET /v1/routers: ${page.status} ${page.text.slice(0, 200)}`);
        const body = JSON.parse(page.text) as {
          routers: { router_id: string; revision: number }[];
          next_cursor: string | null;
        };
        for (const router of body.routers)
          if (mine.has(router.router_id)) found.set(router.router_id, router.revision);
        cursor = body.next_cursor ?? undefined;
      } while (cursor);
      return found;
    };

    const tag = randomUUID().slice(0, 8);
    const created = (routerId: string, port: number) => ({
      event: "created",
      conntrack_helpers: [{ id: randomUUID(), router_id: routerId, protocol: "tcp", port, helper: "ftp" }],
    });
    /** POSTs `body` until it is not a 429/503, honouring Retry-After; the same key every time. */
    let retries = 0;
    const submit = async (body: unknown, key: string): Promise<Reply> => {
      for (let attempt = 1; ; attempt++) {
        check(`sending notification ${key}`);
        const reply = await call(stack, stack.token, "POST", "/v1/notifications", body, {
          "idempotency-key": key,
        });
        if ((reply.status !== 429 && reply.status !== 503) || attempt >= MAX_ATTEMPTS) return reply;
        retries++;
        const seconds = Number(reply.retryAfter ?? Number.NaN);
        await sleep(Number.isFinite(seconds) ? Math.min(seconds * 1000, 2_000) : 50 * attempt);
      }
    };
    const lastRevision = new Map<string, number>();
    const noteRevisions = (reply: Reply) => {
      for (const router of (JSON.parse(reply.text) as { routers: { router_id: string; revision: number }[] })
        .routers)
        lastRevision.set(
          router.router_id,
          Math.max(lastRevision.get(router.router_id) ?? 0, router.revision),
        );
    };

    // 1. The node before the burst: every router registered and holding one helper (not timed), so its
    // namespace exists (a registered router has no snapshot to apply until its first helper) and the
    // burst meets a node that already hosts its routers, as a rule monitor needs.
    const registerStarted = performance.now();
    const setup = pLimit(clients);
    const primers = routerIds.map((routerId) => created(routerId, 1000));
    let registered = 0;
    await Promise.all(
      routerIds.map((routerId, i) =>
        setup(async () => {
          check("registering routers");
          const put = await call(stack, stack.adminToken, "PUT", `/v1/routers/${routerId}`, {
            project_id: stack.project,
            host: "local",
          });
          if (put.status !== 201) throw new Error(`PUT router: ${put.status} ${put.text.slice(0, 200)}`);
          const primed = await submit(primers[i], `prime-${tag}-${i}`);
          if (primed.status !== 202) throw new Error(`POST: ${primed.status} ${primed.text.slice(0, 200)}`);
          noteRevisions(primed);
          if (++registered % 200 === 0) log(`  ${registered}/${routerCount} routers registered`);
        }),
      ),
    );
    let lastWaitLog = 0;
    for (;;) {
      const waiting = (await outOfSync()).size;
      if (waiting === 0) break;
      check(`waiting for the first helpers (${waiting} routers not in sync)`);
      if (performance.now() - lastWaitLog > 5_000) {
        lastWaitLog = performance.now();
        log(`  ${waiting} routers wait for their first helper`);
      }
      await sleep(500);
    }
    const registerSeconds = (performance.now() - registerStarted) / 1000;
    log(
      `  ${routerCount} routers registered, each with one helper, in sync in ${registerSeconds.toFixed(1)} s`,
    );

    const sampled = routerIds.slice(0, Math.min(routerCount, options.sampleRouters ?? 25));
    const monitorOf = new Map<string, RuleMonitor>();
    for (const routerId of sampled) {
      const monitor = await RuleMonitor.start(`qrouter-${routerId}`, backend);
      monitors.push(monitor);
      monitorOf.set(routerId, monitor);
    }
    const before = await agentCounters(metricsPort);
    const cpuBefore = { stack: cpuSeconds(stack.pid), agent: cpuSeconds(info.agentPid) };

    // 2. The burst. Bodies and keys are kept for the replay; each key's first answer too.
    const bodies = Array.from({ length: notifications }, (_, n) =>
      created(routerIds[n % routerCount]!, 1024 + Math.floor(n / routerCount)),
    );
    const keyOf = (n: number) => `burst-${tag}-${n}`;
    const answers: { status: number; text: string }[] = new Array(notifications);
    const statuses: Record<string, number> = {};
    const latencies: number[] = [];
    /** From a sampled notification's first POST to its rule in the kernel. */
    const fromSend: number[] = [];
    /** Each notification's time from its first POST to its final answer. */
    const posts: number[] = [];
    const unseen: string[] = [];
    const watching: Promise<void>[] = [];
    const burstRetries = retries;
    let accepted = 0;
    let last202 = 0;

    const backlog: BacklogSample[] = [];
    const started = performance.now();
    const sampling = { stop: false };
    const sampler = (async () => {
      let lastLog = 0;
      while (!sampling.stop) {
        const [queued, statusQueued, counters] = await Promise.all([
          depth(sqs, info.queues.node),
          depth(sqs, info.queues.status),
          agentCounters(metricsPort),
        ]).catch(() => [Number.NaN, Number.NaN, undefined] as const);
        const t = (performance.now() - started) / 1000;
        const applies = counters ? sum(counters.applies) - sum(before.applies) : Number.NaN;
        backlog.push({ t, queued, statusQueued, applies, accepted });
        if (t - lastLog >= 5) {
          lastLog = t;
          log(
            `  t=${t.toFixed(0)} s: ${accepted}/${notifications} accepted, ${queued} queued, ${applies} applies, ${statusQueued} reports queued`,
          );
        }
        await sleep(500);
      }
    })();

    let next = 0;
    try {
      await Promise.all(
        Array.from({ length: clients }, async () => {
          for (let n = next++; n < notifications; n = next++) {
            const sent = performance.now();
            const reply = await submit(bodies[n], keyOf(n));
            const at = performance.now();
            posts.push(at - sent);
            answers[n] = { status: reply.status, text: reply.text };
            statuses[reply.status] = (statuses[reply.status] ?? 0) + 1;
            if (reply.status !== 202) continue;
            accepted++;
            last202 = Math.max(last202, at);
            for (const router of (
              JSON.parse(reply.text) as { routers: { router_id: string; revision: number }[] }
            ).routers)
              lastRevision.set(
                router.router_id,
                Math.max(lastRevision.get(router.router_id) ?? 0, router.revision),
              );
            const helper = bodies[n]!.conntrack_helpers[0]!;
            const monitor = monitorOf.get(helper.router_id);
            if (monitor) {
              watching.push(
                monitor.seen(helper.id, Math.max(1_000, left())).then(
                  (seenAt) => {
                    latencies.push(Math.max(0, seenAt - at));
                    fromSend.push(seenAt - sent);
                  },
                  () => void unseen.push(helper.id),
                ),
              );
            }
          }
        }),
      );
      const intakeSeconds = (performance.now() - started) / 1000;
      const queuedAtLast202 = await depth(sqs, info.queues.node);
      log(
        `  ${accepted}/${notifications} accepted in ${intakeSeconds.toFixed(1)} s (${retries - burstRetries} retries), ${queuedAtLast202} queued`,
      );

      // 3. The drain: every router in sync at its last 202's revision (the listing until none of ours is
      // left). The listing is read when both queues are empty, or every 2 s, so that reading it does not
      // slow the status function it waits for.
      let converged = false;
      let convergedAt = Number.NaN;
      let queueEmptyAt = queuedAtLast202 === 0 ? performance.now() : Number.NaN;
      let listedAt = 0;
      while (left() > 0) {
        const [queued, reports] = await Promise.all([
          depth(sqs, info.queues.node),
          depth(sqs, info.queues.status),
        ]);
        if (Number.isNaN(queueEmptyAt) && queued === 0) queueEmptyAt = performance.now();
        if ((queued === 0 && reports === 0) || performance.now() - listedAt > 2_000) {
          listedAt = performance.now();
          if ((await outOfSync()).size === 0) {
            converged = true;
            convergedAt = performance.now();
            break;
          }
        }
        await sleep(100);
      }
      sampling.stop = true;
      await sampler;
      await Promise.race([Promise.all(watching), sleep(Math.max(0, Math.min(left(), 30_000)))]);
      for (const monitor of monitors.splice(0)) monitor.stop();
      const after = await agentCounters(metricsPort);
      const cpu = {
        stack: cpuSeconds(stack.pid) - cpuBefore.stack,
        agent: cpuSeconds(info.agentPid) - cpuBefore.agent,
      };
      const endToEndSeconds = (convergedAt - started) / 1000;
      const drainSeconds = (convergedAt - last202) / 1000;
      log(
        converged
          ? `  converged ${drainSeconds.toFixed(1)} s after the last 202 (${endToEndSeconds.toFixed(1)} s in all)`
          : "  NOT converged before the deadline",
      );

      // 4. The end state, router by router: revision and sync from the API, desired helpers against the
      // accepted ones and against what the namespace holds.
      const acceptedIds = new Map<string, Set<string>>(
        routerIds.map((id, i) => [id, new Set([primers[i]!.conntrack_helpers[0]!.id])]),
      );
      bodies.forEach((body, n) => {
        if (answers[n]?.status === 202)
          acceptedIds.get(body.conntrack_helpers[0]!.router_id)!.add(body.conntrack_helpers[0]!.id);
      });
      const tags = new Map<string, string>();
      const notAtLastRevision: string[] = [];
      const desiredMismatch: string[] = [];
      const kernelMismatch: string[] = [];
      const reads = pLimit(6);
      await Promise.all(
        routerIds.map((routerId) =>
          reads(async () => {
            check("reading the routers back");
            const got = await call(stack, stack.token, "GET", `/v1/routers/${routerId}/conntrack-helpers`);
            if (got.status !== 200) {
              notAtLastRevision.push(`${routerId}: GET ${got.status}`);
              return;
            }
            const state = JSON.parse(got.text) as RouterState;
            tags.set(routerId, `${state.revision} ${got.etag}`);
            const want = lastRevision.get(routerId) ?? 1;
            if (state.revision !== want || !state.in_sync)
              notAtLastRevision.push(
                `${routerId}: revision ${state.revision} (last 202: ${want}), in_sync ${state.in_sync}`,
              );
            const ids = state.helpers.map((helper) => helper.id).sort();
            const expected = [...acceptedIds.get(routerId)!].sort();
            if (ids.join() !== expected.join())
              desiredMismatch.push(`${routerId}: ${ids.length} helpers desired, ${expected.length} accepted`);
            const held = await heldIds(`qrouter-${routerId}`, backend);
            for (const family of FAMILIES) {
              const desired = planFamily(state.helpers, family, catalog)
                .rules.map((rule) => rule.id)
                .sort();
              const actual = [...(held?.[family] ?? [])].sort();
              if (!held || actual.join() !== desired.join()) {
                kernelMismatch.push(
                  `${routerId} ${family}: ${held ? actual.length : "unreadable"} held, ${desired.length} desired`,
                );
              }
            }
          }),
        ),
      );
      const dlq = {
        node: await depth(sqs, info.queues.nodeDlq),
        status: await depth(sqs, info.queues.statusDlq),
      };
      const burstApplies = delta(after.applies, before.applies);
      const result: BurstResult = {
        backend,
        routers: routerCount,
        notifications,
        clients,
        registerSeconds,
        statuses,
        retries: retries - burstRetries,
        intakeSeconds,
        intakePerSecond: accepted / intakeSeconds,
        converged,
        endToEndSeconds,
        endToEndPerSecond: accepted / endToEndSeconds,
        drainSeconds,
        queueEmptySeconds: (queueEmptyAt - last202) / 1000,
        latency: {
          samples: latencies.length,
          p50Ms: summarize(latencies).p50,
          p99Ms: summarize(latencies).p99,
          maxMs: latencies.length ? Math.max(...latencies) : Number.NaN,
          fromSendP50Ms: summarize(fromSend).p50,
          fromSendP99Ms: summarize(fromSend).p99,
        },
        post: { p50Ms: summarize(posts).p50, p99Ms: summarize(posts).p99 },
        applies: { changed: burstApplies.changed ?? 0, unchanged: burstApplies.unchanged ?? 0 },
        appliesPerNotification: sum(burstApplies) / accepted,
        applyFailures: after.failures - before.failures,
        messages: delta(after.messages, before.messages),
        peakQueued: Math.max(0, ...backlog.map((sample) => sample.queued).filter(Number.isFinite)),
        queuedAtLast202,
        cpu,
        loadAverage: loadavg()[0]!,
        backlog,
        dlq,
        notAtLastRevision,
        desiredMismatch,
        kernelMismatch,
      };
      if (unseen.length > 0) log(`  ${unseen.length} sampled helpers never seen by the rule monitor`);
      if (!converged) return result;

      // 5. The replay: the same keys and bodies, from as many clients.
      log(`  replaying the ${notifications} notifications with the same Idempotency-Keys ...`);
      const replayStarted = performance.now();
      const replayStatuses: Record<string, number> = {};
      let differing = 0;
      next = 0;
      await Promise.all(
        Array.from({ length: clients }, async () => {
          for (let n = next++; n < notifications; n = next++) {
            const reply = await submit(bodies[n], keyOf(n));
            replayStatuses[reply.status] = (replayStatuses[reply.status] ?? 0) + 1;
            if (reply.status !== answers[n]!.status || reply.text !== answers[n]!.text) differing++;
          }
        }),
      );
      const replaySeconds = (performance.now() - replayStarted) / 1000;
      // Long enough for a message sent by the replay to be received (the agent long-polls) and applied.
      await sleep(Math.min(5_000, Math.max(0, left())));
      const moved: string[] = [];
      await Promise.all(
        routerIds.map((routerId) =>
          reads(async () => {
            const got = await call(stack, stack.token, "GET", `/v1/routers/${routerId}/conntrack-helpers`);
            const state = got.status === 200 ? (JSON.parse(got.text) as RouterState) : undefined;
            if (`${state?.revision} ${got.etag}` !== tags.get(routerId)) moved.push(routerId);
          }),
        ),
      );
      const afterReplay = await agentCounters(metricsPort);
      return {
        ...result,
        replay: {
          statuses: replayStatuses,
          differing,
          moved,
          appliesDelta: sum(afterReplay.applies) - sum(after.applies),
          messagesDelta: sum(afterReplay.messages) - sum(after.messages),
          queuedAfter: await depth(sqs, info.queues.node),
          seconds: replaySeconds,
        },
      };
    } finally {
      sampling.stop = true;
      await sampler;
    }
  } finally {
    for (const monitor of monitors) monitor.stop();
    sqs.destroy();
    await stack.stop();
    // The stack removes the namespaces of the routers it knows; whatever it could not, is removed here.
    const { stdout } = await run("ip", ["netns", "list"]).catch(() => ({ stdout: "" }));
    for (const name of stdout.split("\n").map((line) => line.trim().split(/\s+/)[0] ?? "")) {
      const id = /^qrouter-(.+)$/.exec(name)?.[1];
      if (id && mine.has(id)) await run("ip", ["netns", "delete", name]).catch(() => undefined);
    }
  }
}
