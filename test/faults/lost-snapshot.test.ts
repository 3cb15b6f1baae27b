/**
 * A snapshot send lost on purpose (the command queue port drops it after the table write, as a crash between
 * the two would), and the reconciler heals it: the whole loop in one process on the emulators and the real
 * kernel. HTTP 202 -> (lost) -> reconcile (functions/reconcile.ts) -> fauxqs -> agent poller and core ->
 * iptables-restore in a real namespace -> status queue -> functions/status.ts -> in_sync.
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Logger } from "@aws-lambda-powertools/logger";
import type { SQSClient } from "@aws-sdk/client-sqs";
import type { SQSEvent, SQSRecord } from "aws-lambda";
import { pino } from "pino";
import { afterAll, beforeAll, expect, it } from "vitest";
import { AgentCore } from "../../agent/core.ts";
import { ExecIptables } from "../../agent/iptables/port.ts";
import { ownedHelperIds } from "../../agent/iptables/render.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { QueuePoller } from "../../agent/poller.ts";
import { StateStore } from "../../agent/state.ts";
import { loadVerifyKeys } from "../../agent/verify-keys.ts";
import { makeHandler } from "../../functions/http.ts";
import { makeHandler as makeReconcileHandler } from "../../functions/reconcile.ts";
import { makeHandler as makeStatusHandler } from "../../functions/status.ts";
import { queueUrlFromTemplate, SqsCommandQueue } from "../../lib/aws/command-queue.ts";
import { DynamoRoutersStore } from "../../lib/aws/routers-store.ts";
import { SqsStatusSink } from "../../lib/aws/sqs-status-sink.ts";
import type { Config } from "../../lib/config.ts";
import type { CommandQueue } from "../../lib/ports.ts";
import { systemClock } from "../../lib/ports.ts";
import { buildSchemas, type RouterSyncMessage } from "../../lib/schemas/index.ts";
import { iptablesBackend } from "../support/backends.ts";
import {
  type Emulators,
  type NodeStatusQueue,
  type QueuePair,
  startEmulators,
} from "../support/emulators.ts";
import { httpApiClaims, httpApiEvent, lambdaContext, RecordingLogger } from "../support/events.ts";
import { newId, PROJECT_A } from "../support/factories.ts";
import { describeKernel } from "../support/requirements.ts";
import { testKey, verifyKeysDir } from "../support/signing.ts";

const HOST = "faults-lost";

/** Drops the next send(s) on purpose, after the table write: the message is gone, the state is not. */
class LossyQueue implements CommandQueue {
  dropNext = 0;
  readonly dropped: RouterSyncMessage[] = [];
  constructor(private readonly inner: CommandQueue) {}
  async send(host: string, commands: readonly RouterSyncMessage[]): Promise<void> {
    if (this.dropNext > 0) {
      this.dropNext--;
      this.dropped.push(...commands);
      return;
    }
    await this.inner.send(host, commands);
  }
}

const sqsTemplate = (
  JSON.parse(
    readFileSync(new URL("../fixtures/aws-events/sqs-base.json", import.meta.url), "utf8"),
  ) as SQSEvent
).Records[0] as SQSRecord;

