/**
 * The agent's /healthz and /metrics over real HTTP (agent/metrics.ts, agent/main.ts): healthy while its queue
 * was polled recently (fauxqs), 503 once the last successful poll is older than the threshold (a receive
 * that keeps failing, injected with aws-sdk-client-mock) or before any poll succeeded. And its log lines
 * about a message carry the snapshot's `correlation_id`, the field name the functions' lines use.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ReceiveMessageCommand, SendMessageCommand, SQSClient } from "@aws-sdk/client-sqs";
import { mockClient } from "aws-sdk-client-mock";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { MemoryIptables } from "../../agent/iptables/memory.ts";
import {
  type AgentDeps,
  defaultHealthzStaleSeconds,
  type RunningAgent,
  startAgent,
} from "../../agent/main.ts";
import { loadVerifyKeys } from "../../agent/verify-keys.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import { iptablesBackend } from "../support/backends.ts";
import { type Emulators, startEmulators } from "../support/emulators.ts";
import { helperRule, routerSync } from "../support/factories.ts";
import { signedAttributes, testKey, verifyKeysDir } from "../support/signing.ts";

const dispatcher = testKey("dispatcher-healthz");
const keysDir = verifyKeysDir(dispatcher);
const dirs: string[] = [keysDir];
const agents: RunningAgent[] = [];

afterEach(async () => {
  for (const agent of agents.splice(0)) await agent.stop();
});
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function eventually<T>(check: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function start(deps: Pick<AgentDeps, "sqs" | "queueUrl"> & Partial<AgentDeps>): Promise<RunningAgent> {
  const stateDir = await mkdtemp(join(tmpdir(), "cth-agent-healthz-"));
  dirs.push(stateDir);
  const iptables = new MemoryIptables();
  const agent = await startAgent({
    node: `healthz-${randomUUID().slice(0, 6)}`,
    backend: (metrics) => iptablesBackend(iptables, { metrics }),
    verifyKeys: loadVerifyKeys(keysDir),
    catalog: new HelperCatalog(),
    limits: DEFAULT_LIMITS,
    logger: pino({ level: "silent" }),
    stateDir,
    namespacePattern: "qrouter-{router_id}",
    driftIntervalSeconds: 3600,
    metricsPort: 0,
    waitSeconds: 1,
    ...deps,
  });
  agents.push(agent);
  return agent;
}

const get = async (agent: RunningAgent, path: string) => {
  const response = await fetch(`http://127.0.0.1:${agent.metricsPort}${path}`);
  return { status: response.status, text: await response.text() };
};

describe("agent /healthz and /metrics against fauxqs", () => {
  let emu: Emulators;
  beforeAll(async () => {
    emu = await startEmulators();
  });
  afterAll(async () => {
    await emu?.stop();
  });

  it("answers 200 once the queue has been polled, with the poll's age", async () => {
    const queue = await emu.createNodeQueue(`healthz-${randomUUID().slice(0, 6)}`);
    const agent = await start({ sqs: emu.clients().sqs, queueUrl: queue.url, dlqUrl: queue.dlqUrl });
    const healthy = await eventually(async () => {
      const answer = await get(agent, "/healthz");
      return answer.status === 200 ? answer : undefined;
    });
    const body = JSON.parse(healthy.text) as Record<string, unknown>;
    expect(body).toMatchObject({ status: "ok", stale_after_seconds: defaultHealthzStaleSeconds(1) });
    expect(body.last_poll_age_seconds).toBeGreaterThanOrEqual(0);
    expect(body.last_poll_age_seconds).toBeLessThan(30);
  });

  it("logs a snapshot's correlation_id on every line about it (taken off the queue, applying, applied)", async () => {
    const queue = await emu.createNodeQueue(`healthz-${randomUUID().slice(0, 6)}`);
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    await start({
      sqs: emu.clients().sqs,
      queueUrl: queue.url,
      dlqUrl: queue.dlqUrl,
      logger,
      createNamespaces: true,
    });
    const routerId = randomUUID();
    const body = JSON.stringify({
      ...routerSync(routerId, 1, [helperRule("ftp", "tcp", 21)]),
      correlation_id: "req-observed-1",
    });
    await emu.clients().sqs.send(
      new SendMessageCommand({
        QueueUrl: queue.url,
        MessageBody: body,
        MessageGroupId: routerId,
        MessageDeduplicationId: randomUUID(),
        MessageAttributes: await signedAttributes(dispatcher, body),
      }),
    );
    await eventually(async () => (lines.some((line) => line.msg === "snapshot applied") ? true : undefined));
    const about = lines.filter((line) => line.router_id === routerId);
    expect(about.map((line) => line.msg)).toEqual(
      expect.arrayContaining(["message taken off the queue", "applying", "snapshot applied"]),
    );
    for (const line of about)
      expect(line, String(line.msg)).toMatchObject({ correlation_id: "req-observed-1" });
  });

  it("serves the process defaults and cth_agent_build_info with package.json's version beside /metrics", async () => {
    const queue = await emu.createNodeQueue(`healthz-${randomUUID().slice(0, 6)}`);
    const agent = await start({ sqs: emu.clients().sqs, queueUrl: queue.url, dlqUrl: queue.dlqUrl });
    const { version } = JSON.parse(await readFile(new URL("../../package.json", import.meta.url), "utf8"));
    const metrics = await get(agent, "/metrics");
    expect(metrics.status).toBe(200);
    expect(metrics.text).toContain(`cth_agent_build_info{version="${version}"} 1`);
    expect(metrics.text).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(metrics.text).toMatch(/^process_resident_memory_bytes \d/m);
    expect(metrics.text).toContain("cth_agent_applies_total");
    expect((await get(agent, "/nothing")).status).toBe(404);
  });
});

describe("agent /healthz when polling fails (injected)", () => {
  const queueUrl = "http://127.0.0.1:9/000000000000/healthz.fifo";
  const faultySqs = () => {
    const sqs = new SQSClient({
      region: "us-east-1",
      credentials: { accessKeyId: "x", secretAccessKey: "x" },
    });
    return { sqs, mock: mockClient(sqs) };
  };

  it("answers 503 before any poll succeeded", async () => {
    const { sqs, mock } = faultySqs();
    mock.on(ReceiveMessageCommand).rejects(new Error("queue unreachable"));
    const agent = await start({ sqs, queueUrl, dlqUrl: `${queueUrl}-dlq` });
    const answer = await get(agent, "/healthz");
    expect(answer.status).toBe(503);
    expect(JSON.parse(answer.text)).toMatchObject({ status: "stale", last_poll_age_seconds: null });
  });

  it("answers 503 once the last successful poll is older than --healthz-stale-seconds", async () => {
    const { sqs, mock } = faultySqs();
    mock.on(ReceiveMessageCommand).resolvesOnce({ Messages: [] }).rejects(new Error("queue unreachable"));
    const agent = await start({ sqs, queueUrl, dlqUrl: `${queueUrl}-dlq`, healthzStaleSeconds: 1 });
    // The one poll that worked.
    await eventually(async () => (mock.commandCalls(ReceiveMessageCommand).length >= 2 ? true : undefined));
    const stale = await eventually(async () => {
      const answer = await get(agent, "/healthz");
      return answer.status === 503 ? answer : undefined;
    });
    const body = JSON.parse(stale.text) as { last_poll_age_seconds: number; stale_after_seconds: number };
    expect(body.stale_after_seconds).toBe(1);
    expect(body.last_poll_age_seconds).toBeGreaterThan(1);
  });
});
