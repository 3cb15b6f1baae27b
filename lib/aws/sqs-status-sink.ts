/**
 * StatusSink on SQS: agents' applied reports and resync requests to the status queue (client injected).
 * Reports sent at about the same time (a node applying many routers at once) share one SendMessageBatch:
 * each send joins the batch being gathered, which goes out after `windowMs` (0: at the end of this turn of
 * the event loop), or at once when it holds 10 entries or the next would pass SQS's 1 MiB per request.
 */
import { createHash, randomUUID } from "node:crypto";
import {
  SendMessageBatchCommand,
  type SendMessageBatchRequestEntry,
  type SQSClient,
} from "@aws-sdk/client-sqs";
import { ServiceUnavailableError } from "../errors.ts";
import type { StatusSink } from "../ports.ts";
import type { StatusMessage } from "../schemas/index.ts";
import { AWS_LIMITS } from "./limits.ts";

export interface StatusSinkOptions {
  /** How long a batch gathers reports before it is sent. */
  readonly windowMs: number;
}

interface Pending {
  readonly entry: Omit<SendMessageBatchRequestEntry, "Id">;
  readonly bytes: number;
  resolve(): void;
  reject(error: Error): void;
}

export class SqsStatusSink implements StatusSink {
  private readonly fifo: boolean;
  private gathering: Pending[] = [];
  private gatheredBytes = 0;
  /** Cancels the pending flush of the batch being gathered. */
  private cancelFlush: (() => void) | undefined;

  constructor(
    private readonly client: SQSClient,
    private readonly queueUrl: string,
    private readonly options: StatusSinkOptions = { windowMs: 0 },
  ) {
    this.fifo = queueUrl.endsWith(".fifo");
  }

  send(message: StatusMessage): Promise<void> {
    const body = JSON.stringify(message);
    // A FIFO status queue orders one router's reports; the body hash makes a re-sent report a duplicate,
    // while every resync request (an agent restart) must get through.
    const group = message.kind === "applied" ? message.router_id : `resync-${message.host}`;
    const dedup =
      message.kind === "applied"
        ? createHash("sha256").update(body).digest("hex").slice(0, 64)
        : randomUUID();
    const entry = {
      MessageBody: body,
      ...(this.fifo ? { MessageGroupId: group, MessageDeduplicationId: dedup } : {}),
    };
    const bytes = Buffer.byteLength(body);
    if (bytes > AWS_LIMITS.sqsMessageBytes) {
      return Promise.reject(
        new ServiceUnavailableError("status report over the SQS message size limit", undefined, {
          cause: new Error(`${bytes} bytes`),
        }),
      );
    }
    return new Promise((resolve, reject) => {
      if (this.gatheredBytes + bytes > AWS_LIMITS.sqsBatchBytes) this.flush();
      this.gathering.push({ entry, bytes, resolve, reject });
      this.gatheredBytes += bytes;
      if (this.gathering.length >= AWS_LIMITS.sqsBatchEntries) this.flush();
      else this.cancelFlush ??= this.scheduleFlush();
    });
  }

  private scheduleFlush(): () => void {
    if (this.options.windowMs > 0) {
      const timer = setTimeout(() => this.flush(), this.options.windowMs);
      return () => clearTimeout(timer);
    }
    const immediate = setImmediate(() => this.flush());
    return () => clearImmediate(immediate);
  }

  private flush(): void {
    this.cancelFlush?.();
    this.cancelFlush = undefined;
    const batch = this.gathering;
    this.gathering = [];
    this.gatheredBytes = 0;
    if (batch.length > 0) void this.sendBatch(batch);
  }

  private async sendBatch(batch: readonly Pending[]): Promise<void> {
    try {
      const result = await this.client.send(
        new SendMessageBatchCommand({
          QueueUrl: this.queueUrl,
          Entries: batch.map((pending, index) => ({ ...pending.entry, Id: String(index) })),
        }),
      );
      const failed = new Map((result.Failed ?? []).map((entry) => [entry.Id, entry]));
      for (const [index, pending] of batch.entries()) {
        const failure = failed.get(String(index));
        if (!failure) pending.resolve();
        else
          pending.reject(
            new ServiceUnavailableError("status queue refused a report", undefined, {
              cause: new Error(`${failure.Code}: ${failure.Message}`),
            }),
          );
      }
    } catch (error) {
      for (const pending of batch) {
        pending.reject(new ServiceUnavailableError("status queue unavailable", undefined, { cause: error }));
      }
    }
  }
}
