/**
 * Counters as CloudWatch Embedded Metric Format lines (namespace ConntrackHelpers, dimension Function plus
 * any given): the log line is the metric, so alarms need no PutMetricData permission and no extra call on the
 * hot path.
 */
export interface MetricCounter {
  /** `dimensions` split the metric; `properties` ride along in the log line only. */
  count(
    name: string,
    value?: number,
    dimensions?: Readonly<Record<string, string>>,
    properties?: Readonly<Record<string, string>>,
  ): void;
}

export function emfCounter(
  fn: string,
  write: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
): MetricCounter {
  return {
    count(name, value = 1, dimensions = {}, properties = {}) {
      write(
        JSON.stringify({
          _aws: {
            Timestamp: Date.now(),
            CloudWatchMetrics: [
              {
                Namespace: "ConntrackHelpers",
                Dimensions: [["Function", ...Object.keys(dimensions)]],
                Metrics: [{ Name: name, Unit: "Count" }],
              },
            ],
          },
          ...properties,
          ...dimensions,
          Function: fn,
          [name]: value,
        }),
      );
    },
  };
}
