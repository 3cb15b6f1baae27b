/**
 * (c) End to end on the local stack: POST a notification (one new helper), and from its 202 poll the router's
 * namespace with iptables-save until the rule is there. Clients run concurrently, one router each.
 */
import { randomUUID } from "node:crypto";
import { api, stackMissing, startStackChild } from "./stack-child.ts";
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
  /** How long one iptables-save poll takes (the measurement's resolution). */
  readonly pollP50Ms: number;
  readonly throughputPerSecond: number;
  /** The same path with one client alone (20 notifications), measured first in the same stack. */
  readonly aloneP50Ms: number;
  readonly aloneP99Ms: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function benchEndToEnd(options: {
  root: string;
  notifications: number;
  clients: number;
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
    pollP50Ms: Number.NaN,
    throughputPerSecond: Number.NaN,
    aloneP50Ms: Number.NaN,
    aloneP99Ms: Number.NaN,
  };
  const missing = stackMissing(options.root);
  if (missing) return { skipped: missing, ...empty };
  let stack: Awaited<ReturnType<typeof startStackChild>>;
  try {
    stack = await startStackChild(options.root);
  } catch (error) {
    return {
      skipped: `the local stack did not start: ${error instanceof Error ? error.message.slice(0, 400) : String(error)}`,
      ...empty,
    };
  }
  try {
    if (stack.backend !== "iptables")
      return { skipped: `the stack's agent runs backend "${stack.backend}"`, ...empty };
    const routers = Array.from({ length: options.clients }, () => randomUUID());
    for (const routerId of routers) {
      const put = await api(stack, stack.adminToken, "PUT", `/v1/routers/${routerId}`, {
        project_id: stack.project,
        host: "local",
      });
      if (put.status >= 300) throw new Error(`PUT router: ${put.status} ${JSON.stringify(put.json)}`);
    }
    /** `clients` concurrent clients, one router each, `perClient` notifications each; latency samples. */
    const drive = async (clients: number, perClient: number, portBase: number) => {
      const latencies: number[] = [];
      const posts: number[] = [];
      const polls: number[] = [];
      await Promise.all(
        routers.slice(0, clients).map(async (routerId, client) => {
          for (let i = 0; i < perClient; i++) {
            const helperId = randomUUID();
            const body = {
              event: "created",
              conntrack_helpers: [
                {
                  id: helperId,
                  router_id: routerId,
                  protocol: "tcp",
                  port: portBase + client * 100 + i,
                  helper: "ftp",
                },
              ],
            };
            const t0 = performance.now();
            const response = await api(stack, stack.token, "POST", "/v1/notifications", body);
            const accepted = performance.now();
            posts.push(accepted - t0);
            if (response.status !== 202)
              throw new Error(`POST: ${response.status} ${JSON.stringify(response.json)}`);
            for (;;) {
              const p0 = performance.now();
              const save = await run("ip", [
                "netns",
                "exec",
                `qrouter-${routerId}`,
                "iptables-save",
                "-t",
                "raw",
              ]).catch(() => ({ stdout: "" }));
              polls.push(performance.now() - p0);
              if (save.stdout.includes(`cth:${helperId}`)) break;
              if (performance.now() - accepted > 30_000)
                throw new Error(`helper ${helperId} not visible after 30 s`);
              await sleep(5);
            }
            latencies.push(performance.now() - accepted);
          }
        }),
      );
      return { latencies, posts, polls };
    };
    // Baseline in the same stack: one client alone, so nothing queues behind other routers' applies.
    const alone = await drive(1, 20, 2000);
    options.log(`  1 client: p50 ${summarize(alone.latencies).p50.toFixed(0)} ms`);
    const started = performance.now();
    const { latencies, posts, polls } = await drive(
      options.clients,
      Math.ceil(options.notifications / options.clients),
      5000,
    );
    const seconds = (performance.now() - started) / 1000;
    const stats = summarize(latencies);
    return {
      notifications: latencies.length,
      clients: options.clients,
      routers: routers.length,
      p50Ms: stats.p50,
      p99Ms: stats.p99,
      maxMs: Math.max(...latencies),
      postP50Ms: summarize(posts).p50,
      pollP50Ms: summarize(polls).p50,
      throughputPerSecond: latencies.length / seconds,
      aloneP50Ms: summarize(alone.latencies).p50,
      aloneP99Ms: summarize(alone.latencies).p99,
    };
  } finally {
    await stack.stop();
  }
}
