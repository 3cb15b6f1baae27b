/**
 * Real emulators for integration tests, the local stack, agent tests and soak runs.
 *
 *   const emu = await startEmulators();          // dynalite + fauxqs + a router, all on 127.0.0.1:0
 *   const config = emu.makeConfig();            // Config pointing at them (unique table names)
 *   await emu.createTables(config);              // routers + idempotency tables from lib/aws/tables.ts
 *   const { url, dlqUrl } = await emu.createNodeQueue("node-a");   // FIFO queue + FIFO DLQ + redrive
 *   const status = await emu.createNodeStatusQueue("node-a"); // cth-node-node-a-status (+ shared DLQ, ARN)
 *   const park = await emu.createStatusQueue("name"); // any standard queue + DLQ
 *   const clients = emu.clients(config);         // AWS SDK clients with the emulators' dummy credentials
 *   emu.env(config)                              // the same as environment variables, for child processes
 *   await emu.stop();                            // in afterAll
 *
 * DynamoDB and SQS are two servers, but Config has one `awsEndpoint` (as moto_server or LocalStack
 * would): `emu.endpoint` is a small proxy that routes by the X-Amz-Target header (DynamoDB_* to
 * dynalite, everything else to fauxqs). `dynamoEndpoint` / `sqsEndpoint` reach each server directly.
 *
 * `startMotoServer()` starts moto_server (when on PATH, as on CI machines) as a second, independent
 * emulator; the port contract tests run against it too.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import http from "node:http";
import { createRequire } from "node:module";
import net, { type AddressInfo } from "node:net";
import {
  CreateTableCommand,
  DescribeTableCommand,
  type DynamoDBClient,
  UpdateTimeToLiveCommand,
} from "@aws-sdk/client-dynamodb";
import {
  CreateQueueCommand,
  DeleteMessageBatchCommand,
  GetQueueAttributesCommand,
  type Message,
  ReceiveMessageCommand,
  type SQSClient,
} from "@aws-sdk/client-sqs";
import { type FauxqsServer, startFauxqs } from "fauxqs";
import { type AwsClients, makeAwsClients } from "../../lib/aws/clients.ts";
import {
  IDEMPOTENCY_TTL_ATTRIBUTE,
  idempotencyTableDefinition,
  routersTableDefinition,
} from "../../lib/aws/tables.ts";
import { type Config, loadConfig } from "../../lib/config.ts";

interface DynaliteServer {
  listen(port: number, host: string, callback: () => void): void;
  address(): AddressInfo | string | null;
  close(callback?: () => void): void;
}
type DynaliteFactory = (options: Record<string, unknown>) => DynaliteServer;

export const EMULATOR_REGION = "us-east-1";
export const EMULATOR_CREDENTIALS = { accessKeyId: "test", secretAccessKey: "test" } as const;

export interface QueuePair {
  readonly url: string;
  readonly dlqUrl: string;
}

/** A node's own status queue: its ARN is what the status function reads the reporting host from. */
export interface NodeStatusQueue extends QueuePair {
  readonly arn: string;
}

/** The deployed naming rule (infra/nodes.cjs): `<prefix>-node-<node>-status`, one DLQ for all of them. */
export const statusQueueNameTemplate = (prefix: string): string => `${prefix}-node-{node}-status`;

