import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SqsStatusSink } from "../../lib/aws/sqs-status-sink.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { ServiceUnavailableError } from "../../lib/errors.ts";
import { buildSchemas, type StatusMessage } from "../../lib/schemas/index.ts";
import { type Emulators, startEmulators } from "../support/emulators.ts";

const schemas = buildSchemas(DEFAULT_LIMITS, new HelperCatalog());

describe("SqsStatusSink on fauxqs", () => {
  let emu: Emulators;

  beforeAll(async () => {
    emu = await startEmulators();
  });

  afterAll(async () => {
    await emu?.stop();
  });

  const applied = (): StatusMessage => ({
    v: 1,
    kind: "applied",
    router_id: randomUUID(),
    revision: 3,
    host: "net-1",
    namespace: "qrouter",
    digest: helperSetDigest([]),
    rules: { ipv4: 2, ipv6: 1 },
    errors: [{ helper_id: randomUUID(), code: "helper_unavailable", message: "ipv4: the kernel lacks snmp" }],
  });

  it("sends schema-valid reports and resync requests to a standard queue", async () => {
    const { url } = await emu.createStatusQueue(`st-${randomUUID().slice(0, 6)}`);
    const sink = new SqsStatusSink(emu.clients().sqs, url);
    const report = applied();
    await sink.send(report);
    await sink.send({ v: 1, kind: "resync-request", host: "net-1" });
    const bodies = (await emu.drain(url)).map((m) => schemas.statusMessage.parse(JSON.parse(m.Body!)));
    expect(bodies).toEqual([report, { v: 1, kind: "resync-request", host: "net-1" }]);
  });

  it("on a FIFO queue: a re-sent identical report is deduplicated, every resync request gets through", async () => {
    const { url } = await emu.createNodeQueue(`stf-${randomUUID().slice(0, 6)}`);
    const sink = new SqsStatusSink(emu.clients().sqs, url);
    const report = applied();
    await sink.send(report);
    await sink.send(report);
    await sink.send({ v: 1, kind: "resync-request", host: "net-1" });
    await sink.send({ v: 1, kind: "resync-request", host: "net-1" });
    const messages = await emu.drain(url);
    expect(messages.map((m) => JSON.parse(m.Body!).kind).sort()).toEqual([
      "applied",
      "resync-request",
      "resync-request",
    ]);
    expect(messages.find((m) => JSON.parse(m.Body!).kind === "applied")?.Attributes?.MessageGroupId).toBe(
      (report as { router_id: string }).router_id,
    );
  });

  it("a queue that cannot be reached surfaces as ServiceUnavailableError", async () => {
    const sink = new SqsStatusSink(emu.clients().sqs, `${emu.sqsEndpoint}/000000000000/no-such-queue`);
    await expect(sink.send({ v: 1, kind: "resync-request", host: "net-1" })).rejects.toBeInstanceOf(
      ServiceUnavailableError,
    );
  });
});

describe("SqsStatusSink batching", () => {
  let emu: Emulators;

  beforeAll(async () => {
    emu = await startEmulators();
  });

  afterAll(async () => {
    await emu?.stop();
  });

  const report = (): StatusMessage => ({
    v: 1,
    kind: "applied",
    router_id: randomUUID(),
    revision: 1,
    host: "net-1",
    namespace: "qrouter",
    digest: helperSetDigest([]),
    rules: { ipv4: 0, ipv6: 0 },
    errors: [],
  });

  it("25 reports sent at once go out in 3 SendMessageBatch requests, every one delivered", async () => {
    const { url } = await emu.createNodeQueue(`stb-${randomUUID().slice(0, 6)}`);
    const sqs = emu.clients().sqs;
    const requests: string[] = [];
    sqs.middlewareStack.add(
      (next, context) => async (args) => {
        requests.push(String(context.commandName));
        return next(args);
      },
      { step: "initialize", name: "countRequests" },
    );
    const sink = new SqsStatusSink(sqs, url);
    const reports = Array.from({ length: 25 }, report);
    await Promise.all(reports.map((message) => sink.send(message)));
    expect(requests).toEqual([
      "SendMessageBatchCommand",
      "SendMessageBatchCommand",
      "SendMessageBatchCommand",
    ]);
    const delivered = (await emu.drain(url)).map((m) => JSON.parse(m.Body!).router_id).sort();
    expect(delivered).toEqual(reports.map((message) => (message as { router_id: string }).router_id).sort());
  });

  it("an entry the queue refuses fails that send only; the others in its batch succeed", async () => {
    const { mockClient } = await import("aws-sdk-client-mock");
    const { SendMessageBatchCommand, SQSClient } = await import("@aws-sdk/client-sqs");
    const sqs = new SQSClient({ region: "us-east-1" });
    mockClient(sqs)
      .on(SendMessageBatchCommand)
      .resolves({
        Successful: [],
        Failed: [{ Id: "1", Code: "InternalError", SenderFault: false, Message: "boom" }],
      });
    const sink = new SqsStatusSink(sqs, "http://127.0.0.1:1/000000000000/status");
    const settled = await Promise.allSettled([report(), report(), report()].map((m) => sink.send(m)));
    expect(settled.map((result) => result.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect((settled[1] as PromiseRejectedResult).reason).toBeInstanceOf(ServiceUnavailableError);
  });

  it("a report over SQS's message size is refused before any request", async () => {
    const { url } = await emu.createStatusQueue(`stx-${randomUUID().slice(0, 6)}`);
    const sink = new SqsStatusSink(emu.clients().sqs, url);
    const huge = { ...report(), errors: [{ code: "x", message: "y".repeat(1_100_000) }] } as StatusMessage;
    await expect(sink.send(huge)).rejects.toThrow(/over the SQS message size limit/);
    expect(await emu.depth(url)).toBe(0);
  });
});
