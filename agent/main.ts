/**
 * Wires one agent: state, probe, core, poller, drift timer, metrics, resync request. Every dependency can be
 * injected (tests run it in-process against fauxqs with the in-memory iptables model).
 */
import type { SQSClient } from "@aws-sdk/client-sqs";
import type { Logger } from "pino";
import type { HelperCatalog } from "../lib/catalog.ts";
import type { Limits } from "../lib/config.ts";
import type { StatusSink } from "../lib/ports.ts";
import { buildSchemas } from "../lib/schemas/index.ts";
import type { VerifyKeys } from "../lib/signing.ts";
import type { FirewallBackend } from "./backend.ts";
import { AgentCore } from "./core.ts";
import { AgentMetrics } from "./metrics.ts";
import { QueuePoller } from "./poller.ts";
import { StateStore } from "./state.ts";
import { AGENT_VERSION } from "./version.ts";

export interface AgentDeps {
  readonly node: string;
  readonly sqs: SQSClient;
  readonly queueUrl: string;
  readonly dlqUrl?: string | undefined;
  /** Undefined: reports are only logged. */
  readonly status?: StatusSink | undefined;
  /** Built on `metrics` (the backend counts helpers the kernel lacks), see agent/backends.ts. */
  readonly backend: (metrics: AgentMetrics) => FirewallBackend;
  /** Backends that may have written to this node's namespaces before (their rules are removed). */
  readonly formerBackends?: (metrics: AgentMetrics) => readonly FirewallBackend[];
  /** The dispatcher's public keys (agent/verify-keys.ts): only snapshots signed by one are applied. */
  readonly verifyKeys: VerifyKeys;
  /** The kernel catalog: operator narrowing is the API's job, never the agent's (see agent/cli.ts). */
  readonly catalog: HelperCatalog;
  readonly limits: Limits;
  readonly logger: Logger;
  readonly stateDir: string;
  readonly namespacePattern: string;
  readonly createNamespaces?: boolean;
  /** Probe the kernel's helpers in a throwaway namespace at start (real backend). */
  readonly probe?: boolean;
  readonly driftIntervalSeconds: number;
  /** undefined: no metrics endpoint; 0: any free port. */
  readonly metricsPort?: number | undefined;
  readonly waitSeconds?: number;
  /** /healthz answers 503 once the last successful poll is older than this (default 3 long polls, >= 30 s). */
  readonly healthzStaleSeconds?: number;
  readonly visibilitySeconds?: number;
  readonly backoffBaseSeconds?: number;
  readonly applyConcurrency?: number;
}

export interface RunningAgent {
  readonly core: AgentCore;
  readonly metrics: AgentMetrics;
  readonly metricsPort: number | undefined;
  /** Finishes the apply in flight, stops polling and the drift timer. */
  stop(): Promise<void>;
}

/** Three long polls that never came back is stuck; a short poll (wait 0) still gets 30 s. */
export function defaultHealthzStaleSeconds(waitSeconds: number): number {
  return Math.max(30, 3 * waitSeconds);
}

export async function startAgent(deps: AgentDeps): Promise<RunningAgent> {
  const { logger } = deps;
  const metrics = new AgentMetrics();
  const state = await StateStore.load(deps.stateDir, deps.node, (error) =>
    logger.error({ err: error }, "state file unreadable; starting empty (snapshots are level-triggered)"),
  );
  const backend = deps.backend(metrics);
  if (deps.probe) {
    await backend.probe();
    const { ipv4, ipv6 } = backend.unavailable;
    logger.info(
      { backend: backend.name, lacking: { ipv4: [...ipv4], ipv6: [...ipv6] } },
      "kernel helper probe done",
    );
  }
  const status: StatusSink = deps.status ?? {
    send: async (message) => logger.info({ status: message }, "status report (no status queue configured)"),
  };
  const core = new AgentCore({
    node: deps.node,
    backend,
    formerBackends: deps.formerBackends?.(metrics) ?? [],
    state,
    status,
    metrics,
    logger,
    namespacePattern: deps.namespacePattern,
    createNamespaces: deps.createNamespaces ?? false,
  });
  const waitSeconds = deps.waitSeconds ?? 20;
  const poller = new QueuePoller({
    sqs: deps.sqs,
    queueUrl: deps.queueUrl,
    dlqUrl: deps.dlqUrl,
    core,
    schema: buildSchemas(deps.limits, deps.catalog).routerSync,
    verifyKeys: deps.verifyKeys,
    metrics,
    logger,
    waitSeconds,
    visibilitySeconds: deps.visibilitySeconds ?? 30,
    backoffBaseSeconds: deps.backoffBaseSeconds ?? 5,
    applyConcurrency: deps.applyConcurrency ?? 4,
  });
  const staleSeconds = deps.healthzStaleSeconds ?? defaultHealthzStaleSeconds(waitSeconds);
  const health = () => {
    const polledAt = poller.lastPolledAt();
    const age = polledAt === undefined ? undefined : (Date.now() - polledAt) / 1000;
    return {
      healthy: age !== undefined && age <= staleSeconds,
      detail: {
        last_poll_age_seconds: age ?? null,
        stale_after_seconds: staleSeconds,
        version: AGENT_VERSION,
      },
    };
  };
  const served = deps.metricsPort === undefined ? undefined : await metrics.serve(deps.metricsPort, health);
  if (served) logger.info({ port: served.port }, "metrics listening on 127.0.0.1");
  await poller.resolveDlq().catch((error: unknown) => logger.warn({ err: error }, "DLQ lookup failed"));

  try {
    await status.send({ v: 1, kind: "resync-request", host: deps.node });
  } catch (error) {
    logger.warn({ err: error }, "resync request failed; the reconciler will still catch up");
  }
  // Repair first what may have drifted while the agent was down, then poll.
  await core.checkDrift();
  poller.start();
  // A periodic pass spreads its namespaces over half the interval: never a burst, always done before the next.
  const stopping = new AbortController();
  const drift = setInterval(() => {
    core
      .checkDrift({ spreadMs: (deps.driftIntervalSeconds * 1000) / 2, signal: stopping.signal })
      .catch((error: unknown) => logger.error({ err: error }, "drift check failed"));
  }, deps.driftIntervalSeconds * 1000);
  logger.info(
    {
      node: deps.node,
      version: AGENT_VERSION,
      queue_url: deps.queueUrl,
      verify_keys: [...deps.verifyKeys.keys()],
    },
    "agent started",
  );

  return {
    core,
    metrics,
    metricsPort: served?.port,
    async stop() {
      clearInterval(drift);
      stopping.abort();
      await poller.stop();
      await core.idle();
      await state.close();
      backend.close();
      await served?.close();
      logger.info("agent stopped");
    },
  };
}
