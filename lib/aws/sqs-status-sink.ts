/** StatusSink on SQS: agents' applied reports and resync requests to the status queue (client injected). */
import { createHash, randomUUID } from "node:crypto";
import { SendMessageCommand, type SQSClient } from "@aws-sdk/client-sqs";
import { ServiceUnavailableError } from "../errors.ts";
import type { StatusSink } from "../ports.ts";
import type { StatusMessage } from "../schemas/index.ts";

export class SqsStatusSink implements StatusSink {
  private readonly fifo: boolean;

  constructor(
    private readonly client: SQSClient,
    private readonly queueUrl: string,
  ) {
    this.fifo = queueUrl.endsWith(".fifo");
  }

  async send(message: StatusMessage): Promise<void> {
    const body = JSON.stringify(message);
    // A FIFO status queue orders one router's reports; the body hash makes a re-sent report a duplicate,
    // while every resync request (an agent restart) must get through.
    const group = message.kind === "applied" ? message.router_id : `resync-${message.host}`;
    const dedup =
      message.kind === "applied"
        ? createHash("sha256").update(body).digest("hex").slice(0, 64)
        : randomUUID();
    try {
      await this.client.send(
        new SendMessageCommand({
          QueueUrl: this.queueUrl,
          MessageBody: body,
          ...(this.fifo
            ? {
                MessageGroupId: group,
                MessageDeduplicationId: dedup,
              }
            : {}),
        }),
      );
    } catch (error) {
      throw new ServiceUnavailableError("status queue unavailable", undefined, { cause: error });
    }
  }
}
