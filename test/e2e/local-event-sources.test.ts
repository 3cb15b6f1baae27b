/**
 * The local stack's stand-ins for Lambda's event sources, against the real SQS emulator: the status queue
 * poller behaves like an SQS event source mapping with ReportBatchItemFailures, and `npm run emit` builds the
 * envelope EventBridge hands a rule target. Event shapes are checked against the recorded fixtures.
 */
import { readFileSync } from "node:fs";
import { GetQueueAttributesCommand, SendMessageCommand, type SQSClient } from "@aws-sdk/client-sqs";
import type { SQSBatchResponse, SQSEvent } from "aws-lambda";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildEnvelope } from "../../scripts/emit.ts";
import { startStatusPoller } from "../../scripts/local/status-poller.ts";
import { type Emulators, startEmulators } from "../support/emulators.ts";

const fixture = (name: string) =>
  JSON.parse(readFileSync(new URL(`../fixtures/aws-events/${name}`, import.meta.url), "utf8"));

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value !== undefined) return value;
    await new Promise((done) => setTimeout(done, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe("status queue poller (SQS event source mapping stand-in)", () => {
  let emu: Emulators;
  beforeAll(async () => {
    emu = await startEmulators();
  });
  afterAll(async () => emu.stop());

  async function queueWith(name: string, bodies: string[]) {
    const { url, dlqUrl } = await emu.createStatusQueue(name);
    const sqs = emu.clients().sqs;
    for (const body of bodies) await sqs.send(new SendMessageCommand({ QueueUrl: url, MessageBody: body }));
    const arn = (
      await sqs.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ["QueueArn"] }))
    ).Attributes!.QueueArn!;
    return { url, dlqUrl, arn, sqs };
  }

  const visible = async (sqs: SQSClient, url: string) => {
    const attrs = await sqs.send(
      new GetQueueAttributesCommand({
        QueueUrl: url,
        AttributeNames: ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
      }),
    );
    return (
      Number(attrs.Attributes!.ApproximateNumberOfMessages) +
      Number(attrs.Attributes!.ApproximateNumberOfMessagesNotVisible)
    );
  };

  it("hands over real SQS records and deletes all but the reported batch item failures", async () => {
    const { url, arn, sqs } = await queueWith("cth-poller-partial", ['{"n":1}', '{"n":2}', '{"n":3}']);
    const events: SQSEvent[] = [];
    const poller = startStatusPoller({
      sqs,
      queueUrl: url,
      queueArn: arn,
      region: emu.region,
      waitSeconds: 1,
      log: () => undefined,
      handler: async (event): Promise<SQSBatchResponse> => {
        events.push(event);
        const bad = event.Records.filter((r) => r.body === '{"n":2}');
        return { batchItemFailures: bad.map((r) => ({ itemIdentifier: r.messageId })) };
      },
    });
    try {
      await until("three records", 10_000, async () =>
        events.flatMap((e) => e.Records).length >= 3 ? true : undefined,
      );
      // Only the failed record stays on the queue (in flight until its visibility timeout ends).
      await until("two deletions", 10_000, async () => ((await visible(sqs, url)) === 1 ? true : undefined));
    } finally {
      await poller.stop();
    }
    const record = events[0]!.Records[0]!;
    const recorded = fixture("sqs-base.json").Records[0];
    expect(Object.keys(record).sort()).toEqual(Object.keys(recorded).sort());
    for (const name of Object.keys(recorded.attributes).filter(
      (n: string) => n !== "DeadLetterQueueSourceArn",
    )) {
      expect(record.attributes, name).toHaveProperty(name);
    }
    expect(record).toMatchObject({ eventSource: "aws:sqs", eventSourceARN: arn, awsRegion: emu.region });
    expect(record.md5OfBody).toMatch(/^[0-9a-f]{32}$/);
  });

  it("leaves the whole batch on the queue when the function throws", async () => {
    const { url, arn, sqs } = await queueWith("cth-poller-throws", ['{"n":1}', '{"n":2}']);
    let calls = 0;
    const poller = startStatusPoller({
      sqs,
      queueUrl: url,
      queueArn: arn,
      region: emu.region,
      waitSeconds: 1,
      log: () => undefined,
      handler: async () => {
        calls++;
        throw new Error("boom");
      },
    });
    try {
      await until("an invocation", 10_000, async () => (calls > 0 ? true : undefined));
    } finally {
      await poller.stop();
    }
    expect(await visible(sqs, url)).toBe(2);
  });
});

describe("npm run emit envelope", () => {
  it("has the recorded EventBridge envelope's fields, source conntrack.helpers and the given detail", () => {
    const envelope = buildEnvelope("Router Deleted", '{"router_id":"0b3a4c3e-58a3-4f5e-9b61-2f0f0c6a9d11"}');
    expect(Object.keys(envelope).sort()).toEqual(Object.keys(fixture("eventbridge-envelope.json")).sort());
    expect(envelope).toMatchObject({
      version: "0",
      "detail-type": "Router Deleted",
      source: "conntrack.helpers",
      detail: { router_id: "0b3a4c3e-58a3-4f5e-9b61-2f0f0c6a9d11" },
    });
    expect(envelope.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(envelope.time).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
  });

  it("rejects detail that is not a JSON object, as PutEvents does", () => {
    expect(() => buildEnvelope("Router Deleted", "{nope")).toThrow(/not JSON/);
    expect(() => buildEnvelope("Router Deleted", "[1]")).toThrow(/object/);
    expect(() => buildEnvelope("Router Deleted", "null")).toThrow(/object/);
  });
});
