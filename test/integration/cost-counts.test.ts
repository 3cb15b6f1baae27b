/**
 * The cost-counts benchmark (bench/cost-counts.ts) with two notifications of each kind, so it cannot rot and
 * the request counts the cost model in bench/RESULTS.md rests on stay true: counts, never times.
 */
import { describe, expect, it } from "vitest";
import { benchCostCounts } from "../../bench/cost-counts.ts";

describe("requests per notification (dynalite, fauxqs)", () => {
  it("one read and one conditional write each in the HTTP and status functions, one SQS send each way", async () => {
    const counts = await benchCostCounts({ notifications: 2 });
    for (const step of [counts.http, counts.httpIdempotent, counts.statusReport, counts.status]) {
      expect(step.alike).toBe(true);
    }
    expect(counts.http.dynamo.requests).toEqual({ BatchGetItem: 1, UpdateItem: 1 });
    expect(counts.http.sqs.requests).toEqual({ SendMessageBatch: 1 });
    // Powertools' in-progress record and its completion.
    expect(counts.httpIdempotent.dynamo.requests).toEqual({ BatchGetItem: 1, PutItem: 1, UpdateItem: 2 });
    expect(counts.statusReport.sqs.requests).toEqual({ SendMessageBatch: 1 });
    expect(counts.status.dynamo.requests).toEqual({ GetItem: 1, UpdateItem: 1 });
    expect(counts.status.sqs.requests).toEqual({});
    // The desired write and the settling report each rewrite the by-host entry (projection ALL) and add or
    // remove the out-of-sync entry.
    expect(counts.http.dynamo.indexWriteUnits).toBe(2);
    expect(counts.status.dynamo.indexWriteUnits).toBe(2);
    expect(counts.http.sqs.billedRequests).toBe(1);
  }, 60_000);
});
