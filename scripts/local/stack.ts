/**
 * The whole system on one machine, loopback only: dynalite + fauxqs (test/support/emulators.ts, the one way
 * this project starts them), the tables and queues the deployment creates (per node: command queue, DLQ and
 * status queue), the real function handlers behind a JWT-verifying API Gateway stand-in, one status consumer
 * per node status queue, the reconciler on a short period, and one agent for node `local` as a child process.
 * Snapshots are signed with a key pair made fresh at every start; the agent trusts only its public half.
 */

import { randomBytes, randomUUID } from "node:crypto";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { CreateQueueCommand, SendMessageCommand } from "@aws-sdk/client-sqs";
import { ScanCommand } from "@aws-sdk/lib-dynamodb";
import type { Context, EventBridgeEvent, ScheduledEvent } from "aws-lambda";
import { DynamoRoutersStore } from "../../lib/aws/routers-store.ts";
import type { DomainDeps } from "../../lib/domain/services.ts";
import {
  type CommandQueue,
  type DrainingChange,
  isTombstone,
  type RouterRecord,
  type RoutersStore,
} from "../../lib/ports.ts";
import { lazyHandler } from "../../lib/production.ts";
import { booleanSetting, choiceSetting, integerSetting, portSetting, raw } from "../../lib/settings.ts";
import {
  type Emulators,
  type NodeStatusQueue,
  startEmulators,
  statusQueueNameTemplate,
} from "../../test/support/emulators.ts";
import { generateSigningKeyPair, writeLocalKeyPair } from "../signing-key.ts";
import { type AgentProcess, spawnAgent } from "./agent-process.ts";
import { loadOrCreateSigningKey, publicJwks, type SigningKey, signToken } from "./auth.ts";
import { DEFAULT_THROTTLE, type Gateway, type HttpHandler, lambdaContext, startGateway } from "./gateway.ts";
import { deleteNamespace, listNamespaces, realBackendMissing } from "./kernel.ts";
import {
  localDir,
  REPO_ROOT,
  signingKeyFile,
  snapshotSigningDir,
  stackFile,
  verifyKeysDir,
} from "./paths.ts";
import { type Poller, type SqsHandler, startStatusPoller } from "./status-poller.ts";

export const LOCAL_NODE = "local";
export const DEMO_PROJECT = "demo";
export const DEFAULT_DEMO_ROUTER = "5eed0000-0000-4000-8000-00000000de30";
const PREFIX = "cth-local";
/** The namespaces the agent's default pattern names: Neutron's qrouter- and a DVR router's snat-. */
const NAMESPACE = /^(?:qrouter|snat)-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

export interface StackOptions {
  readonly port: number;
  readonly dir: string;
  readonly reconcileSeconds: number;
  readonly backend: "auto" | "iptables" | "nftables" | "dry-run";
  readonly agent: boolean;
  readonly metricsPort: string;
  readonly demoRouterId: string;
  /** Keeps the routers table (dynalite on LevelDB) here across restarts; unset: in memory. */
  readonly dataDir?: string | undefined;
  /** The gateway's throttle (requests per second, bucket depth); default serverless.yml's 50 and 100. */
  readonly throttle?: { readonly rate: number; readonly burst: number };
  /**
   * Concurrent batches per status queue (default 1). Lambda's SQS event source runs several at once (five
   * to start with) and scales up; one serial poller falls behind an agent that reports faster than it reads.
   */
  readonly statusPollers?: number;
  readonly print: (line: string) => void;
}

