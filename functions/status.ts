/**
 * SQS consumer of the agents' status queues (one per node): `applied` reports record what a host's kernel
 * holds, `resync-request` re-sends every snapshot of the reporting host. The reporting host is the queue a
 * record came in on (its eventSourceARN), never a field of the body. Partial batch failures: only the
 * records that hit a transient fault are returned for retry; invalid or refused records are logged, counted
 * and dropped here (retrying them can never make them valid).
 */

import { BatchProcessor, EventType, processPartialResponse } from "@aws-lambda-powertools/batch";
import type { Logger } from "@aws-lambda-powertools/logger";
import middy from "@middy/core";
import type { Context, SQSBatchResponse, SQSEvent, SQSRecord } from "aws-lambda";
import { hostFromQueueArn } from "../lib/aws/status-source.ts";
import { loadConfig } from "../lib/config.ts";
import {
  type ReportDeps,
  type ReportOutcome,
  recordAppliedReport,
  resyncHost,
} from "../lib/domain/reports.ts";
import { correlationIdFrom } from "../lib/http/api-event.ts";
import { METRIC, type MetricCounter } from "../lib/metrics.ts";
import {
  correlate,
  lazyHandler,
  type Observability,
  observability,
  observed,
  productionPorts,
} from "../lib/production.ts";
import { buildSchemas, type Schemas, toFieldIssues } from "../lib/schemas/index.ts";

export interface StatusDeps extends ReportDeps {
  readonly schemas: Schemas;
  readonly logger: Logger;
  /** Each node's status queue name, `{node}` for the host (lib/config.ts). */
  readonly statusQueueNameTemplate: string;
  /** ContentMismatches, UnboundReports, InvalidStatusMessages (CloudWatch EMF in production). */
  readonly metrics: MetricCounter;
  /** Lambda context in the logs, one metrics flush per batch; absent in tests. */
  readonly observability?: Observability;
}

/** Outcomes that mean someone reported what they could not vouch for, or a kernel holds something else. */
const ALARMING: Partial<Record<ReportOutcome, string>> = {
  "content-mismatch": METRIC.contentMismatches,
  "unbound-host": METRIC.unboundReports,
  "future-revision": METRIC.unboundReports,
};

export function makeHandler(deps: StatusDeps) {
  const processor = new BatchProcessor(EventType.SQS);

  const handleRecord = async (record: SQSRecord): Promise<void> => {
    // Reports carry no correlation id: each record's lines are tied by its message id (a resync's by the id
    // its snapshots carry).
    correlate(
      deps.observability,
      correlationIdFrom(`status-${record.messageId}`, () => "status"),
    );
    const host = hostFromQueueArn(deps.statusQueueNameTemplate, record.eventSourceARN);
    if (host === undefined) {
      deps.metrics.count(METRIC.unboundReports);
      deps.logger.warn("status record from a queue that names no node dropped", {
        messageId: record.messageId,
        eventSourceARN: record.eventSourceARN,
      });
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse(record.body);
    } catch {
      body = undefined;
    }
    const parsed = deps.schemas.statusMessage.safeParse(body);
    if (!parsed.success) {
      deps.metrics.count(METRIC.invalidStatusMessages);
      deps.logger.warn("invalid status message dropped", {
        messageId: record.messageId,
        host,
        issues: body === undefined ? [{ path: "", message: "not JSON" }] : toFieldIssues(parsed.error),
      });
      return;
    }
    const message = parsed.data;
    if (message.kind === "applied") {
      const outcome = await recordAppliedReport(deps, host, message);
      const metric = ALARMING[outcome];
      if (metric) deps.metrics.count(metric);
      const log = metric ? "warn" : "debug";
      deps.logger[log]("applied report", {
        messageId: record.messageId,
        routerId: message.router_id,
        revision: message.revision,
        host,
        ...(message.host !== undefined && message.host !== host ? { claimedHost: message.host } : {}),
        outcome,
        errors: message.errors.length,
      });
      return;
    }
    if (message.host !== undefined && message.host !== host) {
      deps.metrics.count(METRIC.unboundReports);
      deps.logger.warn("resync request naming another host dropped", {
        messageId: record.messageId,
        host,
        claimedHost: message.host,
      });
      return;
    }
    const correlationId = correlationIdFrom(`resync-${record.messageId}`, () => "resync");
    correlate(deps.observability, correlationId);
    const sent = await resyncHost(deps, host, correlationId);
    deps.logger.info("resync request served", { messageId: record.messageId, host, sent });
  };

  return middy(
    async (event: SQSEvent, context: Context): Promise<SQSBatchResponse> =>
      processPartialResponse(event, handleRecord, processor, { context }),
  ).use(observed(deps.observability));
}

/** Production wiring, built on first invocation (nothing reads the environment at import time). */
export const handler = lazyHandler(() => {
  const config = loadConfig();
  const { store, queue, clock } = productionPorts(config);
  const observe = observability("cth-status", "status", config);
  return makeHandler({
    store,
    queue,
    clock,
    schemas: buildSchemas(config.limits, config.catalog),
    logger: observe.logger,
    statusQueueNameTemplate: config.statusQueueNameTemplate,
    metrics: observe.metrics,
    observability: observe,
  });
});
