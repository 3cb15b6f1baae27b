/**
 * Parks refused EventBridge events on an SQS queue with the reason, so an operator can inspect and replay
 * them; the events function otherwise only logs and counts them.
 */
import { SendMessageCommand, type SQSClient } from "@aws-sdk/client-sqs";

export interface ParkReason {
  readonly code: string;
  readonly message: string;
}

export type ParkSink = (event: unknown, reason: ParkReason) => Promise<void>;

/** SQS's message size limit, minus room for the wrapper. */
const MAX_EVENT_CHARS = 240_000;

export function sqsParkSink(sqs: SQSClient, queueUrl: string, now: () => Date = () => new Date()): ParkSink {
  return async (event, reason) => {
    let text = JSON.stringify(event) ?? "null";
    // A hostile event may be huge; the parked copy is evidence, not a replay source, past this size.
    const truncated = text.length > MAX_EVENT_CHARS;
    if (truncated) text = text.slice(0, MAX_EVENT_CHARS);
    const fifo = queueUrl.endsWith(".fifo");
    await sqs.send(
      new SendMessageCommand({
        QueueUrl: queueUrl,
        MessageBody: JSON.stringify({
          kind: "parked-event",
          parked_at: now().toISOString(),
          reason,
          truncated,
          event: truncated ? text : (JSON.parse(text) as unknown),
        }),
        ...(fifo ? { MessageGroupId: "parked", MessageDeduplicationId: reasonKey(event) } : {}),
      }),
    );
  };
}

function reasonKey(event: unknown): string {
  const id = typeof event === "object" && event !== null ? (event as { id?: unknown }).id : undefined;
  return typeof id === "string" && /^[A-Za-z0-9_.:-]{1,128}$/.test(id) ? id : `unknown-${Date.now()}`;
}