export function optionsFromEnv(env: NodeJS.ProcessEnv, print: (line: string) => void): StackOptions {
  const backend = choiceSetting(
    raw(env, "CTH_LOCAL_BACKEND"),
    "CTH_LOCAL_BACKEND",
    ["auto", "iptables", "nftables", "dry-run"] as const,
    "auto",
  );
  const demoRouterId = raw(env, "CTH_LOCAL_DEMO_ROUTER") ?? DEFAULT_DEMO_ROUTER;
  const dataDir = raw(env, "CTH_LOCAL_DATA_DIR");
  if (!NAMESPACE.test(`qrouter-${demoRouterId}`))
    throw new Error("CTH_LOCAL_DEMO_ROUTER must be a lowercase UUID");
  return {
    port: integerSetting(raw(env, "PORT"), "PORT", 3000, 0, 65_535),
    dir: localDir(env),
    reconcileSeconds: integerSetting(
      raw(env, "CTH_LOCAL_RECONCILE_SECONDS"),
      "CTH_LOCAL_RECONCILE_SECONDS",
      10,
      1,
    ),
    backend,
    agent: booleanSetting(raw(env, "CTH_LOCAL_AGENT"), "CTH_LOCAL_AGENT", true),
    // Read as the agent reads --metrics-port, so a typo fails here, naming the stack's variable.
    metricsPort: String(
      portSetting(raw(env, "CTH_LOCAL_METRICS_PORT"), "CTH_LOCAL_METRICS_PORT", 9469) ?? "off",
    ),
    demoRouterId,
    dataDir: dataDir === undefined ? undefined : resolve(dataDir),
    throttle: {
      rate: integerSetting(
        raw(env, "CTH_LOCAL_THROTTLE_RATE"),
        "CTH_LOCAL_THROTTLE_RATE",
        DEFAULT_THROTTLE.rate,
        1,
      ),
      burst: integerSetting(
        raw(env, "CTH_LOCAL_THROTTLE_BURST"),
        "CTH_LOCAL_THROTTLE_BURST",
        DEFAULT_THROTTLE.burst,
        1,
      ),
    },
    statusPollers: integerSetting(
      raw(env, "CTH_LOCAL_STATUS_POLLERS"),
      "CTH_LOCAL_STATUS_POLLERS",
      1,
      1,
      100,
    ),
    print,
  };
}

export interface StackInfo {
  readonly pid: number;
  readonly apiUrl: string;
  readonly controlUrl: string;
  readonly controlToken: string;
  readonly agentPid: number | undefined;
  readonly backend: "iptables" | "nftables" | "dry-run" | "none";
  readonly demoRouterId: string;
  /** The emulators' endpoint and the queues, for operators and soak tests that inspect them (DLQ depth). */
  readonly awsEndpoint: string;
  /** Node `local`'s queues (`status` is its own status queue; `statusDlq` is shared by every node's). */
  readonly queues: {
    readonly node: string;
    readonly nodeDlq: string;
    readonly status: string;
    readonly statusDlq: string;
  };
  /**
   * Every node's queues, each named with the host it belongs to: `local` and every host a router was bound
   * to (created on first use, as infra/nodes.cjs creates them for the deployed node list).
   */
  readonly nodes: readonly StackNode[];
  /** The key id snapshots are signed with, and the agent's --verify-keys directory. */
  readonly signing: { readonly keyId: string; readonly verifyKeysDir: string };
}

export interface StackNode {
  readonly host: string;
  readonly queue: string;
  readonly dlq: string;
  readonly status_queue: string;
}

export interface RunningStack {
  readonly info: StackInfo;
  readonly readyMs: number;
  /** Milliseconds since start at which each phase finished, for the ready line. */
  readonly phases: Record<string, number>;
  readonly demoToken: string;
  readonly adminToken: string;
  stop(): Promise<void>;
}

type EventsHandler = (event: EventBridgeEvent<string, unknown>, context: Context) => Promise<unknown>;
type ScheduleHandler = (event: ScheduledEvent, context: Context) => Promise<unknown>;

/** Every host a stored router is bound to or still drains (a deleted router's too), read through the store. */
async function knownHosts(store: RoutersStore): Promise<Set<string>> {
  const hosts = new Set<string>();
  for await (const entry of store.listAll()) {
    if (!isTombstone(entry)) for (const binding of entry.bindings) hosts.add(binding.host);
    for (const host of Object.keys(entry.draining)) hosts.add(host);
  }
  return hosts;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function refuseIfRunning(file: string): Promise<void> {
  try {
    const info = JSON.parse(await readFile(file, "utf8")) as StackInfo;
    if (info.pid !== process.pid && processAlive(info.pid)) {
      throw new Error(
        `a local stack is already running from this directory (pid ${info.pid}, ${info.apiUrl})`,
      );
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT" || error instanceof SyntaxError) return;
    throw error;
  }
}

/**
 * EventBridge invokes Lambda asynchronously: on error Lambda retries twice, then the on-failure destination
 * (in AWS the events DLQ) gets the event. The control endpoint does the same and reports what happened.
 */
async function invokeAsync(
  handler: EventsHandler,
  envelope: EventBridgeEvent<string, unknown>,
  deadLetter: (record: unknown) => Promise<void>,
): Promise<{
  invocation: "succeeded" | "dead-lettered";
  attempts: number;
  response?: unknown;
  error?: string;
}> {
  let lastError = "";
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      const response = await handler(envelope, lambdaContext(`${PREFIX}-events`, 30_000));
      return { invocation: "succeeded", attempts: attempt, response };
    } catch (error) {
      lastError = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
      if (attempt < 3) await new Promise((resolve) => setTimeout(resolve, 200 * attempt));
    }
  }
  // The on-failure destination record Lambda writes for an asynchronous invocation.
  await deadLetter({
    version: "1.0",
    timestamp: new Date().toISOString(),
    requestContext: { condition: "RetriesExhausted", approximateInvokeCount: 3 },
    requestPayload: envelope,
    responseContext: { statusCode: 200, functionError: "Unhandled" },
    responsePayload: { errorMessage: lastError },
  });
  return { invocation: "dead-lettered", attempts: 3, error: lastError };
}

