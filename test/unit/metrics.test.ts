/**
 * What Powertools prints (lib/metrics.ts, lib/production.ts): EMF lines the alarms of infra/alarms.yml can
 * select on, and log lines that carry the Lambda context and the correlation id.
 */
import { readFileSync } from "node:fs";
import type { SQSEvent, SQSRecord } from "aws-lambda";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { eventMetrics, makeHandler as makeEventsHandler } from "../../functions/events.ts";
import { makeHandler as makeHttpHandler } from "../../functions/http.ts";
import { makeHandler as makeStatusHandler } from "../../functions/status.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { loadConfig, loadLimits } from "../../lib/config.ts";
import { appLogger } from "../../lib/http/middlewares.ts";
import { functionMetrics, METRICS_NAMESPACE } from "../../lib/metrics.ts";
import { systemClock } from "../../lib/ports.ts";
import { observability } from "../../lib/production.ts";
import { buildSchemas } from "../../lib/schemas/index.ts";
import { eventBridgeEvent, httpApiEvent, lambdaContext } from "../support/events.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../support/memory.ts";

type Line = Record<string, unknown> & {
  _aws?: { CloudWatchMetrics: { Namespace: string; Dimensions: string[][]; Metrics: { Name: string }[] }[] };
};

let out: string[];
let err: string[];
beforeEach(() => {
  out = [];
  err = [];
  // Powertools writes through its own Console on process.stdout / process.stderr.
  vi.spyOn(process.stdout, "write").mockImplementation((chunk) => {
    out.push(String(chunk));
    return true;
  });
  vi.spyOn(process.stderr, "write").mockImplementation((chunk) => {
    err.push(String(chunk));
    return true;
  });
});
afterEach(() => {
  vi.restoreAllMocks();
});

const parse = (chunks: string[]): Line[] =>
  chunks
    .join("")
    .split("\n")
    .filter((text) => text.trim() !== "")
    .map((text) => JSON.parse(text) as Line);
const emf = () => parse(out).filter((line) => line._aws !== undefined);
/** Powertools' Logger writes warn and error to stderr, the rest to stdout. */
const logs = () => [...parse(out), ...parse(err)].filter((line) => line._aws === undefined);

describe("functionMetrics (Powertools Metrics)", () => {
  it("writes plain counts as one line per flush, dimension Function only (no Powertools service dimension)", () => {
    const metrics = functionMetrics("status");
    metrics.count("ContentMismatches");
    metrics.count("UnboundReports");
    metrics.count("UnboundReports");
    expect(out).toEqual([]);
    metrics.flush();
    const [line, ...rest] = emf();
    expect(rest).toEqual([]);
    expect(line!._aws!.CloudWatchMetrics).toEqual([
      {
        Namespace: METRICS_NAMESPACE,
        Dimensions: [["Function"]],
        Metrics: [
          { Name: "ContentMismatches", Unit: "Count" },
          { Name: "UnboundReports", Unit: "Count" },
        ],
      },
    ]);
    expect(line).toMatchObject({ Function: "status", ContentMismatches: 1, UnboundReports: [1, 1] });
    expect(line).not.toHaveProperty("service");
  });

  it("writes nothing, not even a warning, when an invocation counted nothing", () => {
    functionMetrics("http").flush();
    expect(out).toEqual([]);
    expect(err).toEqual([]);
  });

  it("writes a dimensioned count at once, on its own line, with its properties outside the dimensions", () => {
    const metrics = functionMetrics("events");
    eventMetrics(metrics).parked("Router Deleted", "forbidden");
    const [line] = emf();
    expect(line!._aws!.CloudWatchMetrics[0]).toMatchObject({
      Namespace: "ConntrackHelpers",
      Dimensions: [["Function", "DetailType"]],
      Metrics: [{ Name: "ParkedEvents", Unit: "Count" }],
    });
    expect(line).toMatchObject({
      Function: "events",
      DetailType: "Router Deleted",
      Code: "forbidden",
      ParkedEvents: 1,
    });
    metrics.flush();
    expect(emf()).toHaveLength(1);
  });
});

function httpHandler() {
  const limits = loadLimits({});
  const observe = observability("cth-http", "http", loadConfig({}));
  const logger = appLogger(observe.logger);
  const handler = makeHttpHandler({
    domain: {
      store: new MemoryRoutersStore(),
      queue: new MemoryCommandQueue(),
      clock: systemClock,
      limits,
      log: logger,
    },
    schemas: buildSchemas(limits, new HelperCatalog()),
    logger,
    idempotency: undefined,
    observability: observe,
  });
  return handler;
}

