/**
 * (c) End to end on the local stack: POST a notification (one new helper) and time from its 202 until the
 * kernel commits the rule in the router's namespace. The observer is `xtables-monitor` (iptables' own event
 * monitor) in each namespace: it costs nothing while idle, where ten clients polling iptables-save would
 * keep spawning processes on the same two cores as the stack they measure. A save per router at the end
 * confirms that every rule is held.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import { api, type StackChild, stackMissing, startStackChild } from "./stack-child.ts";
import { run, summarize } from "./stats.ts";

export interface EndToEndResult {
  readonly skipped?: string;
  readonly notifications: number;
  readonly clients: number;
  readonly routers: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  readonly postP50Ms: number;
  readonly throughputPerSecond: number;
  /** The same path with one client alone (20 notifications), measured first in the same stack. */
  readonly aloneP50Ms: number;
  readonly aloneP99Ms: number;
}

/** Notifications of the one-client baseline. */
const ALONE = 20;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function benchEndToEnd(options: {
  root: string;
  notifications: number;
  clients: number;
  /** The stack agent's firewall backend. */
  backend: "iptables" | "nftables";
  log: (line: string) => void;
}): Promise<EndToEndResult> {
  const empty = {
    notifications: 0,
    clients: 0,
    routers: 0,
    p50Ms: Number.NaN,
    p99Ms: Number.NaN,
    maxMs: Number.NaN,
    postP50Ms: Number.NaN,
    throughputPerSecond: Number.NaN,
    aloneP50Ms: Number.NaN,
    aloneP99Ms: Number.NaN,
  };
  const missing = stackMissing(options.root);
  if (missing) return { skipped: missing, ...empty };
  let stack: Awaited<ReturnType<typeof startStackChild>>;
  const monitors: RuleMonitor[] = [];
  try {
    stack = await startStackChild(options.root, { env: { CTH_LOCAL_BACKEND: options.backend } });
  } catch (error) {
    return {
      skipped: `the local stack did not start: ${error instanceof Error ? error.message.slice(0, 400) : String(error)}`,
      ...empty,
    };
  }
  try {
    if (stack.backend !== "iptables" && stack.backend !== "nftables")
      return { skipped: `the stack's agent runs backend "${stack.backend}"`, ...empty };
    const backend = stack.backend;
    const routers = Array.from({ length: options.clients }, () => randomUUID());
    for (const routerId of routers) {
      const put = await api(stack, stack.adminToken, "PUT", `/v1/routers/${routerId}`, {
        project_id: stack.project,
        host: "local",
      });
      if (put.status >= 300) throw new Error(`PUT router: ${put.status} ${JSON.stringify(put.json)}`);
    }
    // Each router gets one helper first (not timed), so its namespace exists before a monitor can watch it.
    for (const [client, routerId] of routers.entries()) {
      const helperId = randomUUID();
      await post(stack, routerId, helperId, 1000 + client);
      await untilSaved(`qrouter-${routerId}`, helperId);
    }
    for (const routerId of routers) monitors.push(await RuleMonitor.start(`qrouter-${routerId}`, backend));
    /** `clients` concurrent clients, one router each, `perClient` notifications each; latency samples. */
    const drive = async (clients: number, perClient: number, portBase: number) => {
      const latencies: number[] = [];
      const posts: number[] = [];
      await Promise.all(
        routers.slice(0, clients).map(async (routerId, client) => {
          const monitor = monitors[client]!;
          for (let i = 0; i < perClient; i++) {
            const helperId = randomUUID();
            const t0 = performance.now();
            await post(stack, routerId, helperId, portBase + client * 100 + i);
            const accepted = performance.now();
            posts.push(accepted - t0);
            const seen = await monitor.seen(helperId, 30_000);
            // The kernel may commit the rule before the 202 reaches this client: that counts as 0.
            latencies.push(Math.max(0, seen - accepted));
          }
        }),
      );
      return { latencies, posts };
    };
    // Baseline in the same stack: one client alone, so nothing queues behind other routers' applies.
    const alone = await drive(1, ALONE, 2000);
    options.log(`  1 client: p50 ${summarize(alone.latencies).p50.toFixed(0)} ms`);
    const perClient = Math.ceil(options.notifications / options.clients);
    const started = performance.now();
    const { latencies, posts } = await drive(options.clients, perClient, 5000);
    const seconds = (performance.now() - started) / 1000;
    // The events say the kernel committed each rule; a final save per router confirms they are all held:
    // its priming helper, its share of the concurrent run and, for the first router, the baseline's.
    for (const [client, routerId] of routers.entries()) {
      const save = await saveRaw(`qrouter-${routerId}`);
      const expected = 1 + perClient + (client === 0 ? ALONE : 0);
      const held = save.split("\n").filter((line) => line.includes('comment "cth:')).length;
      if (held !== expected) throw new Error(`router ${routerId}: ${held} rules held, ${expected} expected`);
    }
    const stats = summarize(latencies);
    return {
      notifications: latencies.length,
      clients: options.clients,
      routers: routers.length,
      p50Ms: stats.p50,
      p99Ms: stats.p99,
      maxMs: Math.max(...latencies),
      postP50Ms: summarize(posts).p50,
      throughputPerSecond: latencies.length / seconds,
      aloneP50Ms: summarize(alone.latencies).p50,
      aloneP99Ms: summarize(alone.latencies).p99,
    };
  } finally {
    for (const monitor of monitors) monitor.stop();
    await stack.stop();
  }
}