describeKernel("a lost snapshot is healed by the reconciler (emulators + real kernel)", () => {
  let emu: Emulators;
  let config: Config;
  let nodeQueue: QueuePair;
  let statusQueue: NodeStatusQueue;
  let sqs: SQSClient;
  let lossy: LossyQueue;
  let http: ReturnType<typeof makeHandler>;
  let reconcile: ReturnType<typeof makeReconcileHandler>;
  let status: ReturnType<typeof makeStatusHandler>;
  let poller: QueuePoller;
  let stateDir: string;
  const routerId = newId();
  const ns = `cthf-${routerId}`;
  const claims = httpApiClaims(PROJECT_A);

  beforeAll(async () => {
    emu = await startEmulators();
    config = emu.makeConfig();
    await emu.createTables(config);
    nodeQueue = await emu.createNodeQueue(HOST);
    statusQueue = await emu.createNodeStatusQueue(HOST);
    const clients = emu.clients(config);
    sqs = clients.sqs;
    const store = new DynamoRoutersStore(clients.dynamo, config.routersTable, { transactions: false });
    const key = testKey();
    const queue = new SqsCommandQueue(
      sqs,
      (host) => queueUrlFromTemplate(config.nodeQueueUrlTemplate, host),
      key.signer,
    );
    lossy = new LossyQueue(queue);
    const schemas = buildSchemas(config.limits, config.catalog);
    const logger = new RecordingLogger();
    http = makeHandler({
      domain: { store, queue: lossy, clock: systemClock, limits: config.limits, log: logger },
      schemas,
      logger,
      idempotency: undefined,
    });
    const silent = new Logger({ serviceName: "cth-faults", logLevel: "SILENT" });
    reconcile = makeReconcileHandler({
      store,
      queue,
      clock: systemClock,
      logger: silent,
    });
    status = makeStatusHandler({
      store,
      queue,
      clock: systemClock,
      schemas,
      logger: silent,
      statusQueueNameTemplate: config.statusQueueNameTemplate,
      metrics: { count: () => {} },
    });
    stateDir = mkdtempSync(join(tmpdir(), "cth-faults-lost-"));
    const metrics = new AgentMetrics();
    const agentLogger = pino({ level: "silent" });
    const core = new AgentCore({
      node: HOST,
      backend: iptablesBackend(new ExecIptables(), { catalog: config.catalog }),
      state: await StateStore.load(stateDir, HOST),
      status: new SqsStatusSink(sqs, statusQueue.url),
      metrics,
      logger: agentLogger,
      namespacePattern: "cthf-{router_id}",
      createNamespaces: true,
    });
    poller = new QueuePoller({
      sqs,
      queueUrl: nodeQueue.url,
      dlqUrl: nodeQueue.dlqUrl,
      core,
      schema: schemas.routerSync,
      verifyKeys: loadVerifyKeys(verifyKeysDir(key)),
      metrics,
      logger: agentLogger,
      waitSeconds: 1,
    });
  });

  afterAll(async () => {
    try {
      execFileSync("ip", ["netns", "delete", ns], { stdio: "ignore" });
    } catch {
      // never created
    }
    await emu?.stop();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  const call = async (method: string, path: string, body?: unknown, who = claims) => {
    const response = await http(
      httpApiEvent({ method, path, ...(body === undefined ? {} : { body }), claims: who }),
      lambdaContext(),
    );
    return {
      status: response.statusCode,
      json: response.body ? (JSON.parse(response.body) as Record<string, unknown>) : undefined,
    };
  };
  const state = async () =>
    (await call("GET", `/v1/routers/${routerId}/conntrack-helpers`)).json as {
      revision: number;
      applied_revision: number;
      in_sync: boolean;
    };
  const save = (family: "iptables-save" | "ip6tables-save") => {
    try {
      return execFileSync("ip", ["netns", "exec", ns, family, "-t", "raw"], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
      });
    } catch {
      return "";
    }
  };
  /** The status consumer gets what the agent reported, in Lambda's SQS event shape. */
  const deliverReports = async () => {
    const messages = await emu.drain(statusQueue.url);
    const records = messages.map((m) => ({
      ...sqsTemplate,
      messageId: m.MessageId ?? randomUUID(),
      // As Lambda's event source mapping delivers it: from the node's own status queue.
      eventSourceARN: statusQueue.arn,
      body: m.Body ?? "",
    }));
    if (records.length > 0) {
      const result = await status({ Records: records }, lambdaContext());
      expect(result.batchItemFailures).toEqual([]);
    }
    return records.length;
  };
  const sweep = () =>
    reconcile(
      { id: randomUUID(), "detail-type": "Scheduled Event", source: "aws.events" } as never,
      lambdaContext(),
    );

  it("a lost first snapshot: nothing applied until the sweep, then exactly the desired rules, in sync, once", async () => {
    const admin = httpApiClaims("operator", ["admin"]);
    expect(
      (await call("PUT", `/v1/routers/${routerId}`, { project_id: PROJECT_A, host: HOST }, admin)).status,
    ).toBe(201);
    const ftp = { id: newId(), router_id: routerId, protocol: "tcp", port: 21, helper: "ftp" };
    const tftp = { id: newId(), router_id: routerId, protocol: "udp", port: 69, helper: "tftp" };
    lossy.dropNext = 1;
    expect(
      (await call("POST", "/v1/notifications", { event: "created", conntrack_helpers: [ftp, tftp] })).status,
    ).toBe(202);
    expect(lossy.dropped.map((m) => m.revision)).toEqual([1]);
    expect(await emu.depth(nodeQueue.url)).toBe(0);

    await poller.pollOnce();
    expect(ownedHelperIds(save("iptables-save"))).toEqual([]);
    expect(await state()).toMatchObject({ revision: 1, applied_revision: 0, in_sync: false });

    expect(await sweep()).toMatchObject({ resent: 1, failedHosts: [] });
    await poller.pollOnce();
    // Rule order is protocol, then port: tcp/21 before udp/69.
    expect(ownedHelperIds(save("iptables-save"))).toEqual([ftp.id, tftp.id]);
    expect(new Set(ownedHelperIds(save("ip6tables-save")))).toEqual(new Set([ftp.id, tftp.id]));
    expect(await deliverReports()).toBe(1);
    expect(await state()).toMatchObject({ revision: 1, applied_revision: 1, in_sync: true });

    // Healed routers are left alone by the next sweep: nothing re-sent, nothing duplicated.
    expect(await sweep()).toMatchObject({ resent: 0 });
    expect(await emu.depth(nodeQueue.url)).toBe(0);
    expect(await emu.depth(nodeQueue.dlqUrl)).toBe(0);
    expect(
      save("iptables-save")
        .split("\n")
        .filter((line) => line.includes("--helper")),
    ).toHaveLength(2);
  });

  it("a lost later snapshot (a delete): the old rules stay until the sweep, then exactly the new set", async () => {
    const before = ownedHelperIds(save("iptables-save"));
    expect(before).toHaveLength(2);
    const current = (await call("GET", `/v1/routers/${routerId}/conntrack-helpers`)).json as {
      helpers: Record<string, unknown>[];
    };
    const ftp = current.helpers.find((h) => h.helper === "ftp")!;
    lossy.dropNext = 1;
    expect(
      (
        await call("POST", "/v1/notifications", {
          event: "deleted",
          conntrack_helpers: [{ ...ftp, router_id: routerId }],
        })
      ).status,
    ).toBe(202);
    await poller.pollOnce();
    expect(ownedHelperIds(save("iptables-save"))).toEqual(before);
    expect(await state()).toMatchObject({ revision: 2, applied_revision: 1, in_sync: false });

    expect(await sweep()).toMatchObject({ resent: 1 });
    await poller.pollOnce();
    const tftpId = before.find((id) => id !== ftp.id);
    expect(ownedHelperIds(save("iptables-save"))).toEqual([tftpId]);
    expect(ownedHelperIds(save("ip6tables-save"))).toEqual([tftpId]);
    await deliverReports();
    expect(await state()).toMatchObject({ revision: 2, applied_revision: 2, in_sync: true });
    expect(await emu.depth(nodeQueue.dlqUrl)).toBe(0);
  });
});
