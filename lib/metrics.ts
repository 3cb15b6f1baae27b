/**
 * Counters as CloudWatch Embedded Metric Format lines (namespace ConntrackHelpers, dimension Function): the
 * log line is the metric, so alarms need no PutMetricData permission and no extra call on the hot path.
 */
export interface MetricCounter {
  count(name: string, value?: number): void;
}

export function emfCounter(
  fn: string,
  write: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
): MetricCounter {
  return {
    count(name, value = 1) {
      write(
        JSON.stringify({
          _aws: {
            Timestamp: Date.now(),
            CloudWatchMetrics: [
              {
                Namespace: "ConntrackHelpers",
                Dimensions: [["Function"]],
                Metrics: [{ Name: name, Unit: "Count" }],
              },
            ],
          },
          Function: fn,
          [name]: value,
        }),
      );
    },
  };
}
