/**
 * A whole dispatcher for fault soaks, with every part reachable: dynalite (test/support/emulators.ts), a fauxqs
 * of our own with on-disk state (so it can be restarted mid-run on the same port without losing messages, as
 * SQS never would), the real HTTP, status and reconcile functions in-process, and the real agent as a child
 * process (`agent/cli.ts`, real iptables, namespaces `cths-<router id>`) that a test may SIGKILL and restart.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Logger } from "@aws-lambda-powertools/logger";
import {
  CreateQueueCommand,
  DeleteMessageBatchCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
} from "@aws-sdk/client-sqs";
import type { SQSEvent, SQSRecord } from "aws-lambda";
import { type FauxqsServer, startFauxqs } from "fauxqs";
import { ownedHelperIds, ownedLines } from "../../agent/iptables/render.ts";
import { freePort } from "../../bench/stack-child.ts";
import { makeHandler } from "../../functions/http.ts";
import { makeHandler as makeReconcileHandler } from "../../functions/reconcile.ts";
import { makeHandler as makeStatusHandler } from "../../functions/status.ts";
import { type AwsClients, makeAwsClients } from "../../lib/aws/clients.ts";
import { queueUrlFromTemplate, SqsCommandQueue } from "../../lib/aws/command-queue.ts";
import { DynamoRoutersStore } from "../../lib/aws/routers-store.ts";
import type { Family } from "../../lib/catalog.ts";
import { type Config, loadLimits } from "../../lib/config.ts";
import { systemClock } from "../../lib/ports.ts";
import { FAMILIES, planFamily } from "../../lib/rules.ts";
import { buildSchemas } from "../../lib/schemas/index.ts";
import {
  EMULATOR_CREDENTIALS,
  EMULATOR_REGION,
  type Emulators,
  startEmulators,
  statusQueueNameTemplate,
} from "../support/emulators.ts";
import { httpApiClaims, httpApiEvent, lambdaContext } from "../support/events.ts";
import { testKey, verifyKeysDir } from "../support/signing.ts";

export const ROOT = resolve(import.meta.dirname, "../..");
export const PROJECT = "soakproject";
const sqsTemplate = (
  JSON.parse(readFileSync(resolve(ROOT, "test/fixtures/aws-events/sqs-base.json"), "utf8")) as SQSEvent
).Records[0] as SQSRecord;

export interface RouterView {
  router_id: string;
  revision: number;
  applied_revision: number;
  in_sync: boolean;
  helpers: { id: string; protocol: "tcp" | "udp"; port: number; helper: string }[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Harness {
  readonly log: string[] = [];
  agent: ChildProcess | undefined;
  agentStarts = 0;
  private faux!: FauxqsServer;
  private stopping = false;
  private statusLoop: Promise<void> | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  nodeQueueUrl = "";
  nodeDlqUrl = "";
  statusQueueUrl = "";
  /** The node's status queue's ARN: what Lambda's event source mapping puts in each record. */
  statusQueueArn = "";
  statusDlqUrl = "";
  http!: ReturnType<typeof makeHandler>;
  reconcile!: ReturnType<typeof makeReconcileHandler>;
  status!: ReturnType<typeof makeStatusHandler>;
  sqsClients!: AwsClients;
  readonly routers: string[] = [];
  /** The dispatcher's signing key; the agent trusts only its public half. */
  readonly key = testKey("soak");
  readonly verifyKeys = verifyKeysDir(this.key);

  private constructor(
    readonly emu: Emulators,
    readonly config: Config,
    readonly sqsPort: number,
    readonly fauxDir: string,
    readonly stateDir: string,
    readonly node: string,
  ) {}

  static async start(node = `soak${process.pid % 10_000}`): Promise<Harness> {
    const emu = await startEmulators();
    const sqsPort = await freePort();
    const sqsUrl = `http://127.0.0.1:${sqsPort}`;
    const limits = loadLimits({ ...process.env, CTH_MAX_HELPERS_PER_ROUTER: "512" });
    const config = emu.makeConfig({ limits });
    await emu.createTables(config);
    const h = new Harness(
      emu,
      config,
      sqsPort,
      mkdtempSync(join(tmpdir(), "cth-soak-sqs-")),
      mkdtempSync(join(tmpdir(), "cth-soak-agent-")),
      node,
    );
    await h.startSqs();
    h.sqsClients = makeAwsClients(
      { region: EMULATOR_REGION, awsEndpoint: sqsUrl },
      { credentials: EMULATOR_CREDENTIALS },
    );
    const dynamo = emu.clients(config).dynamo;
    const sqs = h.sqsClients.sqs;
    const pair = async (name: string, fifo: boolean) => {
      const attrs = fifo ? { FifoQueue: "true" } : {};
      const suffix = fifo ? ".fifo" : "";
      const dlq = (
        await sqs.send(new CreateQueueCommand({ QueueName: `${name}-dlq${suffix}`, Attributes: attrs }))
      ).QueueUrl!;
      const arn = (
        await sqs.send(new GetQueueAttributesCommand({ QueueUrl: dlq, AttributeNames: ["QueueArn"] }))
      ).Attributes!.QueueArn!;
      const url = (
        await sqs.send(
          new CreateQueueCommand({
            QueueName: `${name}${suffix}`,
            Attributes: {
              ...attrs,
              VisibilityTimeout: "30",
              RedrivePolicy: JSON.stringify({ deadLetterTargetArn: arn, maxReceiveCount: 5 }),
            },
          }),
        )
      ).QueueUrl!;
      return { url, dlq };
    };
    const nodeQ = await pair(`cth-${node}`, true);
    // The deployed naming rule (infra/nodes.cjs): the status function reads the host out of the name.
    const statusQ = await pair(`cth-node-${node}-status`, false);
    h.nodeQueueUrl = nodeQ.url;
    h.nodeDlqUrl = nodeQ.dlq;
    h.statusQueueUrl = statusQ.url;
    h.statusQueueArn = (
      await sqs.send(new GetQueueAttributesCommand({ QueueUrl: statusQ.url, AttributeNames: ["QueueArn"] }))
    ).Attributes!.QueueArn!;
    h.statusDlqUrl = statusQ.dlq;
    const template = nodeQ.url.replace(`cth-${node}.fifo`, "cth-{node}.fifo");
    const store = new DynamoRoutersStore(dynamo, config.routersTable, {
      transactions: config.routerTransactions,
    });
    const queue = new SqsCommandQueue(sqs, (host) => queueUrlFromTemplate(template, host), h.key.signer, {
      maxAttempts: 6,
      baseDelayMs: 100,
    });
    const schemas = buildSchemas(config.limits, config.catalog);
    const quiet = {
      info: () => undefined,
      warn: (m: string) => void h.note(`warn ${m}`),
      error: (m: string) => void h.note(`error ${m}`),
    };
    const silent = new Logger({ serviceName: "cth-soak", logLevel: "SILENT" });
    h.http = makeHandler({
      domain: { store, queue, clock: systemClock, limits: config.limits, log: quiet },
      schemas,
      logger: quiet,
      idempotency: undefined,
    });
    h.reconcile = makeReconcileHandler({
      store,
      queue,
      clock: systemClock,
      logger: silent,
    });
    h.status = makeStatusHandler({
      store,
      queue,
      clock: systemClock,
      schemas,
      logger: silent,
      statusQueueNameTemplate: statusQueueNameTemplate("cth"),
      metrics: { count: (name) => h.note(`metric ${name}`) },
    });
    h.statusLoop = h.runStatusConsumer();
    return h;
  }

  note(line: string): void {
    this.log.push(`${new Date().toISOString()} ${line}`);
    if (this.log.length > 5_000) this.log.shift();
  }

  private async startSqs(): Promise<void> {
    this.faux = await startFauxqs({
      port: this.sqsPort,
      host: "127.0.0.1",
      logger: false,
      defaultRegion: EMULATOR_REGION,
      dataDir: this.fauxDir,
    });
  }

  /** Stops the SQS emulator and starts it again on the same port and state directory. */
  async restartSqs(downMs: number): Promise<void> {
    await this.faux.stop();
    this.note(`sqs down for ${downMs} ms`);
    await sleep(downMs);
    await this.startSqs();
    this.note("sqs up");
  }

  /** The status queue consumer, as Lambda's event source mapping would run functions/status.ts. */
  private async runStatusConsumer(): Promise<void> {
    const sqs = this.sqsClients.sqs;
    while (!this.stopping) {
      try {
        const got = await sqs.send(
          new ReceiveMessageCommand({
            QueueUrl: this.statusQueueUrl,
            MaxNumberOfMessages: 10,
            WaitTimeSeconds: 1,
          }),
        );
        const messages = got.Messages ?? [];
        if (messages.length === 0) continue;
        const records = messages.map((m) => ({
          ...sqsTemplate,
          messageId: m.MessageId!,
          receiptHandle: m.ReceiptHandle!,
          eventSourceARN: this.statusQueueArn,
          body: m.Body ?? "",
        }));
        const result = await this.status({ Records: records }, lambdaContext());
        const failed = new Set(result.batchItemFailures.map((f) => f.itemIdentifier));
        const done = records.filter((r) => !failed.has(r.messageId));
        if (done.length > 0) {
          await sqs.send(
            new DeleteMessageBatchCommand({
              QueueUrl: this.statusQueueUrl,
              Entries: done.map((r, i) => ({ Id: String(i), ReceiptHandle: r.receiptHandle })),
            }),
          );
        }
      } catch (error) {
        this.note(`status consumer: ${String(error).slice(0, 200)}`);
        await sleep(200);
      }
    }
  }

  /** The scheduled reconciler, every `seconds`. */
  startSweeps(seconds: number): void {
    this.sweepTimer = setInterval(() => {
      void this.sweep().catch((error: unknown) => this.note(`sweep: ${String(error).slice(0, 200)}`));
    }, seconds * 1000);
  }

  sweep() {
    return this.reconcile(
      { id: randomUUID(), "detail-type": "Scheduled Event", source: "aws.events" } as never,
      lambdaContext(),
    );
  }

  spawnAgent(): ChildProcess {
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        "agent/cli.ts",
        "--node",
        this.node,
        "--queue-url",
        this.nodeQueueUrl,
        "--status-queue-url",
        this.statusQueueUrl,
        "--endpoint",
        `http://127.0.0.1:${this.sqsPort}`,
        "--region",
        EMULATOR_REGION,
        "--state-dir",
        this.stateDir,
        "--metrics-port",
        "off",
        "--wait-seconds",
        "1",
        "--visibility-timeout",
        "4",
        "--retry-base",
        "1",
        "--namespace-pattern",
        "cths-{router_id}",
        "--create-namespaces",
      ],
      {
        cwd: ROOT,
        env: {
          ...process.env,
          AWS_ACCESS_KEY_ID: EMULATOR_CREDENTIALS.accessKeyId,
          AWS_SECRET_ACCESS_KEY: EMULATOR_CREDENTIALS.secretAccessKey,
          AWS_REGION: EMULATOR_REGION,
          CTH_MAX_HELPERS_PER_ROUTER: "512",
          CTH_AGENT_VERIFY_KEYS: this.verifyKeys,
          LOG_LEVEL: "warn",
        },
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    child.stderr?.on("data", (chunk: Buffer) => this.note(`agent: ${chunk.toString().trim().slice(0, 300)}`));
    this.agent = child;
    this.agentStarts++;
    return child;
  }

  async killAgent(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.agent;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.kill(signal);
    await exited;
  }

  async api(
    method: string,
    path: string,
    body?: unknown,
    roles: string[] = [],
  ): Promise<{ status: number; json: unknown }> {
    const claims = httpApiClaims(roles.includes("admin") ? "operator" : PROJECT, roles);
    const response = await this.http(
      httpApiEvent({ method, path, ...(body === undefined ? {} : { body }), claims }),
      lambdaContext(),
    );
    return { status: response.statusCode, json: response.body ? JSON.parse(response.body) : undefined };
  }

  async addRouter(): Promise<string> {
    const id = randomUUID();
    const put = await this.api("PUT", `/v1/routers/${id}`, { project_id: PROJECT, host: this.node }, [
      "admin",
    ]);
    if (put.status !== 201) throw new Error(`PUT router ${put.status} ${JSON.stringify(put.json)}`);
    this.routers.push(id);
    return id;
  }

  async view(routerId: string): Promise<RouterView> {
    const got = await this.api("GET", `/v1/routers/${routerId}/conntrack-helpers`);
    if (got.status !== 200) throw new Error(`GET ${got.status}`);
    return got.json as RouterView;
  }

  namespace(routerId: string): string {
    return `cths-${routerId}`;
  }

  save(routerId: string, family: Family): string {
    try {
      return execFileSync(
        "ip",
        [
          "netns",
          "exec",
          this.namespace(routerId),
          family === "ipv4" ? "iptables-save" : "ip6tables-save",
          "-t",
          "raw",
        ],
        {
          encoding: "utf8",
          stdio: ["ignore", "pipe", "ignore"],
        },
      );
    } catch {
      return "";
    }
  }

  /** Routers whose namespace differs from the desired set, or that are not in sync. Empty: converged. */
  async divergent(): Promise<string[]> {
    const bad: string[] = [];
    for (const routerId of this.routers) {
      const view = await this.view(routerId);
      let ok = view.in_sync;
      for (const family of FAMILIES) {
        const expected = planFamily(view.helpers, family, this.config.catalog).rules.map((r) => r.id);
        const save = this.save(routerId, family);
        const held = ownedHelperIds(save);
        // Exactly the desired ids, each once, in canonical order; no stray lines of ours.
        if (held.join(",") !== expected.join(",")) ok = false;
        if (ownedLines(save).filter((l) => l.includes("--helper")).length !== expected.length) ok = false;
      }
      if (!ok) bad.push(routerId);
    }
    return bad;
  }

  async waitConverged(timeoutMs: number): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    let bad = await this.divergent();
    while (bad.length > 0 && Date.now() < deadline) {
      await sleep(1_000);
      bad = await this.divergent();
    }
    return bad;
  }

  async depth(url: string): Promise<number> {
    const attrs =
      (
        await this.sqsClients.sqs.send(
          new GetQueueAttributesCommand({
            QueueUrl: url,
            AttributeNames: [
              "ApproximateNumberOfMessages",
              "ApproximateNumberOfMessagesNotVisible",
              "ApproximateNumberOfMessagesDelayed",
            ],
          }),
        )
      ).Attributes ?? {};
    return (
      Number(attrs.ApproximateNumberOfMessages ?? 0) +
      Number(attrs.ApproximateNumberOfMessagesNotVisible ?? 0) +
      Number(attrs.ApproximateNumberOfMessagesDelayed ?? 0)
    );
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    await this.killAgent("SIGTERM").catch(() => undefined);
    await this.statusLoop;
    for (const routerId of this.routers) {
      try {
        execFileSync("ip", ["netns", "delete", this.namespace(routerId)], { stdio: "ignore" });
      } catch {
        // not created
      }
    }
    this.sqsClients?.sqs.destroy();
    await this.faux?.stop().catch(() => undefined);
    await this.emu.stop();
    rmSync(this.fauxDir, { recursive: true, force: true });
    rmSync(this.stateDir, { recursive: true, force: true });
    rmSync(this.verifyKeys, { recursive: true, force: true });
  }
}
