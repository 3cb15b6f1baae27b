/**
 * What the poller does with each message: a verified snapshot is kept on disk, then its message deleted (a
 * refused one is done with, a missing namespace's is retried from the agent's state); one that cannot be kept
 * stays queued. SQS is a recording stub.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ChangeMessageVisibilityCommand,
  DeleteMessageBatchCommand,
  type Message,
  type SQSClient,
} from "@aws-sdk/client-sqs";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AgentCore } from "../../agent/core.ts";
import { MemoryIptables } from "../../agent/iptables/memory.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { QueuePoller } from "../../agent/poller.ts";
import { StateStore } from "../../agent/state.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import { buildSchemas, type RouterSyncMessage, type StatusMessage } from "../../lib/schemas/index.ts";
import { publicKeyFromPem } from "../../lib/signing.ts";
import { iptablesBackend } from "../support/backends.ts";
import { signedAttributes, testKey } from "../support/signing.ts";

const NODE = "poller-node";
const catalog = new HelperCatalog();
const dispatcher = testKey("dispatcher");

/** Records every command and answers each with an empty response (a delete with no failures). */
class RecordingSqs {
  readonly commands: unknown[] = [];
  async send(command: unknown): Promise<unknown> {
    this.commands.push(command);
    return {};
  }
  of<T>(type: abstract new (...args: never[]) => T): T[] {
    return this.commands.filter((command): command is T => command instanceof type);
  }
}

const sync = (routerId: string, namespace?: "snat"): RouterSyncMessage => ({
  v: 1,
  kind: "router-sync",
  router_id: routerId,
  revision: 1,
  ...(namespace ? { namespace } : {}),
  helpers: [{ id: randomUUID(), protocol: "tcp", port: 21, helper: "ftp" }],
  correlation_id: "c-1",
  issued_at: "2026-11-24T05:00:00.000Z",
});

async function signed(body: RouterSyncMessage, receipt: string): Promise<Message> {
  const text = JSON.stringify(body);
  const attributes = await signedAttributes(dispatcher, text);
  return {
    MessageId: randomUUID(),
    ReceiptHandle: receipt,
    Body: text,
    Attributes: { ApproximateReceiveCount: "1" },
    MessageAttributes: attributes,
  };
}

describe("agent poller: apply outcomes and their messages", () => {
  let dir: string;
  let sqs: RecordingSqs;
  let reports: StatusMessage[];
  let poller: QueuePoller;
  let core: AgentCore;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "cth-agent-poller-"));
    sqs = new RecordingSqs();
    reports = [];
    const metrics = new AgentMetrics();
    const logger = pino({ level: "silent" });
    core = new AgentCore({
      node: NODE,
      backend: iptablesBackend(new MemoryIptables(), { catalog }),
      state: await StateStore.load(dir, NODE),
      status: { send: async (message) => void reports.push(message) },
      metrics,
      logger,
      namespacePattern: "qrouter-{router_id}",
    });
    poller = new QueuePoller({
      sqs: sqs as unknown as SQSClient,
      queueUrl: "http://127.0.0.1:1/000000000000/cth-poller-node.fifo",
      dlqUrl: "http://127.0.0.1:1/000000000000/cth-poller-node-dlq.fifo",
      core,
      schema: buildSchemas(DEFAULT_LIMITS, catalog).routerSync,
      verifyKeys: new Map([[dispatcher.keyId, publicKeyFromPem(dispatcher.publicKeyPem)]]),
      metrics,
      logger,
    });
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("a refused snapshot's message is deleted, and a missing namespace's once its snapshot is kept for a retry", async () => {
    const refusedRouter = randomUUID();
    const missingRouter = randomUUID();
    const refused = await signed(sync(refusedRouter, "snat"), "refused-receipt");
    const missing = await signed(sync(missingRouter), "missing-receipt");
    await poller.handleBatch([refused, missing], performance.now());
    await poller.idle();
    expect(reports).toMatchObject([
      { kind: "applied", namespace: "snat", errors: [{ code: "namespace_unsupported" }] },
    ]);
    const deleted = sqs.of(DeleteMessageBatchCommand).flatMap((command) => command.input.Entries ?? []);
    expect(deleted.map((entry) => entry.ReceiptHandle).sort()).toEqual([
      "missing-receipt",
      "refused-receipt",
    ]);
    expect(sqs.of(ChangeMessageVisibilityCommand)).toEqual([]);
    expect(core.state.pending(missingRouter)?.revision).toBe(1);
    expect(core.state.pending(refusedRouter)).toBeUndefined();
    await poller.stop();
  });

  it("a snapshot that cannot be kept on disk stays queued with a retry delay, and nothing is applied", async () => {
    const routerId = randomUUID();
    const message = await signed(sync(routerId), "unkept-receipt");
    // The state directory is gone: the write that would keep the snapshot fails.
    await rm(dir, { recursive: true, force: true });
    await poller.handleBatch([message], performance.now());
    await poller.idle();
    expect(sqs.of(DeleteMessageBatchCommand).flatMap((command) => command.input.Entries ?? [])).toEqual([]);
    const delayed = sqs.of(ChangeMessageVisibilityCommand).map((command) => command.input.ReceiptHandle);
    expect(delayed).toEqual(["unkept-receipt"]);
    expect(core.state.get(routerId)).toBeUndefined();
    expect(reports).toEqual([]);
  });
});
