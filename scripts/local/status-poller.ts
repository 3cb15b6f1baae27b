/**
 * What Lambda's SQS event source mapping does for the status function: long-poll the queue, hand batches
 * over as real SQS events (shape of test/fixtures/aws-events/sqs-base.json), delete what succeeded and leave
 * `batchItemFailures` (or the whole batch, when the function throws) to become visible again and, after
 * maxReceiveCount, to move to the DLQ by redrive.
 */
import { createHash } from "node:crypto";
import {
  DeleteMessageBatchCommand,
  type Message,
  type MessageAttributeValue,
  ReceiveMessageCommand,
  type SQSClient,
} from "@aws-sdk/client-sqs";
import type { Context, SQSBatchResponse, SQSEvent, SQSMessageAttributes, SQSRecord } from "aws-lambda";
import { lambdaContext } from "./gateway.ts";

export type SqsHandler = (event: SQSEvent, context: Context) => Promise<SQSBatchResponse | undefined>;

export interface StatusPollerOptions {
  readonly sqs: SQSClient;
  readonly queueUrl: string;
  readonly queueArn: string;
  readonly region: string;
  readonly handler: SqsHandler;
  readonly batchSize?: number;
  readonly waitSeconds?: number;
  readonly timeoutMs?: number;
  readonly log: (line: Record<string, unknown>) => void;
}

function attributes(values: Record<string, MessageAttributeValue> | undefined): SQSMessageAttributes {
  const out: SQSMessageAttributes = {};
  for (const [name, value] of Object.entries(values ?? {})) {
    out[name] = {
      dataType: value.DataType ?? "String",
      ...(value.StringValue !== undefined ? { stringValue: value.StringValue } : {}),
      ...(value.BinaryValue !== undefined
        ? { binaryValue: Buffer.from(value.BinaryValue).toString("base64") }
        : {}),
      stringListValues: [],
      binaryListValues: [],
    };
  }
  return out;
}

export function toSqsRecord(message: Message, queueArn: string, region: string): SQSRecord {
  const system = message.Attributes ?? {};
  const body = message.Body ?? "";
  return {
    messageId: message.MessageId!,
    receiptHandle: message.ReceiptHandle!,
    body,
    attributes: {
      ApproximateReceiveCount: system.ApproximateReceiveCount ?? "1",
      SentTimestamp: system.SentTimestamp ?? String(Date.now()),
      SenderId: system.SenderId ?? "000000000000",
      ApproximateFirstReceiveTimestamp: system.ApproximateFirstReceiveTimestamp ?? String(Date.now()),
      ...(system.MessageGroupId ? { MessageGroupId: system.MessageGroupId } : {}),
      ...(system.MessageDeduplicationId ? { MessageDeduplicationId: system.MessageDeduplicationId } : {}),
      ...(system.SequenceNumber ? { SequenceNumber: system.SequenceNumber } : {}),
    },
    messageAttributes: attributes(message.MessageAttributes),
    md5OfBody: message.MD5OfBody ?? createHash("md5").update(body).digest("hex"),
    eventSource: "aws:sqs",
    eventSourceARN: queueArn,
    awsRegion: region,
  };
}

export interface Poller {
  stop(): Promise<void>;
}

export function startStatusPoller(options: StatusPollerOptions): Poller {
  const abort = new AbortController();
  const done = (async () => {
    let failures = 0;
    while (!abort.signal.aborted) {
      try {
        const batch = await options.sqs.send(
          new ReceiveMessageCommand({
            QueueUrl: options.queueUrl,
            MaxNumberOfMessages: options.batchSize ?? 10,
            WaitTimeSeconds: options.waitSeconds ?? 2,
            MessageSystemAttributeNames: ["All"],
            MessageAttributeNames: ["All"],
          }),
          { abortSignal: abort.signal },
        );
        failures = 0;
        const messages = batch.Messages ?? [];
        if (messages.length === 0) continue;
        const event: SQSEvent = {
          Records: messages.map((m) => toSqsRecord(m, options.queueArn, options.region)),
        };
        let failed: Set<string>;
        try {
          const response = await options.handler(
            event,
            lambdaContext("cth-local-status", options.timeoutMs ?? 30_000),
          );
          failed = new Set((response?.batchItemFailures ?? []).map((f) => f.itemIdentifier));
        } catch (error) {
          options.log({
            level: "warn",
            msg: "status function threw; the batch will be retried",
            error: String(error),
          });
          continue;
        }
        const succeeded = messages.filter((m) => !failed.has(m.MessageId!));
        if (failed.size > 0)
          options.log({ level: "warn", msg: "status batch item failures", count: failed.size });
        if (succeeded.length > 0) {
          await options.sqs.send(
            new DeleteMessageBatchCommand({
              QueueUrl: options.queueUrl,
              Entries: succeeded.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle! })),
            }),
          );
        }
      } catch (error) {
        if (abort.signal.aborted) break;
        failures++;
        options.log({ level: "warn", msg: "status queue poll failed", error: String(error) });
        await new Promise((resolve) => setTimeout(resolve, Math.min(5_000, 200 * 2 ** failures)));
      }
    }
  })();
  return {
    stop: async () => {
      abort.abort();
      await done;
    },
  };
}
