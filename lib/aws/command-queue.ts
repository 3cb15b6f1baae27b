import { createHash } from "node:crypto";
/**
 * CommandQueue on SQS FIFO: one queue per node, group = router id (per-router order), dedup = router id +
 * revision (a retried send of the same snapshot is dropped by SQS, a new revision never is). Every entry is
 * signed over its exact MessageBody string (agents apply only dispatcher-signed snapshots).
 */
import {
  SendMessageBatchCommand,
  type SendMessageBatchRequestEntry,
  type SQSClient,
} from "@aws-sdk/client-sqs";
import { InternalError, ServiceUnavailableError } from "../errors.ts";
import type { CommandQueue, SendOptions } from "../ports.ts";
import type { RouterSyncMessage } from "../schemas/index.ts";
import { KEY_ID_ATTRIBUTE, SIGNATURE_ATTRIBUTE, type SnapshotSigner } from "../signing.ts";
import { AWS_LIMITS, sqsMessageBytes } from "./limits.ts";

export interface CommandQueueOptions {
  /** Attempts per entry, the first included. */
  readonly maxAttempts: number;
  /** Backoff before retry n is a random delay in [0, baseDelayMs * 2^n) (full jitter). */
  readonly baseDelayMs: number;
  /** SQS's size of one SendMessageBatch request, its entries' bodies and attributes; default SQS's limit. */
  readonly maxBatchBytes?: number | undefined;
  /** SQS's size of one message; default SQS's limit (config load keeps every snapshot within it). */
  readonly maxMessageBytes?: number | undefined;
}

export const DEFAULT_COMMAND_QUEUE_OPTIONS: CommandQueueOptions = { maxAttempts: 4, baseDelayMs: 50 };

export function queueUrlFromTemplate(template: string, host: string): string {
  return template.replaceAll("{node}", host);
}

/** A short, SQS-safe tag for a re-send scope (deduplication ids allow 128 characters of [A-Za-z0-9-_...]). */
export function resendTag(scope: string): string {
  return createHash("sha256").update(scope).digest("hex").slice(0, 16);
}

type UnnumberedEntry = Omit<SendMessageBatchRequestEntry, "Id">;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class SqsCommandQueue implements CommandQueue {
  constructor(
    private readonly sqs: SQSClient,
    private readonly queueUrlFor: (host: string) => string,
    private readonly signer: SnapshotSigner,
    private readonly options: CommandQueueOptions = DEFAULT_COMMAND_QUEUE_OPTIONS,
  ) {}

  async send(host: string, commands: readonly RouterSyncMessage[], options: SendOptions = {}): Promise<void> {
    const queueUrl = this.queueUrlFor(host);
    const suffix = options.resendScope ? `-${resendTag(options.resendScope)}` : "";
    // Everything is signed before anything is sent: a key that cannot be loaded sends nothing at all.
    const entries = await Promise.all(commands.map((command) => this.entry(command, suffix)));
    for (const chunk of this.chunks(entries)) await this.sendChunk(queueUrl, host, chunk);
  }

  /**
   * Requests of at most SQS's entry count and byte size, in order. A message over the per-message limit
   * refuses the whole send before anything is sent: config load makes one impossible, so it is a bug.
   */
  private chunks(entries: readonly UnnumberedEntry[]): UnnumberedEntry[][] {
    const maxBatchBytes = this.options.maxBatchBytes ?? AWS_LIMITS.sqsBatchBytes;
    const maxMessageBytes = Math.min(
      this.options.maxMessageBytes ?? AWS_LIMITS.sqsMessageBytes,
      maxBatchBytes,
    );
    const sizes = entries.map(sqsMessageBytes);
    const oversized = sizes.findIndex((size) => size > maxMessageBytes);
    if (oversized >= 0) {
      throw new InternalError(
        `the snapshot of router ${entries[oversized]!.MessageGroupId} is ${sizes[oversized]} bytes, over ` +
          `SQS's message limit of ${maxMessageBytes}`,
      );
    }
    const chunks: UnnumberedEntry[][] = [];
    let chunk: UnnumberedEntry[] = [];
    let bytes = 0;
    entries.forEach((entry, index) => {
      const size = sizes[index]!;
      if (chunk.length === AWS_LIMITS.sqsBatchEntries || bytes + size > maxBatchBytes) {
        chunks.push(chunk);
        chunk = [];
        bytes = 0;
      }
      chunk.push(entry);
      bytes += size;
    });
    if (chunk.length > 0) chunks.push(chunk);
    return chunks;
  }

  private async entry(command: RouterSyncMessage, dedupSuffix: string): Promise<UnnumberedEntry> {
    // The signature covers exactly this string; SQS hands it to the agent byte for byte.
    const body = JSON.stringify(command);
    const { keyId, signature } = await this.signer.sign(body);
    return {
      MessageBody: body,
      MessageGroupId: command.router_id,
      MessageDeduplicationId: `${command.router_id}-${command.revision}${dedupSuffix}`,
      MessageAttributes: {
        [KEY_ID_ATTRIBUTE]: { DataType: "String", StringValue: keyId },
        [SIGNATURE_ATTRIBUTE]: { DataType: "String", StringValue: signature },
      },
    };
  }

  private async sendChunk(queueUrl: string, host: string, chunk: readonly UnnumberedEntry[]): Promise<void> {
    // Entry ids are positions in the chunk: unique per request, stable across retries.
    let pending: SendMessageBatchRequestEntry[] = chunk.map((entry, index) => ({
      ...entry,
      Id: String(index),
    }));
    let lastFailure = "";
    for (let attempt = 0; attempt < this.options.maxAttempts && pending.length > 0; attempt++) {
      if (attempt > 0) await sleep(Math.random() * this.options.baseDelayMs * 2 ** attempt);
      try {
        const result = await this.sqs.send(
          new SendMessageBatchCommand({ QueueUrl: queueUrl, Entries: pending }),
        );
        const failed = new Set((result.Failed ?? []).map((entry) => entry.Id));
        // A sender fault (bad request) will not heal by retrying; only the rest is retried.
        const permanent = (result.Failed ?? []).filter((entry) => entry.SenderFault);
        if (permanent.length > 0) {
          throw new ServiceUnavailableError(`could not queue snapshots for node ${host}`, undefined, {
            cause: new Error(permanent.map((entry) => `${entry.Code}: ${entry.Message}`).join("; ")),
          });
        }
        lastFailure = (result.Failed ?? []).map((entry) => entry.Code).join(", ");
        pending = pending.filter((entry) => failed.has(entry.Id));
      } catch (error) {
        if (error instanceof ServiceUnavailableError) throw error;
        lastFailure = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
      }
    }
    if (pending.length > 0) {
      throw new ServiceUnavailableError(`could not queue snapshots for node ${host}`, undefined, {
        cause: new Error(`${pending.length} entries still failing: ${lastFailure}`),
      });
    }
  }
}
