/**
 * The SQS side of the agent: long poll, verify the dispatcher's signature, re-validate, park unauthenticated
 * and invalid messages in the DLQ at once, coalesce, keep each router's newest snapshot on disk
 * (agent/intake.ts applies it from there), and only then delete its messages.
 */
import {
  ChangeMessageVisibilityBatchCommand,
  ChangeMessageVisibilityCommand,
  DeleteMessageBatchCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  type Message,
  ReceiveMessageCommand,
  SendMessageCommand,
  type SQSClient,
} from "@aws-sdk/client-sqs";
import type { Logger } from "pino";
import type { RouterSyncMessage, Schemas } from "../lib/schemas/index.ts";
import { toFieldIssues } from "../lib/schemas/index.ts";
import { KEY_ID_ATTRIBUTE, SIGNATURE_ATTRIBUTE, type VerifyKeys, verifyBody } from "../lib/signing.ts";
import { type AgentCore, coalesce } from "./core.ts";
import { Intake } from "./intake.ts";
import type { AgentMetrics } from "./metrics.ts";

export interface PollerOptions {
  readonly sqs: SQSClient;
  readonly queueUrl: string;
  /** Explicit DLQ; otherwise resolved from the queue's RedrivePolicy. */
  readonly dlqUrl?: string | undefined;
  readonly core: AgentCore;
  readonly schema: Schemas["routerSync"];
  /** The dispatcher's public keys: a message not signed by one of them is never applied. */
  readonly verifyKeys: VerifyKeys;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  readonly waitSeconds?: number;
  readonly batchSize?: number;
  /** Visibility while a batch is in hand; renewed every third of it while applying. */
  readonly visibilitySeconds?: number;
  /**
   * Retry delay for snapshots that could not be applied yet (kept in state, agent/intake.ts) and for
   * messages that could not be kept or parked (left queued): base * 2^(attempts-1), capped.
   */
  readonly backoffBaseSeconds?: number;
  readonly backoffMaxSeconds?: number;
  /** Routers applied at once (default 4); one router's snapshots never overlap. */
  readonly applyConcurrency?: number;
}

interface Valid {
  readonly message: Message;
  readonly snapshot: RouterSyncMessage;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

export class QueuePoller {
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  private dlqUrl: string | undefined;
  private readonly wait: number;
  private readonly batch: number;
  private readonly visibility: number;
  /** Where verified snapshots are kept and applied from (agent/intake.ts). */
  private readonly intake: Intake;
  /** Messages received and not yet deleted, parked or backed off; the loop receives only below `batch`. */
  private held = 0;
  private readonly handling = new Set<Promise<void>>();
  private capacityFreed: (() => void) | undefined;
  /** Date.now() when a receive last came back without error (an empty long poll counts): /healthz. */
  private polledAt: number | undefined;

  constructor(private readonly options: PollerOptions) {
    this.dlqUrl = options.dlqUrl;
    this.wait = options.waitSeconds ?? 20;
    this.batch = options.batchSize ?? 10;
    this.visibility = options.visibilitySeconds ?? 30;
    this.intake = new Intake({
      core: options.core,
      state: options.core.state,
      metrics: options.metrics,
      logger: options.logger,
      applyConcurrency: options.applyConcurrency ?? 4,
      retryBaseSeconds: options.backoffBaseSeconds ?? 5,
      retryMaxSeconds: options.backoffMaxSeconds ?? 300,
    });
  }