const HELPER_COMMENT = /cth:([0-9a-f-]{36})/g;

/** First time each helper's rule was committed in one namespace, from `xtables-monitor --event`. */
export class RuleMonitor {
  private readonly firstSeen = new Map<string, number>();
  private readonly waiters = new Map<string, (at: number) => void>();

  private constructor(private readonly child: ChildProcess) {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const at = performance.now();
      for (const match of line.matchAll(HELPER_COMMENT)) {
        const id = match[1]!;
        if (this.firstSeen.has(id)) continue;
        this.firstSeen.set(id, at);
        this.waiters.get(id)?.(at);
        this.waiters.delete(id);
      }
    });
  }

  /** Watches the kernel's rule events in `namespace`: xtables-monitor for iptables, `nft monitor` for nftables. */
  static async start(namespace: string, backend: "iptables" | "nftables"): Promise<RuleMonitor> {
    const monitor =
      backend === "iptables" ? ["xtables-monitor", "--event", "-4"] : ["nft", "monitor", "new", "rules"];
    // stdbuf: the monitor block-buffers a pipe otherwise, and each event must arrive as it happens.
    const child = spawn("ip", ["netns", "exec", namespace, "stdbuf", "-oL", ...monitor], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", resolve);
      child.once("error", reject);
    });
    // Let it subscribe to the netlink events before anything is written.
    await sleep(100);
    if (child.exitCode !== null)
      throw new Error(`xtables-monitor in ${namespace} exited (${child.exitCode})`);
    return new RuleMonitor(child);
  }

  seen(helperId: string, timeoutMs: number): Promise<number> {
    const at = this.firstSeen.get(helperId);
    if (at !== undefined) return Promise.resolve(at);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(helperId);
        reject(new Error(`helper ${helperId} not committed after ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.set(helperId, (seenAt) => {
        clearTimeout(timer);
        resolve(seenAt);
      });
    });
  }

  stop(): void {
    if (this.child.pid !== undefined && this.child.exitCode === null) this.child.kill("SIGTERM");
  }
}

export async function post(
  stack: StackChild,
  routerId: string,
  helperId: string,
  port: number,
): Promise<void> {
  const response = await api(stack, stack.token, "POST", "/v1/notifications", {
    event: "created",
    conntrack_helpers: [{ id: helperId, router_id: routerId, protocol: "tcp", port, helper: "ftp" }],
  });
  if (response.status !== 202) throw new Error(`POST: ${response.status} ${JSON.stringify(response.json)}`);
}

/**
 * What either backend holds in `namespace`: the raw table as iptables-save prints it and our nftables table
 * ("" for what is not there, or while the namespace does not exist).
 */
async function saveRaw(namespace: string): Promise<string> {
  const none = { stdout: "" };
  const [save, nft] = await Promise.all([
    run("ip", ["netns", "exec", namespace, "iptables-save", "-t", "raw"]).catch(() => none),
    run("ip", ["netns", "exec", namespace, "nft", "list", "table", "inet", "cth-helpers"]).catch(() => none),
  ]);
  return `${save.stdout}${nft.stdout}`;
}

/** Waits (up to 60 s) until `namespace` holds the rule of `helperId`. */
export async function untilSaved(namespace: string, helperId: string): Promise<void> {
  const deadline = performance.now() + 60_000;
  while (!(await saveRaw(namespace)).includes(`cth:${helperId}`)) {
    if (performance.now() > deadline) throw new Error(`helper ${helperId} not in ${namespace} after 60 s`);
    await sleep(20);
  }
}
