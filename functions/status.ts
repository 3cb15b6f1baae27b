/**
 * SQS consumer of the agents' status queue: `applied` reports raise a router's applied revision,
 * `resync-request` re-sends every snapshot of the reporting host. Partial batch failures: only the
 * records that hit a transient fault are returned for retry; invalid records are logged, counted and
 * dropped here (retrying them can never make them valid).
 */

import { BatchProcessor, EventType, processPartialResponse } from "@aws-lambda-powertools/batch";
import type { Logger } from "@aws-lambda-powertools/logger";
import middy from "@middy/core";
import type { Context, SQSBatchResponse, SQSEvent, SQSRecord } from "aws-lambda";
import { loadConfig } from "../lib/config.ts";
import { type ReportDeps, recordAppliedReport, resyncHost } from "../lib/domain/reports.ts";
import { functionLogger, lazyHandler, productionPorts } from "../lib/production.ts";
import { buildSchemas, type Schemas, toFieldIssues } from "../lib/schemas/index.ts";

export interface StatusDeps extends ReportDeps {
  readonly schemas: Schemas;
  readonly logger: Logger;
  /** Counts records that could never be valid; injectable so tests can read it. */
  readonly onInvalid?: (messageId: string) => void;
}

export function makeHandler(deps: StatusDeps) {
  const processor = new BatchProcessor(EventType.SQS);

  const handleRecord = async (record: SQSRecord): Promise<void> => {
    let body: unknown;
    try {
      body = JSON.parse(record.body);
    } catch {
      body = undefined;
    }
    const parsed = deps.schemas.statusMessage.safeParse(body);
    if (!parsed.success) {
      deps.onInvalid?.(record.messageId);
      deps.logger.warn("invalid status message dropped", {
        messageId: record.messageId,
        metric: "InvalidStatusMessages",
        issues: body === undefined ? [{ path: "", message: "not JSON" }] : toFieldIssues(parsed.error),
      });
      return;
    }
    const message = parsed.data;
    if (message.kind === "applied") {
      const outcome = await recordAppliedReport(deps, message);
      const log = outcome === "recorded" || outcome === "older" ? "debug" : "warn";
      deps.logger[log]("applied report", {
        messageId: record.messageId,
        routerId: message.router_id,
        revision: message.revision,
        host: message.host,
        outcome,
        errors: message.errors.length,
      });
      return;
    }
    const sent = await resyncHost(deps, message.host, `resync-${record.messageId}`);
    deps.logger.info("resync request served", { messageId: record.messageId, host: message.host, sent });
  };

  return middy(
    async (event: SQSEvent, context: Context): Promise<SQSBatchResponse> =>
      processPartialResponse(event, handleRecord, processor, { context }),
  );
}

/** Production wiring, built on first invocation (nothing reads the environment at import time). */
export const handler = lazyHandler(() => {
  const config = loadConfig();
  const { store, queue, clock } = productionPorts(config);
  return makeHandler({
    store,
    queue,
    clock,
    schemas: buildSchemas(config.limits, config.catalog),
    logger: functionLogger("cth-status", config),
  });
});
