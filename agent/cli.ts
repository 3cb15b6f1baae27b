/**
 * `npm run agent -- --node NAME --queue-url URL [...]`: every flag also comes from an environment variable
 * (flag wins). Production defaults for the agent are built here, in one place.
 */
import { realpathSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { SQSClient } from "@aws-sdk/client-sqs";
import { pino } from "pino";
import { SqsStatusSink } from "../lib/aws/sqs-status-sink.ts";
import { type Family, HelperCatalog } from "../lib/catalog.ts";
import { loadLimits } from "../lib/config.ts";
import { namespaceKind, primitives } from "../lib/schemas/index.ts";
import {
  booleanSetting,
  choiceSetting,
  integerSetting,
  portSetting,
  raw,
  settingLabel,
} from "../lib/settings.ts";
import type { VerifyKeys } from "../lib/signing.ts";
import { assertNamespaceName, BACKEND_NAMES } from "./backend.ts";
import { backendFactories } from "./backends.ts";
import { DEFAULT_NAMESPACE_PATTERN, renderNamespace } from "./core.ts";
import { defaultHealthzStaleSeconds, type RunningAgent, startAgent } from "./main.ts";
import { AgentSetupError } from "./private-path.ts";
import { loadVerifyKeys } from "./verify-keys.ts";
import { AGENT_VERSION } from "./version.ts";

interface FlagSpec {
  readonly env: string;
  readonly type: "string" | "boolean";
  readonly default?: string;
  readonly help: string;
}

const FLAGS = {
  node: { env: "CTH_AGENT_NODE", type: "string", help: "this network node's name (required)" },
  "queue-url": {
    env: "CTH_AGENT_QUEUE_URL",
    type: "string",
    help: "the node's FIFO command queue (required)",
  },
  "status-queue-url": {
    env: "CTH_AGENT_STATUS_QUEUE_URL",
    type: "string",
    help: "status queue for applied reports and resync requests (unset: reports are only logged)",
  },
  "dlq-url": {
    env: "CTH_AGENT_DLQ_URL",
    type: "string",
    help: "DLQ for invalid messages (default: from the queue's RedrivePolicy)",
  },
  "verify-keys": {
    env: "CTH_AGENT_VERIFY_KEYS",
    type: "string",
    help: "directory of the dispatcher's <key-id>.pem public keys; only snapshots they signed apply (required)",
  },
  endpoint: { env: "CTH_AGENT_ENDPOINT", type: "string", help: "SQS endpoint override (emulators)" },
  region: {
    env: "CTH_AGENT_REGION",
    type: "string",
    default: "us-east-1",
    help: "AWS region (else AWS_REGION)",
  },
  "state-dir": {
    env: "CTH_AGENT_STATE_DIR",
    type: "string",
    default: "/var/lib/cth-agent",
    help: "where the last applied revision per router is kept",
  },
  "metrics-port": {
    env: "CTH_AGENT_METRICS_PORT",
    type: "string",
    default: "9469",
    help: "Prometheus endpoint on 127.0.0.1 (0: any free port; 'off': none)",
  },
  "drift-interval": {
    env: "CTH_AGENT_DRIFT_INTERVAL",
    type: "string",
    default: "60",
    help: "seconds between drift checks",
  },
  "namespace-pattern": {
    env: "CTH_AGENT_NAMESPACE_PATTERN",
    type: "string",
    default: DEFAULT_NAMESPACE_PATTERN,
    help:
      "router namespace name: {router_id} (required) is the router's UUID, {namespace} its kind (qrouter, " +
      "or snat for a DVR router); without {namespace} only qrouter routers apply; a rendered name has at most 64 characters",
  },
  "create-namespaces": {
    env: "CTH_AGENT_CREATE_NAMESPACES",
    type: "boolean",
    help: "create a missing router namespace (local stack); remove it again on an empty snapshot",
  },
  families: {
    env: "CTH_AGENT_FAMILIES",
    type: "string",
    default: "ipv4,ipv6",
    help: "address families to manage (ipv4 only on hosts without IPv6 netfilter)",
  },
  backend: {
    env: "CTH_AGENT_BACKEND",
    type: "string",
    default: "iptables",
    help:
      "firewall backend: iptables, nftables (native, one inet table per namespace) or dry-run (the " +
      "iptables model; writes rendered input under the state dir)",
  },
  spawner: {
    env: "CTH_AGENT_SPAWNER",
    type: "string",
    default: "helper",
    help: "who spawns iptables: helper (a small node process, cheaper forks) or direct (the agent itself)",
  },
  "no-probe": {
    env: "CTH_AGENT_NO_PROBE",
    type: "boolean",
    help: "skip the start-up kernel helper probe (restore errors are still classified)",
  },
  "visibility-timeout": {
    env: "CTH_AGENT_VISIBILITY_TIMEOUT",
    type: "string",
    default: "30",
    help: "seconds a received batch stays invisible; renewed while applying, so a crash frees it this fast",
  },
  "wait-seconds": { env: "CTH_AGENT_WAIT_SECONDS", type: "string", default: "20", help: "long poll seconds" },
  "retry-base": {
    env: "CTH_AGENT_RETRY_BASE",
    type: "string",
    default: "5",
    help: "seconds before retrying a snapshot that could not be applied (doubles per attempt, max 300)",
  },
  "apply-concurrency": {
    env: "CTH_AGENT_APPLY_CONCURRENCY",
    type: "string",
    default: "4",
    help: "routers applied at once (each router's own snapshots are always applied one at a time)",
  },
  "healthz-stale-seconds": {
    env: "CTH_AGENT_HEALTHZ_STALE_SECONDS",
    type: "string",
    help:
      "/healthz (beside /metrics) answers 503 once the queue's last successful poll is older than this " +
      "(default: 3 x --wait-seconds, at least 30)",
  },
  "log-level": { env: "LOG_LEVEL", type: "string", default: "info", help: "pino log level" },
  version: { env: "", type: "boolean", help: "print the version and exit" },
  help: { env: "", type: "boolean", help: "this text" },
} as const satisfies Record<string, FlagSpec>;

type FlagName = keyof typeof FLAGS;

/** Variables the agent reads besides its flags' own (every one is listed by --help). */
export const OTHER_VARIABLES: Readonly<Record<string, string>> = {
  CTH_AWS_ENDPOINT: "SQS endpoint when --endpoint and CTH_AGENT_ENDPOINT are unset (the local stack's)",
  AWS_REGION: "region when --region and CTH_AGENT_REGION are unset",
  AWS_DEFAULT_REGION: "region when AWS_REGION is unset too",
  CTH_MAX_BODY_BYTES: "limit shared with the functions (default 65536)",
  CTH_MAX_HELPERS_PER_NOTIFICATION: "limit shared with the functions (default 64)",
  CTH_MAX_HELPERS_PER_ROUTER: "largest snapshot the agent accepts (default 128)",
  CTH_ALLOWED_HELPERS: "read only to log that the agent ignores it (narrowing is the API's job)",
};

export function usage(): string {
  const lines = ["Usage: npm run agent -- --node NAME --queue-url URL [options]", ""];
  for (const [name, spec] of Object.entries(FLAGS) as [FlagName, FlagSpec][]) {
    const flag = spec.type === "string" ? `--${name} VALUE` : `--${name}`;
    const env = spec.env ? ` [env ${spec.env}]` : "";
    const def = spec.default !== undefined ? ` (default: ${spec.default})` : "";
    lines.push(`  ${flag.padEnd(30)} ${spec.help}${def}${env}`);
  }
  lines.push("", "Also read from the environment (AWS credentials come from the SDK's usual chain):");
  const width = Math.max(30, ...Object.keys(OTHER_VARIABLES).map((name) => name.length));
  for (const [name, help] of Object.entries(OTHER_VARIABLES)) lines.push(`  ${name.padEnd(width)} ${help}`);
  lines.push("", "Booleans: 1, true, yes, on / 0, false, no, off; anything else is an error.");
  return lines.join("\n");
}

export type AgentCliOptions = ReturnType<typeof resolveOptions>;

export function resolveOptions(argv: readonly string[], env: NodeJS.ProcessEnv) {
  const { values } = parseArgs({
    args: [...argv],
    options: Object.fromEntries(
      (Object.entries(FLAGS) as [FlagName, FlagSpec][]).map(([name, spec]) => [name, { type: spec.type }]),
    ),
    strict: true,
    allowPositionals: false,
  });
  /** The flag's value, else its variable's (empty is unset), else its default. */
  const given = (name: FlagName): string | undefined => {
    const value = values[name];
    if (typeof value === "string") return value;
    return FLAGS[name].env ? raw(env, FLAGS[name].env) : undefined;
  };
  const str = (name: FlagName): string | undefined => given(name) ?? (FLAGS[name] as FlagSpec).default;
  const label = (name: FlagName) => settingLabel(name, FLAGS[name].env);
  const bool = (name: FlagName): boolean =>
    values[name] === true || booleanSetting(raw(env, FLAGS[name].env), label(name), false);
  const num = (name: FlagName, min: number): number =>
    integerSetting(str(name), label(name), Number.NaN, min);
  if (values.help === true) return { help: true as const };
  if (values.version === true) return { help: false as const, version: true as const };

  const node = str("node");
  const queueUrl = str("queue-url");
  if (!node) throw new Error("--node (or CTH_AGENT_NODE) is required");
  if (!queueUrl) throw new Error("--queue-url (or CTH_AGENT_QUEUE_URL) is required");
  const verifyKeysDir = str("verify-keys");
  if (!verifyKeysDir) {
    throw new Error("--verify-keys (or CTH_AGENT_VERIFY_KEYS) is required: the dispatcher's public keys");
  }
  primitives.host.parse(node);
  const namespacePattern = str("namespace-pattern")!;
  if (!namespacePattern.includes("{router_id}"))
    throw new Error("--namespace-pattern must contain {router_id}");
  for (const kind of namespaceKind.options) {
    const sample = renderNamespace(namespacePattern, "00000000-0000-4000-8000-000000000000", kind);
    try {
      assertNamespaceName(sample);
    } catch {
      throw new Error(
        `--namespace-pattern "${namespacePattern}" gives the unsafe or too long name "${sample}" for a ` +
          `${kind} router: a namespace name is 1 to 64 of A-Z a-z 0-9 _ . -`,
      );
    }
  }
  const backend = choiceSetting(str("backend"), label("backend"), BACKEND_NAMES, "iptables");
  const spawner = choiceSetting(str("spawner"), label("spawner"), ["helper", "direct"] as const, "helper");
  const families = [
    ...new Set(
      str("families")!
        .split(",")
        .map((f) => f.trim()),
    ),
  ];
  if (families.length === 0 || !families.every((f): f is Family => f === "ipv4" || f === "ipv6")) {
    throw new Error("--families must be ipv4, ipv6 or ipv4,ipv6");
  }
  const waitSeconds = num("wait-seconds", 0);
  return {
    help: false as const,
    version: false as const,
    node,
    queueUrl,
    verifyKeysDir,
    statusQueueUrl: str("status-queue-url"),
    dlqUrl: str("dlq-url"),
    endpoint: str("endpoint") ?? raw(env, "CTH_AWS_ENDPOINT"),
    region: given("region") ?? raw(env, "AWS_REGION") ?? raw(env, "AWS_DEFAULT_REGION") ?? "us-east-1",
    stateDir: str("state-dir")!,
    metricsPort: portSetting(str("metrics-port"), label("metrics-port"), undefined),
    driftIntervalSeconds: num("drift-interval", 1),
    namespacePattern,
    createNamespaces: bool("create-namespaces"),
    families: families as Family[],
    backend,
    spawner,
    probe: !bool("no-probe") && backend !== "dry-run",
    waitSeconds,
    healthzStaleSeconds: integerSetting(
      str("healthz-stale-seconds"),
      label("healthz-stale-seconds"),
      defaultHealthzStaleSeconds(waitSeconds),
      1,
    ),
    visibilitySeconds: num("visibility-timeout", 2),
    retryBaseSeconds: num("retry-base", 1),
    applyConcurrency: num("apply-concurrency", 1),
    logLevel: str("log-level")!,
  };
}

async function main(): Promise<void> {
  let options: AgentCliOptions;
  try {
    options = resolveOptions(process.argv.slice(2), process.env);
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n\n${usage()}\n`);
    process.exit(2);
  }
  if (options.help) {
    process.stdout.write(`${usage()}\n`);
    return;
  }
  if (options.version) {
    process.stdout.write(`${AGENT_VERSION}\n`);
    return;
  }
  let verifyKeys: VerifyKeys;
  try {
    verifyKeys = loadVerifyKeys(options.verifyKeysDir);
  } catch (error) {
    process.stderr.write(
      `agent refuses to start: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    process.exit(2);
  }
  const logger = pino({ level: options.logLevel, base: { node: options.node } });
  if (process.env.CTH_ALLOWED_HELPERS) {
    // Narrowing is the API's job: an agent that applied it could never change (or empty) a router that
    // still holds a helper a later narrowing forbids.
    logger.info("CTH_ALLOWED_HELPERS is ignored by the agent: it validates against the kernel catalog");
  }
  const sqs = new SQSClient({
    region: options.region,
    // Emulators hand out queue URLs of their own; an explicit endpoint must win over them.
    ...(options.endpoint ? { endpoint: options.endpoint, useQueueUrlAsEndpoint: false } : {}),
  });
  const catalog = new HelperCatalog();
  const { backend, formerBackends } = backendFactories({
    name: options.backend,
    catalog,
    logger,
    families: options.families,
    stateDir: options.stateDir,
    spawner: options.spawner,
  });
  // Handlers go in before start-up (probe, resync, first drift pass), so an early signal is a clean stop too.
  let agent: RunningAgent | undefined;
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "stopping after the apply in flight");
    if (!agent) return;
    agent.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, "stop failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  agent = await startAgent({
    node: options.node,
    sqs,
    queueUrl: options.queueUrl,
    dlqUrl: options.dlqUrl,
    // 10 ms of gathering: a node applying many routers at once sends its reports ten to a request.
    status: options.statusQueueUrl
      ? new SqsStatusSink(sqs, options.statusQueueUrl, { windowMs: 10 })
      : undefined,
    backend,
    formerBackends,
    verifyKeys,
    catalog,
    limits: loadLimits(process.env),
    logger,
    stateDir: options.stateDir,
    namespacePattern: options.namespacePattern,
    createNamespaces: options.createNamespaces,
    probe: options.probe,
    driftIntervalSeconds: options.driftIntervalSeconds,
    metricsPort: options.metricsPort,
    waitSeconds: options.waitSeconds,
    healthzStaleSeconds: options.healthzStaleSeconds,
    visibilitySeconds: options.visibilitySeconds,
    backoffBaseSeconds: options.retryBaseSeconds,
    applyConcurrency: options.applyConcurrency,
  });
  if (stopping) {
    await agent.stop();
    process.exit(0);
  }
}

/** Run only as the entry point (tests import this module); symlinked installs resolve to the same file. */
function isEntryPoint(): boolean {
  try {
    return (
      process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href
    );
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  main().catch((error: unknown) => {
    // The node's own files refused (state directory): a configuration error, like a bad flag.
    if (error instanceof AgentSetupError) {
      process.stderr.write(`agent refuses to start: ${error.message}\n`);
      process.exit(2);
    }
    process.stderr.write(`agent failed to start: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  });
}