async function readJson(req: http.IncomingMessage, limit: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new Error("body too large");
    chunks.push(chunk as Buffer);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

/** The committed OpenAPI document, read on every request so a regenerated one is served at once. */
async function readOpenApi(): Promise<unknown> {
  return JSON.parse(await readFile(join(REPO_ROOT, "openapi.json"), "utf8"));
}

export async function startStack(options: StackOptions): Promise<RunningStack> {
  const t0 = performance.now();
  const phases: Record<string, number> = {};
  const mark = (name: string) => {
    phases[name] = Math.round(performance.now() - t0);
  };
  const { print } = options;
  const log = (line: Record<string, unknown>) =>
    print(JSON.stringify({ time: new Date().toISOString(), ...line }));
  await mkdir(options.dir, { recursive: true, mode: 0o700 });
  const infoFile = stackFile(options.dir);
  await refuseIfRunning(infoFile);

  const cleanups: (() => Promise<void>)[] = [];
  let stopped = false;
  const stopAll = async () => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch (error) {
        log({ level: "warn", msg: "cleanup step failed", error: String(error) });
      }
    }
  };

  try {
    const key: SigningKey = await loadOrCreateSigningKey(signingKeyFile(options.dir));
    // The local issuer's key set, as an identity provider publishes it at its jwks_uri.
    await writeFile(join(options.dir, "jwks.json"), `${JSON.stringify(publicJwks(key), null, 2)}\n`);

    const emu: Emulators = await startEmulators(
      options.dataDir ? { dynamoPath: join(options.dataDir, "dynamodb") } : {},
    );
    cleanups.push(() => emu.stop());
    // Queue names follow the deployed rule (infra/nodes.cjs): the status function takes the reporting host
    // from the name of the status queue a record arrived on. Node `local` first (its agent needs them);
    // every other host the moment a router is bound to it (see provisioning below).
    const nodes: StackNode[] = [];
    const nodeQueues = new Map<string, Promise<NodeStatusQueue>>();
    // Status queues wait here until the status function is loaded, then each gets its consumer.
    let consumeStatus: ((queue: NodeStatusQueue) => void) | undefined;
    const unconsumed: NodeStatusQueue[] = [];
    let writeInfo = async () => {};
    const ensureNode = (host: string): Promise<NodeStatusQueue> => {
      let pending = nodeQueues.get(host);
      if (!pending) {
        pending = (async () => {
          const node = await emu.createNodeQueue(host, { prefix: `${PREFIX}-node-` });
          const status = await emu.createNodeStatusQueue(host, PREFIX);
          nodes.push({ host, queue: node.url, dlq: node.dlqUrl, status_queue: status.url });
          if (consumeStatus) consumeStatus(status);
          else unconsumed.push(status);
          if (host !== LOCAL_NODE) log({ level: "info", msg: "node queues created", host, queue: node.url });
          await writeInfo();
          return status;
        })();
        // A failed creation is tried again by the next send to that host.
        pending.catch(() => nodeQueues.delete(host));
        nodeQueues.set(host, pending);
      }
      return pending;
    };
    const status = await ensureNode(LOCAL_NODE);
    const node = nodes[0]!;
    // A fresh snapshot signing pair every start: the functions sign with the private half (a 0600 file),
    // the agent verifies with the public half alone.
    const snapshotKey = generateSigningKeyPair(`local-${randomBytes(4).toString("hex")}`);
    const verifyDir = verifyKeysDir(options.dir);
    const { privateKeyFile } = await writeLocalKeyPair(
      snapshotKey,
      snapshotSigningDir(options.dir),
      verifyDir,
    );
    const config = emu.makeConfig({
      routersTable: `${PREFIX}-routers`,
      idempotencyTable: `${PREFIX}-idempotency`,
      nodeQueueUrlTemplate: `${node.queue.slice(0, node.queue.lastIndexOf("/") + 1)}${PREFIX}-node-{node}.fifo`,
      statusQueueNameTemplate: statusQueueNameTemplate(PREFIX),
      signingKey: { kind: "file", path: privateKeyFile, keyId: snapshotKey.keyId },
    });
    await emu.createTables(config);
    const clients = emu.clients(config);
    cleanups.push(async () => {
      clients.dynamo.destroy();
      clients.sqs.destroy();
    });
    const eventsDlq = (await clients.sqs.send(new CreateQueueCommand({ QueueName: `${PREFIX}-events-dlq` })))
      .QueueUrl!;

    // The functions read their configuration on first invocation, from the environment, as in Lambda.
    Object.assign(process.env, emu.env(config));

    // Router ids this stack has seen: its namespaces are the only ones it may remove on stop.
    const seenRouters = new Set<string>([options.demoRouterId]);

    // The agent: real iptables in real namespaces when this host allows it, else a loud dry run. It starts
    // first, so its start-up (kernel helper probe) overlaps with loading the functions.
    let backend: StackInfo["backend"] = "none";
    let agent: AgentProcess | undefined;
    const namespacesBefore = await listNamespaces();
    if (options.agent) {
      const real = options.backend === "nftables" ? "nftables" : "iptables";
      const missing =
        options.backend === "dry-run" ? "CTH_LOCAL_BACKEND=dry-run" : await realBackendMissing(real);
      if (missing && options.backend !== "auto" && options.backend !== "dry-run")
        throw new Error(`CTH_LOCAL_BACKEND=${options.backend} but ${missing}`);
      backend = missing ? "dry-run" : real;
      const stateDir = `${options.dir}/agent`;
      // A fresh agent state every start: the last stop removed the namespaces this stack made, and the table
      // is new (or, with CTH_LOCAL_DATA_DIR, the agent's resync request re-sends every router it keeps).
      // Revisions remembered from an earlier table would make the agent drop the new table's snapshots.
      await rm(stateDir, { recursive: true, force: true });
      await mkdir(stateDir, { recursive: true, mode: 0o700 });
      if (missing) {
        const bar = "!".repeat(78);
        print(`${bar}\n!!! DRY RUN (${missing}): the agent renders iptables-restore input to`);
        print(
          `!!! ${stateDir}/dry-run and touches no namespace. Run as root with iptables for the real thing.\n${bar}`,
        );
      }
      const spawnIt = () =>
        spawnAgent({
          args: [
            "--node",
            LOCAL_NODE,
            "--queue-url",
            node.queue,
            "--status-queue-url",
            status.url,
            "--verify-keys",
            verifyDir,
            "--endpoint",
            emu.endpoint,
            "--region",
            config.region,
            "--state-dir",
            stateDir,
            "--metrics-port",
            options.metricsPort,
            "--wait-seconds",
            "5",
            "--backend",
            backend,
            ...(backend === "dry-run" ? [] : ["--create-namespaces"]),
          ],
          // The private key's location is the dispatcher's business, never a node's.
          env: Object.fromEntries(
            Object.entries(process.env).filter(([name]) => !name.startsWith("CTH_SIGNING_KEY_")),
          ),
          print,
          onExit: (code, signal) => {
            log({ level: "error", msg: "agent exited unexpectedly; restarting in 2 s", code, signal });
            setTimeout(() => {
              if (!stopped) agent = spawnIt();
            }, 2_000).unref();
          },
        });
      agent = spawnIt();
      const current = () => agent;
      cleanups.push(async () => {
        await current()?.stop();
        // Remove the namespaces this stack's agent created: only `qrouter-<id>` and `snat-<id>` of routers this stack knew,
        // and only if they did not exist before it started.
        if (backend === "dry-run" || backend === "none") return;
        try {
          const rows = await clients.dynamo.send(
            new ScanCommand({ TableName: config.routersTable, ProjectionExpression: "router_id" }),
          );
          for (const item of rows.Items ?? []) seenRouters.add(String(item.router_id));
        } catch (error) {
          log({ level: "warn", msg: "could not list routers for namespace cleanup", error: String(error) });
        }
        for (const name of await listNamespaces()) {
          const id = NAMESPACE.exec(name)?.[1];
          if (!id || !seenRouters.has(id) || namespacesBefore.has(name)) continue;
          await deleteNamespace(name).then(
            () => log({ level: "info", msg: "namespace removed", namespace: name }),
            (error: unknown) =>
              log({ level: "warn", msg: "namespace removal failed", namespace: name, error: String(error) }),
          );
        }
      });
    }

    mark("emulators+resources");
    const httpModule = await import("../../functions/http.ts");
    const statusFn = (await import("../../functions/status.ts")) as unknown as { handler: SqsHandler };
    const reconcileFn = (await import("../../functions/reconcile.ts")) as unknown as {
      handler: ScheduleHandler;
    };
    const eventsModule = await import("../../functions/events.ts");
    // The production wiring, with one local addition: a router bound to a host that has no queues yet (once
    // that write committed), or a snapshot for one, creates them, as the deployment has them for every node in
    // its list. A refused request creates nothing.
    const provisioning = <D extends { domain: DomainDeps }>(deps: D): D => {
      const { store, queue } = deps.domain;
      const provisionedStore: RoutersStore = Object.assign(Object.create(store) as RoutersStore, {
        put: async (next: RouterRecord, expectedRevision: number | undefined, draining?: DrainingChange) => {
          await store.put(next, expectedRevision, draining);
          // Only once the write committed: a refused or lost write makes no queues.
          for (const binding of next.bindings) await ensureNode(binding.host);
        },
      });
      const provisionedQueue: CommandQueue = {
        send: async (host, commands, sendOptions) => {
          await ensureNode(host);
          return queue.send(host, commands, sendOptions);
        },
      };
      return { ...deps, domain: { ...deps.domain, store: provisionedStore, queue: provisionedQueue } };
    };
    const httpFn = {
      handler: lazyHandler(() => httpModule.makeHandler(provisioning(httpModule.defaultDeps()))),
    } as unknown as { handler: HttpHandler };
    const eventsFn = {
      handler: lazyHandler(() => eventsModule.makeHandler(provisioning(eventsModule.defaultDeps()))),
    } as unknown as { handler: EventsHandler };
    // A table kept across restarts (CTH_LOCAL_DATA_DIR) names hosts this run has not created queues for.
    const store = new DynamoRoutersStore(clients.dynamo, config.routersTable, {
      transactions: config.routerTransactions,
    });
    for (const host of await knownHosts(store)) await ensureNode(host);

    const gateway: Gateway = await startGateway({
      handler: async (event, context) => {
        const id = event.pathParameters?.router_id;
        if (id) seenRouters.add(id);
        return httpFn.handler(event, context);
      },
      key,
      port: options.port,
      ...(options.throttle ? { throttle: options.throttle } : {}),
      openapi: readOpenApi,
      functionName: `${PREFIX}-http`,
      log: (line) => {
        if (line.level !== "info") log(line);
      },
    });
    cleanups.push(() => gateway.close());

    // Loopback control endpoint for `npm run emit`, guarded by a per-run token kept in the 0600 stack.json.
    const controlToken = randomBytes(24).toString("base64url");
    const control = http.createServer(async (req, res) => {
      const reply = (status: number, body: unknown) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      };
      if (req.headers["x-cth-control-token"] !== controlToken) return reply(403, { error: "forbidden" });
      if (req.method !== "POST" || req.url !== "/events") return reply(404, { error: "not found" });
      let envelope: EventBridgeEvent<string, unknown>;
      try {
        envelope = (await readJson(req, 256 * 1024)) as EventBridgeEvent<string, unknown>;
      } catch (error) {
        return reply(400, { error: String(error) });
      }
      const detail = envelope.detail as {
        router_id?: unknown;
        conntrack_helpers?: { router_id?: unknown }[];
      };
      if (typeof detail?.router_id === "string") seenRouters.add(detail.router_id);
      for (const helper of Array.isArray(detail?.conntrack_helpers) ? detail.conntrack_helpers : []) {
        if (typeof helper?.router_id === "string") seenRouters.add(helper.router_id);
      }
      const result = await invokeAsync(eventsFn.handler, envelope, async (record) => {
        await clients.sqs.send(
          new SendMessageCommand({ QueueUrl: eventsDlq, MessageBody: JSON.stringify(record) }),
        );
      });
      log({
        level: result.invocation === "succeeded" ? "info" : "warn",
        msg: "event",
        id: envelope.id,
        ...result,
      });
      return reply(200, { id: envelope.id, ...result });
    });
    await new Promise<void>((resolve) => control.listen(0, "127.0.0.1", resolve));
    cleanups.push(async () => {
      control.closeAllConnections();
      await new Promise<void>((resolve) => control.close(() => resolve()));
    });
    const controlUrl = `http://127.0.0.1:${(control.address() as AddressInfo).port}`;

    // One poller per node status queue, as one Lambda event source mapping per queue: each record carries
    // its queue's real ARN in eventSourceARN.
    consumeStatus = (queue) => {
      for (let i = 0; i < (options.statusPollers ?? 1); i++) {
        const poller: Poller = startStatusPoller({
          sqs: clients.sqs,
          queueUrl: queue.url,
          queueArn: queue.arn,
          region: config.region,
          handler: statusFn.handler,
          log,
        });
        cleanups.push(() => poller.stop());
      }
    };
    for (const queue of unconsumed.splice(0)) consumeStatus(queue);

    let sweeping: Promise<void> | undefined;
    const sweep = () => {
      if (sweeping) return;
      const now = new Date();
      const event: ScheduledEvent = {
        version: "0",
        id: randomUUID(),
        "detail-type": "Scheduled Event",
        source: "aws.events",
        account: "000000000000",
        time: now.toISOString().replace(/\.\d{3}Z$/, "Z"),
        region: config.region,
        resources: [`arn:aws:events:${config.region}:000000000000:rule/${PREFIX}-reconcile`],
        detail: {},
      };
      sweeping = reconcileFn
        .handler(event, lambdaContext(`${PREFIX}-reconcile`, 120_000))
        .then(
          () => undefined,
          (error: unknown) => log({ level: "warn", msg: "reconcile sweep failed", error: String(error) }),
        )
        .finally(() => {
          sweeping = undefined;
        });
    };
    const timer = setInterval(sweep, options.reconcileSeconds * 1000);
    cleanups.push(async () => {
      clearInterval(timer);
      await sweeping;
    });

    mark("functions+servers");
    if (agent) {
      await Promise.race([
        agent.started,
        new Promise((_, reject) =>
          setTimeout(() => reject(new Error("the agent did not start within 60 s")), 60_000),
        ),
      ]);
    }

    mark("agent");
    // Seed the demo router through the real API, as an operator would.
    const adminToken = await signToken(key, {
      projectId: "operator",
      roles: ["admin"],
      ttlSeconds: 12 * 3600,
    });
    const demoToken = await signToken(key, { projectId: DEMO_PROJECT, ttlSeconds: 12 * 3600 });
    const seeded = await fetch(`${gateway.url}/v1/routers/${options.demoRouterId}`, {
      method: "PUT",
      headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
      body: JSON.stringify({ project_id: DEMO_PROJECT, host: LOCAL_NODE }),
    });
    if (!seeded.ok)
      throw new Error(`seeding the demo router failed: ${seeded.status} ${await seeded.text()}`);

    const info: StackInfo = {
      pid: process.pid,
      apiUrl: gateway.url,
      controlUrl,
      controlToken,
      agentPid: agent?.pid,
      backend,
      demoRouterId: options.demoRouterId,
      awsEndpoint: emu.endpoint,
      queues: { node: node.queue, nodeDlq: node.dlq, status: status.url, statusDlq: status.dlqUrl },
      nodes,
      signing: { keyId: snapshotKey.keyId, verifyKeysDir: verifyDir },
    };
    writeInfo = () => writeFile(infoFile, `${JSON.stringify(info, null, 2)}\n`, { mode: 0o600 });
    await writeInfo();
    cleanups.push(() => rm(infoFile, { force: true }));
    // The first sweep right away, then every reconcileSeconds.
    sweep();

    return {
      info,
      readyMs: Math.round(performance.now() - t0),
      phases,
      demoToken,
      adminToken,
      stop: async () => {
        stopped = true;
        await stopAll();
      },
    };
  } catch (error) {
    await stopAll();
    throw error;
  }
}
