/**
 * Counters as CloudWatch Embedded Metric Format lines written by Powertools Metrics (namespace
 * ConntrackHelpers, dimension Function plus any given): the log line is the metric, so alarms need no
 * PutMetricData permission and no extra call on the hot path.
 */
import { Metrics, MetricUnit } from "@aws-lambda-powertools/metrics";
import type { MiddlewareObj } from "@middy/core";

export const METRICS_NAMESPACE = "ConntrackHelpers";

/** The metric names the alarms (infra/alarms.yml) and dashboards select on. */
export const METRIC = {
  /** http: an error response, dimension ErrorCode (the `error.code` of the body). */
  rejectedRequests: "RejectedRequests",
  /** events: a refused event parked, dimension DetailType; the error code rides along as `Code`. */
  parkedEvents: "ParkedEvents",
  /** status: a kernel holds other helpers than the desired ones at the applied revision. */
  contentMismatches: "ContentMismatches",
  /** status: a node reported on a router not bound to it (or a revision never written). */
  unboundReports: "UnboundReports",
  invalidStatusMessages: "InvalidStatusMessages",
} as const;

/** The port the domain-facing code counts through (tests pass a recording fake). */
export interface MetricCounter {
  /**
   * `dimensions` split the metric (such a count is written at once, on a line of its own: one EMF line has
   * one dimension set); `properties` ride along in that line only. Plain counts wait for `flush`.
   */
  count(
    name: string,
    dimensions?: Readonly<Record<string, string>>,
    properties?: Readonly<Record<string, string>>,
  ): void;
}

export interface FunctionMetrics extends MetricCounter {
  /** Writes the plain counts of this invocation as one line; nothing when there are none. */
  flush(): void;
}

function bareMetrics(fn: string, singleMetric: boolean): Metrics {
  const metrics = new Metrics({ namespace: METRICS_NAMESPACE, singleMetric });
  // Powertools adds a `service` dimension to every metric; the alarms select on Function alone.
  metrics.clearDefaultDimensions();
  metrics.setDefaultDimensions({ Function: fn });
  return metrics;
}

/** One function's metrics; `fn` is the Function dimension the alarms name (http, events, status, reconcile). */
export function functionMetrics(fn: string): FunctionMetrics {
  const batched = bareMetrics(fn, false);
  return {
    count(name, dimensions, properties) {
      if (dimensions === undefined && properties === undefined) {
        batched.addMetric(name, MetricUnit.Count, 1);
        return;
      }
      const single = bareMetrics(fn, true);
      if (dimensions) single.addDimensions({ ...dimensions });
      for (const [key, value] of Object.entries(properties ?? {})) single.addMetadata(key, value);
      single.addMetric(name, MetricUnit.Count, 1);
    },
    flush() {
      if (batched.hasStoredMetrics()) batched.publishStoredMetrics();
    },
  };
}

/**
 * One flush per invocation, after the handler and every other middleware (use it first). Not Powertools'
 * `logMetrics`: that one writes a "No application metrics to publish" warning on every invocation that
 * counted nothing, which is the common, happy one.
 */
export function flushMetrics(metrics: FunctionMetrics): MiddlewareObj {
  const flush = () => metrics.flush();
  return { name: "flushMetrics", after: flush, onError: flush };
}