export interface Emulators {
  /** One endpoint for both services (Config.awsEndpoint / CTH_AWS_ENDPOINT). */
  readonly endpoint: string;
  readonly dynamoEndpoint: string;
  readonly sqsEndpoint: string;
  readonly region: string;
  readonly credentials: { readonly accessKeyId: string; readonly secretAccessKey: string };
  /** fauxqs itself, for inspectQueue(name) and spies. */
  readonly fauxqs: FauxqsServer;
  /** A Config for these emulators; table names are unique per call unless overridden. */
  makeConfig(overrides?: Partial<Config>): Config;
  /** SDK clients bound to the emulators (explicit dummy credentials). */
  clients(config?: Pick<Config, "region" | "awsEndpoint">): AwsClients;
  /** Creates the routers and idempotency tables named in `config`. */
  createTables(config: Pick<Config, "routersTable" | "idempotencyTable">): Promise<void>;
  /** FIFO queue `cth-<host>.fifo` (matching makeConfig's template) with a FIFO DLQ and redrive. */
  createNodeQueue(host: string, options?: { maxReceiveCount?: number; prefix?: string }): Promise<QueuePair>;
  /** A standard queue with a DLQ (park queues, one-off status queues). */
  createStatusQueue(name?: string): Promise<QueuePair>;
  /**
   * Node `node`'s status queue `<prefix>-node-<node>-status` (prefix default `cth`, matching makeConfig's
   * statusQueueNameTemplate), redriving to the shared `<prefix>-status-dlq`, as deployed.
   */
  createNodeStatusQueue(node: string, prefix?: string): Promise<NodeStatusQueue>;
  /** Receives and deletes every message currently on `url` (FIFO: deleting unblocks the next of a group). */
  drain(url: string): Promise<Message[]>;
  /** ApproximateNumberOfMessages + NotVisible + Delayed. */
  depth(url: string): Promise<number>;
  /** Environment variables equivalent to `config`, for child processes (agent, local stack). */
  env(config: Config): Record<string, string>;
  stop(): Promise<void>;
}

const require = createRequire(import.meta.url);

/** dynalite in memory, or on LevelDB under `path` (kept across restarts). */
async function startDynalite(path?: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const dynalite = require("dynalite") as DynaliteFactory;
  const server = dynalite({
    createTableMs: 0,
    deleteTableMs: 0,
    updateTableMs: 0,
    ...(path ? { path } : {}),
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Forwards each request to dynalite or fauxqs by its X-Amz-Target (both speak JSON over POST). */
async function startRouter(dynamo: string, sqs: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const server = http.createServer((req, res) => {
    const target = String(req.headers["x-amz-target"] ?? "");
    const upstream = new URL(target.startsWith("DynamoDB") ? dynamo : sqs);
    const forward = http.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent,
      },
      (reply) => {
        res.writeHead(reply.statusCode ?? 502, reply.headers);
        reply.pipe(res);
      },
    );
    forward.on("error", (error) => {
      res.writeHead(502, { "content-type": "text/plain" });
      res.end(`emulator proxy: ${error.message}`);
    });
    req.pipe(forward);
  });
  server.keepAliveTimeout = 1_000;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    stop: async () => {
      agent.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function queueAttributes(sqs: SQSClient, url: string): Promise<Record<string, string>> {
  const reply = await sqs.send(
    new GetQueueAttributesCommand({
      QueueUrl: url,
      AttributeNames: [
        "QueueArn",
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
      ],
    }),
  );
  return reply.Attributes ?? {};
}

/** A queue with its DLQ and a redrive policy (FIFO pairs for node queues). */
export async function createQueuePair(
  sqs: SQSClient,
  name: string,
  fifo: boolean,
  maxReceiveCount: number,
): Promise<QueuePair> {
  const suffix = fifo ? ".fifo" : "";
  const fifoAttributes: Record<string, string> = fifo ? { FifoQueue: "true" } : {};
  const dlq = await sqs.send(
    new CreateQueueCommand({ QueueName: `${name}-dlq${suffix}`, Attributes: fifoAttributes }),
  );
  const dlqArn = (await queueAttributes(sqs, dlq.QueueUrl!)).QueueArn;
  const queue = await sqs.send(
    new CreateQueueCommand({
      QueueName: `${name}${suffix}`,
      Attributes: {
        ...fifoAttributes,
        VisibilityTimeout: "30",
        RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount }),
      },
    }),
  );
  return { url: queue.QueueUrl!, dlqUrl: dlq.QueueUrl! };
}

/** Receives and deletes every message currently on `url` (FIFO: deleting unblocks the next of a group). */
export async function drainQueue(sqs: SQSClient, url: string): Promise<Message[]> {
  const messages: Message[] = [];
  for (;;) {
    const batch = await sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: url,
        MaxNumberOfMessages: 10,
        WaitTimeSeconds: 0,
        VisibilityTimeout: 300,
        MessageSystemAttributeNames: ["All"],
        MessageAttributeNames: ["All"],
      }),
    );
    if (!batch.Messages?.length) return messages;
    messages.push(...batch.Messages);
    await sqs.send(
      new DeleteMessageBatchCommand({
        QueueUrl: url,
        Entries: batch.Messages.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle! })),
      }),
    );
  }
}

