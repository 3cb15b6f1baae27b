/**
 * Scheduled sweep (EventBridge schedule): reads the sparse out-of-sync index (what it costs follows how many
 * routers are out of sync, not the table) and re-sends the snapshot of every replica that is behind or holds
 * other content, and every empty snapshot a host has still to confirm. Level-triggered snapshots make a
 * re-send harmless, so this heals lost messages without knowing which one was lost.
 */

import type { Logger } from "@aws-lambda-powertools/logger";
import middy from "@middy/core";
import type { Context, ScheduledEvent } from "aws-lambda";
import { loadConfig } from "../lib/config.ts";
import { type ReconcileSummary, type ReportDeps, reconcile } from "../lib/domain/reports.ts";
import { ServiceUnavailableError } from "../lib/errors.ts";
import { correlationIdFrom } from "../lib/http/api-event.ts";
import {
  correlate,
  lazyHandler,
  type Observability,
  observability,
  observed,
  productionPorts,
} from "../lib/production.ts";

export interface ReconcileDeps extends ReportDeps {
  readonly logger: Logger;
  /** Lambda context and correlation id in the logs; absent in tests. */
  readonly observability?: Observability;
}

export function makeHandler(deps: ReconcileDeps) {
  return middy(async (event: ScheduledEvent, context: Context): Promise<ReconcileSummary> => {
    // A manual invoke may carry any id: the agents accept only schema-valid correlation ids.
    const correlationId = correlationIdFrom(
      `reconcile-${event?.id ?? context.awsRequestId}`,
      () => "reconcile",
    );
    correlate(deps.observability, correlationId);
    const summary = await reconcile(deps, { correlationId });
    deps.logger.info("reconcile sweep", { ...summary });
    // Failing the invocation makes the failure visible to the function-errors alarm.
    if (summary.failedHosts.length > 0) {
      throw new ServiceUnavailableError(`could not re-send to ${summary.failedHosts.length} host(s)`);
    }
    return summary;
  }).use(observed(deps.observability));
}

export const handler = lazyHandler(() => {
  const config = loadConfig();
  const { store, queue, clock } = productionPorts(config);
  const observe = observability("cth-reconcile", "reconcile", config);
  return makeHandler({
    store,
    queue,
    clock,
    logger: observe.logger,
    observability: observe,
  });
});
