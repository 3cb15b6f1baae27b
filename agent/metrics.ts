/**
 * Prometheus metrics on their own registry (no global state), served on 127.0.0.1 only, with /healthz beside
 * them: 200 while the queue was polled recently, 503 otherwise (stuck or never polled), for a watchdog.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { AGENT_VERSION } from "./version.ts";

/** What /healthz answers: `healthy` false is a 503, `detail` is the body either way. */
export type HealthCheck = () => {
  readonly healthy: boolean;
  readonly detail: Readonly<Record<string, unknown>>;
};

export class AgentMetrics {
  readonly registry = new Registry();
  /** result: changed | unchanged (read back equal, nothing written). */
  readonly applies = new Counter({
    name: "cth_agent_applies_total",
    help: "Snapshots applied and verified",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });
  readonly failures = new Counter({
    name: "cth_agent_apply_failures_total",
    help: "Applies that failed (message kept for retry)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly applySeconds = new Histogram({
    name: "cth_agent_apply_seconds",
    help: "Per router: namespace check through both families restored, read back, verified and recorded",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly lastSuccess = new Gauge({
    name: "cth_agent_last_success_timestamp_seconds",
    help: "Unix time of the last verified apply",
    registers: [this.registry],
  });
  /**
   * outcome: stale | duplicate | unauthenticated | invalid | superseded | namespace_unsupported (a snat
   * snapshot and a --namespace-pattern without {namespace}: refused, reported, not retried).
   */
  readonly messages = new Counter({
    name: "cth_agent_messages_total",
    help: "Queue messages not applied, by reason",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly namespaceMissing = new Counter({
    name: "cth_agent_namespace_missing_total",
    help: "Snapshots deferred because the router namespace does not exist",
    registers: [this.registry],
  });
  readonly driftRepairs = new Counter({
    name: "cth_agent_drift_repairs_total",
    help: "Owned chains found changed out of band and re-applied",
    registers: [this.registry],
  });
  readonly helperUnavailable = new Counter({
    name: "cth_agent_helper_unavailable_total",
    help: "Helpers left out because the running kernel lacks them",
    labelNames: ["family", "helper"] as const,
    registers: [this.registry],
  });

  constructor(version: string = AGENT_VERSION) {
    new Gauge({
      name: "cth_agent_build_info",
      help: "Always 1; the running agent's version is the label",
      labelNames: ["version"] as const,
      registers: [this.registry],
    }).set({ version }, 1);
  }

  /**
   * Serves /metrics (with the process_* and nodejs_* defaults, collected from here on: only a served
   * registry pays for them) and /healthz on 127.0.0.1:port (0 picks a free port).
   */
  async serve(
    port: number,
    health: HealthCheck = () => ({ healthy: true, detail: {} }),
  ): Promise<{ port: number; close: () => Promise<void> }> {
    collectDefaultMetrics({ register: this.registry });
    const server: Server = createServer((req, res) => {
      if (req.method === "GET" && req.url === "/healthz") {
        const { healthy, detail } = health();
        res
          .writeHead(healthy ? 200 : 503, { "content-type": "application/json", "cache-control": "no-store" })
          .end(JSON.stringify({ status: healthy ? "ok" : "stale", ...detail }));
        return;
      }
      if (req.method !== "GET" || req.url !== "/metrics") {
        res.writeHead(404).end();
        return;
      }
      this.registry.metrics().then(
        (body) => res.writeHead(200, { "content-type": this.registry.contentType }).end(body),
        () => res.writeHead(500).end(),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve());
    });
    return {
      port: (server.address() as AddressInfo).port,
      close: () => new Promise<void>((resolve) => server.close(() => resolve())),
    };
  }
}