/** Creates the routers and idempotency tables (TTL where the emulator supports it). */
export async function createTables(
  dynamo: DynamoDBClient,
  config: Pick<Config, "routersTable" | "idempotencyTable">,
): Promise<void> {
  for (const input of [
    routersTableDefinition(config.routersTable),
    idempotencyTableDefinition(config.idempotencyTable),
  ]) {
    // A table kept on disk (local stack with a data directory) exists already: that is fine.
    await dynamo.send(new CreateTableCommand(input)).catch((error: unknown) => {
      if (!(error instanceof Error && error.name === "ResourceInUseException")) throw error;
    });
    await dynamo.send(new DescribeTableCommand({ TableName: input.TableName }));
  }
  // dynalite has no TimeToLive API (moto_server and DynamoDB do); expiry is Powertools' own check too.
  await dynamo
    .send(
      new UpdateTimeToLiveCommand({
        TableName: config.idempotencyTable,
        TimeToLiveSpecification: { AttributeName: IDEMPOTENCY_TTL_ATTRIBUTE, Enabled: true },
      }),
    )
    .catch((error: unknown) => {
      if (!(error instanceof Error && error.name === "UnknownOperationException")) throw error;
    });
}

export async function startEmulators(options: { dynamoPath?: string } = {}): Promise<Emulators> {
  const dynamo = await startDynalite(options.dynamoPath);
  const fauxqs = await startFauxqs({
    port: 0,
    logger: false,
    host: "127.0.0.1",
    defaultRegion: EMULATOR_REGION,
  });
  const router = await startRouter(dynamo.url, fauxqs.address);
  const endpoint = router.url;
  const base = { region: EMULATOR_REGION, awsEndpoint: endpoint };
  const clientsFor = (config: Pick<Config, "region" | "awsEndpoint"> = base) =>
    makeAwsClients(config, { credentials: EMULATOR_CREDENTIALS });
  const shared = clientsFor();
  const queueUrlBase = `${fauxqs.address}/000000000000`;

  return {
    endpoint,
    dynamoEndpoint: dynamo.url,
    sqsEndpoint: fauxqs.address,
    region: EMULATOR_REGION,
    credentials: EMULATOR_CREDENTIALS,
    fauxqs,
    makeConfig(overrides = {}) {
      const unique = randomUUID().slice(0, 8);
      const defaults = loadConfig({});
      return {
        ...defaults,
        region: EMULATOR_REGION,
        awsEndpoint: endpoint,
        routersTable: `cth-routers-${unique}`,
        // dynalite has no TransactWriteItems: multi-router commits take the compensating path here.
        routerTransactions: false,
        idempotencyTable: `cth-idempotency-${unique}`,
        nodeQueueUrlTemplate: `${queueUrlBase}/cth-{node}.fifo`,
        statusQueueNameTemplate: statusQueueNameTemplate("cth"),
        ...overrides,
      };
    },
    clients: clientsFor,
    createTables: (config) => createTables(shared.dynamoRaw, config),
    createNodeQueue(host, options = {}) {
      return createQueuePair(
        shared.sqs,
        `${options.prefix ?? "cth-"}${host}`,
        true,
        options.maxReceiveCount ?? 5,
      );
    },
    createStatusQueue(name = "cth-status") {
      return createQueuePair(shared.sqs, name, false, 5);
    },
    async createNodeStatusQueue(node, prefix = "cth") {
      // CreateQueue with the same attributes returns the existing queue: every node shares this DLQ.
      const dlqUrl = (await shared.sqs.send(new CreateQueueCommand({ QueueName: `${prefix}-status-dlq` })))
        .QueueUrl!;
      const dlqArn = (await queueAttributes(shared.sqs, dlqUrl)).QueueArn;
      const url = (
        await shared.sqs.send(
          new CreateQueueCommand({
            QueueName: statusQueueNameTemplate(prefix).replace("{node}", node),
            Attributes: {
              VisibilityTimeout: "30",
              RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount: 5 }),
            },
          }),
        )
      ).QueueUrl!;
      return { url, dlqUrl, arn: (await queueAttributes(shared.sqs, url)).QueueArn! };
    },
    drain: (url) => drainQueue(shared.sqs, url),
    async depth(url) {
      const attrs = await queueAttributes(shared.sqs, url);
      return (
        Number(attrs.ApproximateNumberOfMessages ?? 0) +
        Number(attrs.ApproximateNumberOfMessagesNotVisible ?? 0) +
        Number(attrs.ApproximateNumberOfMessagesDelayed ?? 0)
      );
    },
    env(config) {
      return {
        AWS_REGION: config.region,
        AWS_ACCESS_KEY_ID: EMULATOR_CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: EMULATOR_CREDENTIALS.secretAccessKey,
        CTH_AWS_ENDPOINT: config.awsEndpoint ?? "",
        CTH_ROUTERS_TABLE: config.routersTable,
        CTH_ROUTERS_TRANSACTIONS: String(config.routerTransactions),
        CTH_IDEMPOTENCY_TABLE: config.idempotencyTable,
        CTH_NODE_QUEUE_URL_TEMPLATE: config.nodeQueueUrlTemplate,
        CTH_STATUS_QUEUE_NAME_TEMPLATE: config.statusQueueNameTemplate,
        ...(config.signingKey?.kind === "file"
          ? { CTH_SIGNING_KEY_FILE: config.signingKey.path, CTH_SIGNING_KEY_ID: config.signingKey.keyId }
          : {}),
        ...(config.signingKey?.kind === "ssm"
          ? { CTH_SIGNING_KEY_PARAMETER: config.signingKey.parameterName }
          : {}),
      };
    },
    async stop() {
      for (const client of Object.values(shared)) client.destroy();
      await router.stop();
      await fauxqs.stop();
      await dynamo.stop();
    },
  };
}

/** Why moto_server cannot run here, or undefined when it can. */
export function motoMissing(): string | undefined {
  const found = spawnSync("moto_server", ["--help"], { stdio: "ignore" });
  return found.status === 0 ? undefined : "needs moto_server on PATH";
}

async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

/**
 * moto_server (Python) as a second, independent emulator for DynamoDB and SQS on one endpoint. The child is
 * killed by its PID in stop(); call it from afterAll.
 */
export async function startMotoServer(): Promise<{
  endpoint: string;
  pid: number;
  stop: () => Promise<void>;
}> {
  const port = await freePort();
  const child = spawn("moto_server", ["-H", "127.0.0.1", "-p", String(port)], { stdio: "ignore" });
  const endpoint = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode !== null || child.pid === undefined) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    process.kill(child.pid, "SIGTERM");
    await exited;
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`moto_server exited with ${child.exitCode}`);
    try {
      const reply = await fetch(`${endpoint}/moto-api/`);
      if (reply.ok || reply.status < 500) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error("moto_server did not start within 30 s");
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { endpoint, pid: child.pid!, stop };
}