  /** Resolves the DLQ from the queue's RedrivePolicy unless one was given. */
  async resolveDlq(): Promise<string | undefined> {
    if (this.dlqUrl) return this.dlqUrl;
    const { sqs, queueUrl, logger } = this.options;
    const attrs = await sqs.send(
      new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ["RedrivePolicy"] }),
    );
    const policy = attrs.Attributes?.RedrivePolicy;
    if (!policy) {
      logger.warn(
        { queue_url: queueUrl },
        "queue has no RedrivePolicy and no --dlq-url: invalid messages stay",
      );
      return undefined;
    }
    const arn = String((JSON.parse(policy) as { deadLetterTargetArn?: unknown }).deadLetterTargetArn ?? "");
    const [, , , , account, name] = arn.split(":");
    if (!name) throw new Error(`RedrivePolicy without a usable deadLetterTargetArn: ${arn}`);
    const { QueueUrl } = await sqs.send(
      new GetQueueUrlCommand({ QueueName: name, QueueOwnerAWSAccountId: account }),
    );
    this.dlqUrl = QueueUrl;
    return QueueUrl;
  }

  /** When a receive last succeeded (ms since the epoch); undefined before the first one. */
  lastPolledAt(): number | undefined {
    return this.polledAt;
  }

  /** Applies what a former run kept and did not apply, and starts polling. */
  start(): void {
    if (this.loop) return;
    const resumed = this.intake.resume();
    if (resumed > 0)
      this.options.logger.info({ routers: resumed }, "applying snapshots kept before a restart");
    this.loop = this.run();
  }

  /** Resolves once nothing taken off the queue is being applied (tests, benchmarks). */
  idle(): Promise<void> {
    return this.intake.idle();
  }

  /** Stops polling; resolves once every batch in hand and the applies in flight have finished. */
  async stop(): Promise<void> {
    this.abort.abort();
    this.capacityFreed?.();
    await this.loop;
    await this.intake.stop();
  }

  /**
   * Pipelined: the next receive goes out as soon as fewer than `batch` messages are in hand, not when the
   * whole previous batch is done, so a snapshot that arrives during an apply waits for a free slot only.
   * Per-router order still holds: FIFO delivers no message of a group while an earlier one is in flight.
   */
  private async run(): Promise<void> {
    const { logger } = this.options;
    let failures = 0;
    while (!this.abort.signal.aborted) {
      if (this.held >= this.batch) {
        await new Promise<void>((resolve) => {
          this.capacityFreed = resolve;
        });
        continue;
      }
      let messages: Message[];
      try {
        messages = await this.receive(this.batch - this.held);
        failures = 0;
      } catch (error) {
        if (this.abort.signal.aborted) break;
        failures++;
        logger.error({ err: error }, "poll failed");
        await sleep(Math.min(30_000, 500 * 2 ** Math.min(failures, 6)), this.abort.signal);
        continue;
      }
      if (messages.length === 0) continue;
      this.held += messages.length;
      const handled = this.handleBatch(messages, performance.now(), (count) => this.release(count))
        .catch((error: unknown) => {
          // What was not deleted becomes visible again after its timeout: redelivery is harmless.
          logger.error({ err: error }, "batch handling failed");
        })
        .finally(() => this.handling.delete(handled));
      this.handling.add(handled);
    }
    await Promise.allSettled([...this.handling]);
  }

  private release(count: number): void {
    this.held -= count;
    const wake = this.capacityFreed;
    this.capacityFreed = undefined;
    wake?.();
  }

  private async receive(max: number): Promise<Message[]> {
    const { sqs, queueUrl } = this.options;
    const received = await sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: queueUrl,
        MaxNumberOfMessages: Math.min(10, Math.max(1, max)),
        WaitTimeSeconds: this.wait,
        VisibilityTimeout: this.visibility,
        MessageSystemAttributeNames: ["ApproximateReceiveCount", "MessageGroupId"],
        MessageAttributeNames: [KEY_ID_ATTRIBUTE, SIGNATURE_ATTRIBUTE],
      }),
      { abortSignal: this.abort.signal },
    );
    this.polledAt = Date.now();
    return received.Messages ?? [];
  }

  /** One receive and the whole handling of its batch, applies included (tests and tools). */
  async pollOnce(): Promise<void> {
    const messages = await this.receive(this.batch);
    if (messages.length > 0) await this.handleBatch(messages, performance.now());
    await this.intake.idle();
  }

  /**
   * Validates, parks the invalid, coalesces per router and applies in the shared slots. `done(n)` is told as
   * each message leaves our hands (deleted, parked or backed off), so the loop can receive more.
   */
  async handleBatch(
    messages: readonly Message[],
    receivedAt: number,
    done: (count: number) => void = () => {},
  ): Promise<void> {
    const { schema, metrics, logger, verifyKeys } = this.options;
    const valid: Valid[] = [];
    for (const message of messages) {
      const body = message.Body ?? "";
      const keyId = stringAttribute(message, KEY_ID_ATTRIBUTE);
      // The signature covers the exact body string, checked before a byte of it is parsed.
      const verdict = verifyBody(verifyKeys, body, keyId, stringAttribute(message, SIGNATURE_ATTRIBUTE));
      if (!verdict.ok) {
        metrics.messages.inc({ outcome: "unauthenticated" });
        // Never the body (attacker-chosen); the key id only as far as it could be one.
        logger.warn(
          {
            message_id: message.MessageId,
            key_id: keyId?.slice(0, 64),
            reason: verdict.reason,
          },
          "unauthenticated queue message, parking it in the DLQ",
        );
        await this.parkOrBackOff(message, `unauthenticated:${verdict.reason}`);
        done(1);
        continue;
      }
      const result = (() => {
        try {
          return schema.safeParse(JSON.parse(body));
        } catch {
          return undefined;
        }
      })();
      if (result?.success) valid.push({ message, snapshot: result.data });
      else {
        metrics.messages.inc({ outcome: "invalid" });
        logger.warn(
          {
            message_id: message.MessageId,
            key_id: verdict.keyId,
            issues: result ? toFieldIssues(result.error).slice(0, 5) : [{ path: "", message: "not JSON" }],
          },
          "invalid queue message, parking it in the DLQ",
        );
        await this.parkOrBackOff(message, "invalid-router-sync");
        done(1);
      }
    }
    // Messages still in hand: the heartbeat renews only these (not deleted or backed-off ones).
    const inHand = new Set(valid.map((item) => item.message));
    const heartbeat = this.keepInvisible(inHand);
    try {
      const groups = coalesce(valid, (item) => item.snapshot);
      // Every group's newest is kept on disk first (one group commit), and only then are messages deleted.
      const kept = await Promise.allSettled(groups.map(({ newest }) => this.intake.accept(newest.snapshot)));
      const taken: Message[] = [];
      let superseded = 0;
      for (const [index, group] of groups.entries()) {
        const result = kept[index]!;
        if (result.status === "fulfilled") {
          superseded += group.superseded.length + (result.value === "superseded" ? 1 : 0);
          taken.push(group.newest.message, ...group.superseded.map((item) => item.message));
          logger.debug(
            {
              router_id: group.newest.snapshot.router_id,
              revision: group.newest.snapshot.revision,
              correlation_id: group.newest.snapshot.correlation_id,
              kept: result.value === "kept",
              received_to_kept_seconds: (performance.now() - receivedAt) / 1000,
            },
            "message taken off the queue",
          );
        } else {
          // Not on disk: left queued (the superseded too, harmlessly), to come back after its delay.
          logger.error({ err: result.reason }, "could not keep a snapshot; it stays queued");
          for (const item of [group.newest, ...group.superseded]) {
            inHand.delete(item.message);
            await this.backOff(item.message);
          }
          done(1 + group.superseded.length);
        }
      }
      if (superseded > 0) metrics.messages.inc({ outcome: "superseded" }, superseded);
      for (const message of taken) inHand.delete(message);
      try {
        await this.delete(taken);
      } finally {
        done(taken.length);
      }
    } finally {
      clearInterval(heartbeat);
    }
  }

  private keepInvisible(messages: ReadonlySet<Message>): NodeJS.Timeout {
    const { sqs, queueUrl, logger } = this.options;
    const timer = setInterval(
      () => {
        const entries = [...messages].map((message, index) => ({
          Id: String(index),
          ReceiptHandle: message.ReceiptHandle,
          VisibilityTimeout: this.visibility,
        }));
        if (entries.length === 0) return;
        sqs
          .send(new ChangeMessageVisibilityBatchCommand({ QueueUrl: queueUrl, Entries: entries }))
          .catch((error: unknown) => logger.warn({ err: error }, "visibility extension failed"));
      },
      (this.visibility * 1000) / 3,
    );
    timer.unref();
    return timer;
  }

  /** Leaves the message queued, invisible for an exponentially growing delay (no spinning). */
  private async backOff(message: Message): Promise<void> {
    const receives = Number(message.Attributes?.ApproximateReceiveCount ?? "1") || 1;
    const base = this.options.backoffBaseSeconds ?? 5;
    const max = this.options.backoffMaxSeconds ?? 300;
    const delay = Math.min(max, Math.round(base * 2 ** Math.min(receives - 1, 16)));
    try {
      await this.options.sqs.send(
        new ChangeMessageVisibilityCommand({
          QueueUrl: this.options.queueUrl,
          ReceiptHandle: message.ReceiptHandle,
          VisibilityTimeout: delay,
        }),
      );
    } catch (error) {
      this.options.logger.warn({ err: error }, "could not set retry delay; visibility timeout applies");
    }
  }

  private async parkOrBackOff(message: Message, reason: string): Promise<void> {
    try {
      await this.park(message, reason);
    } catch (error) {
      // Left queued (never applied): the queue's own redrive moves it after maxReceiveCount.
      this.options.logger.error(
        { err: error, message_id: message.MessageId, reason },
        "could not park message",
      );
      await this.backOff(message);
    }
  }

  /** Unauthenticated and invalid messages never become valid: copy to the DLQ explicitly, then delete. */
  private async park(message: Message, reason: string): Promise<void> {
    const dlq = this.dlqUrl ?? (await this.resolveDlq().catch(() => undefined));
    if (!dlq) {
      await this.backOff(message);
      return;
    }
    const fifo = dlq.endsWith(".fifo");
    await this.options.sqs.send(
      new SendMessageCommand({
        QueueUrl: dlq,
        MessageBody: message.Body && message.Body.length > 0 ? message.Body : "(empty)",
        MessageAttributes: {
          cth_reason: { DataType: "String", StringValue: reason },
          cth_source_message_id: { DataType: "String", StringValue: message.MessageId ?? "unknown" },
          // The claimed signature goes along, so an operator can tell a forgery from a dispatcher fault.
          ...copiedAttributes(message),
        },
        ...(fifo
          ? {
              MessageGroupId: message.Attributes?.MessageGroupId ?? "invalid",
              MessageDeduplicationId: message.MessageId,
            }
          : {}),
      }),
    );
    await this.delete([message]);
  }

  private async delete(messages: readonly Message[]): Promise<void> {
    if (messages.length === 0) return;
    const result = await this.options.sqs.send(
      new DeleteMessageBatchCommand({
        QueueUrl: this.options.queueUrl,
        Entries: messages.map((message, index) => ({
          Id: String(index),
          ReceiptHandle: message.ReceiptHandle,
        })),
      }),
    );
    if (result.Failed && result.Failed.length > 0) {
      // Redelivery is harmless: the revision guard drops it.
      this.options.logger.warn({ failed: result.Failed }, "some deletes failed");
    }
  }
}

/** A String message attribute's value; any other type counts as absent. */
function stringAttribute(message: Message, name: string): string | undefined {
  const attribute = message.MessageAttributes?.[name];
  return attribute?.DataType === "String" ? attribute.StringValue : undefined;
}

function copiedAttributes(message: Message): Record<string, { DataType: "String"; StringValue: string }> {
  const copied: Record<string, { DataType: "String"; StringValue: string }> = {};
  for (const name of [KEY_ID_ATTRIBUTE, SIGNATURE_ATTRIBUTE]) {
    const value = stringAttribute(message, name);
    if (value !== undefined && value.length > 0) copied[name] = { DataType: "String", StringValue: value };
  }
  return copied;
}