describe("the http function's observability", () => {
  it("counts a rejected request as RejectedRequests by ErrorCode, in one flush", async () => {
    const handler = httpHandler();
    const result = await handler(
      httpApiEvent({ method: "GET", path: "/v1/routers/x/conntrack-helpers" }),
      lambdaContext(),
    );
    expect(result.statusCode).toBe(401);
    const metrics = emf();
    expect(metrics).toHaveLength(1);
    expect(metrics[0]!._aws!.CloudWatchMetrics[0]).toMatchObject({
      Namespace: "ConntrackHelpers",
      Dimensions: [["Function", "ErrorCode"]],
      Metrics: [{ Name: "RejectedRequests", Unit: "Count" }],
    });
    expect(metrics[0]).toMatchObject({ Function: "http", ErrorCode: "unauthorized", RejectedRequests: 1 });
  });

  it("logs with the Lambda context (request id, cold start) and the request's correlation_id, then drops it", async () => {
    const handler = httpHandler();
    const event = httpApiEvent({ method: "GET", path: "/v1/routers/x/conntrack-helpers" });
    const context = lambdaContext();
    const result = await handler(event, context);
    const [line] = logs();
    expect(line).toMatchObject({
      message: "request rejected",
      service: "cth-http",
      function_request_id: context.awsRequestId,
      function_name: "cth-test",
      correlation_id: result.headers?.["x-correlation-id"],
    });
    expect(typeof line!.cold_start).toBe("boolean");
    expect(String(line!.correlation_id)).toMatch(/^[A-Za-z0-9_-]+$/);
    // The next invocation's lines do not carry the previous request's id.
    out.length = 0;
    const second = await handler(httpApiEvent({ method: "GET", path: "/v1/routers/y" }), lambdaContext());
    expect(logs()[0]!.correlation_id).toBe(second.headers?.["x-correlation-id"]);
    expect(logs()[0]!.correlation_id).not.toBe(line!.correlation_id);
    expect(logs()[0]!.cold_start).toBe(false);
  });
});

describe("the events function's observability", () => {
  it("a parked event's log lines carry its id as correlation_id; ParkedEvents is written once", async () => {
    const limits = loadLimits({});
    const observe = observability("cth-events", "events", loadConfig({}));
    const logger = appLogger(observe.logger);
    const handler = makeEventsHandler({
      domain: {
        store: new MemoryRoutersStore(),
        queue: new MemoryCommandQueue(),
        clock: systemClock,
        limits,
        log: logger,
      },
      schemas: buildSchemas(limits, new HelperCatalog()),
      logger,
      metrics: eventMetrics(observe.metrics),
      observability: observe,
    });
    // The function's own account (lambdaContext's ARN) may put lifecycle events; the detail is invalid.
    const event = eventBridgeEvent(
      "Router Deleted",
      { router_id: "not-a-uuid" },
      { account: "000000000000" },
    );
    const result = await handler(event, lambdaContext());
    expect(result).toMatchObject({ outcome: "parked", code: "validation_failed" });
    const [parked, ...others] = logs();
    expect(parked).toMatchObject({
      message: "event parked",
      correlation_id: event.id,
      code: "validation_failed",
    });
    expect(parked!.reason).toMatch(/invalid/);
    // Powertools warns about a reserved key it drops; nothing like that here.
    expect(others).toEqual([]);
    expect(emf()).toHaveLength(1);
    expect(emf()[0]).toMatchObject({
      ParkedEvents: 1,
      DetailType: "Router Deleted",
      Code: "validation_failed",
    });
  });
});

describe("the status function's observability", () => {
  it("writes one metrics line per batch, each record's log lines with its own correlation_id", async () => {
    const limits = loadLimits({});
    const observe = observability("cth-status", "status", loadConfig({}));
    const handler = makeStatusHandler({
      store: new MemoryRoutersStore(),
      queue: new MemoryCommandQueue(),
      clock: systemClock,
      schemas: buildSchemas(limits, new HelperCatalog()),
      logger: observe.logger,
      statusQueueNameTemplate: "cth-test-node-{node}-status",
      metrics: observe.metrics,
      observability: observe,
    });
    const fixture = JSON.parse(
      readFileSync(new URL("../fixtures/aws-events/sqs-base.json", import.meta.url), "utf8"),
    ) as SQSEvent;
    const record = (messageId: string): SQSRecord => ({
      ...fixture.Records[0]!,
      messageId,
      eventSourceARN: "arn:aws:sqs:us-east-1:000000000000:cth-test-node-node-a-status",
      body: "not json",
    });
    const result = await handler({ Records: [record("m-1"), record("m-2")] }, lambdaContext());
    expect(result.batchItemFailures).toEqual([]);
    expect(emf()).toHaveLength(1);
    expect(emf()[0]).toMatchObject({ Function: "status", InvalidStatusMessages: [1, 1] });
    const dropped = logs().filter((line) => line.message === "invalid status message dropped");
    expect(dropped.map((line) => line.correlation_id)).toEqual(["status-m-1", "status-m-2"]);
  });
});
