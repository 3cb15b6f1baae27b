/**
 * SendMessageBatch split by SQS's bytes as well as by its 10 entries, on fauxqs (which enforces SQS's 1 MiB
 * per request and counts bytes as SQS does). Requests are counted by an SDK middleware on the real client.
 */
import type { SendMessageBatchCommandInput, SQSClient } from "@aws-sdk/client-sqs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CommandQueueOptions, SqsCommandQueue } from "../../lib/aws/command-queue.ts";
import { AWS_LIMITS, sqsMessageBytes } from "../../lib/aws/limits.ts";
import { InternalError, ServiceUnavailableError } from "../../lib/errors.ts";
import type { RouterSyncMessage } from "../../lib/schemas/index.ts";
import { KEY_ID_ATTRIBUTE, SIGNATURE_ATTRIBUTE, type SnapshotSigner } from "../../lib/signing.ts";
import { type Emulators, startEmulators } from "../support/emulators.ts";
import { newId } from "../support/factories.ts";
import { testKey } from "../support/signing.ts";

let emu: Emulators;
let sqs: SQSClient;
/** The entries of each SendMessageBatch request the client sent, in order. */
let requests: NonNullable<SendMessageBatchCommandInput["Entries"]>[] = [];

beforeAll(async () => {
  emu = await startEmulators();
  sqs = emu.clients(emu.makeConfig()).sqs;
  sqs.middlewareStack.add(
    (next, context) => async (args) => {
      if (context.commandName === "SendMessageBatchCommand") {
        requests.push([...((args.input as SendMessageBatchCommandInput).Entries ?? [])]);
      }
      return next(args);
    },
    { step: "initialize", name: "countSendMessageBatch" },
  );
});

afterAll(async () => {
  await emu?.stop();
});

/** Signatures of one fixed length, so that every message's size is known to the byte. */
const fixedSigner: SnapshotSigner = { sign: async () => ({ keyId: "test-key", signature: "A".repeat(96) }) };

/** A snapshot padded (through its correlation id, which the queue does not read) to `bytes` as SQS counts. */
function snapshotOf(bytes: number): RouterSyncMessage {
  const message: RouterSyncMessage = {
    v: 1,
    kind: "router-sync",
    router_id: newId(),
    revision: 1,
    namespace: "qrouter",
    helpers: [],
    correlation_id: "",
    issued_at: "2026-12-03T00:00:00.000Z",
  };
  const padding = bytes - sizeOf(message);
  if (padding < 0) throw new Error(`a snapshot is at least ${sizeOf(message)} bytes`);
  return { ...message, correlation_id: "c".repeat(padding) };
}

const sizeOf = (message: RouterSyncMessage): number =>
  sqsMessageBytes({
    MessageBody: JSON.stringify(message),
    MessageAttributes: {
      [KEY_ID_ATTRIBUTE]: { DataType: "String", StringValue: "test-key" },
      [SIGNATURE_ATTRIBUTE]: { DataType: "String", StringValue: "A".repeat(96) },
    },
  });

async function queueFor(
  options: Partial<CommandQueueOptions> = {},
  signer = fixedSigner,
): Promise<{ queue: SqsCommandQueue; url: string }> {
  const host = `bytes-${newId().slice(0, 8)}`;
  const { url } = await emu.createNodeQueue(host);
  const queue = new SqsCommandQueue(sqs, () => url, signer, { maxAttempts: 2, baseDelayMs: 1, ...options });
  requests = [];
  return { queue, url };
}

const bytesOf = (entries: (typeof requests)[number]) =>
  entries.reduce((sum, e) => sum + sqsMessageBytes(e), 0);

describe("SqsCommandQueue: SendMessageBatch within SQS's bytes and entries", () => {
  it("splits by a byte budget: 25 messages three to a request are 9 requests, all delivered", async () => {
    const size = 2_000;
    const { queue, url } = await queueFor({ maxBatchBytes: 3 * size });
    const sent = Array.from({ length: 25 }, () => snapshotOf(size));
    await queue.send("node", sent);
    expect(requests.map((entries) => entries.length)).toEqual([3, 3, 3, 3, 3, 3, 3, 3, 1]);
    for (const entries of requests) expect(bytesOf(entries)).toBeLessThanOrEqual(3 * size);
    const received = (await emu.drain(url)).map((m) => (JSON.parse(m.Body!) as RouterSyncMessage).router_id);
    expect(received.sort()).toEqual(sent.map((m) => m.router_id).sort());
  });

  it("a request exactly at the budget is one request; one byte less budget splits it", async () => {
    const size = 1_500;
    const atBudget = await queueFor({ maxBatchBytes: 2 * size });
    await atBudget.queue.send("node", [snapshotOf(size), snapshotOf(size)]);
    expect(requests.map(bytesOf)).toEqual([2 * size]);

    const pastBudget = await queueFor({ maxBatchBytes: 2 * size - 1 });
    await pastBudget.queue.send("node", [snapshotOf(size), snapshotOf(size)]);
    expect(requests.map(bytesOf)).toEqual([size, size]);
    expect(await emu.depth(pastBudget.url)).toBe(2);
  });

  it("still holds 10 entries per request when the bytes would allow more", async () => {
    const { queue } = await queueFor();
    await queue.send(
      "node",
      Array.from({ length: 25 }, () => snapshotOf(600)),
    );
    expect(requests.map((entries) => entries.length)).toEqual([10, 10, 5]);
  });

  it("at SQS's own 1 MiB: two halves go in one request, one byte more and they go in two (fauxqs takes both)", async () => {
    const half = AWS_LIMITS.sqsBatchBytes / 2;
    const exact = await queueFor();
    await exact.queue.send("node", [snapshotOf(half), snapshotOf(half)]);
    expect(requests.map(bytesOf)).toEqual([AWS_LIMITS.sqsBatchBytes]);
    expect(await emu.depth(exact.url)).toBe(2);

    const over = await queueFor();
    await over.queue.send("node", [snapshotOf(half + 1), snapshotOf(half)]);
    expect(requests.map(bytesOf)).toEqual([half + 1, half]);
    expect(await emu.depth(over.url)).toBe(2);
  });

  it("large real-signed snapshots that would be 1.5 MiB in one request are split, and fauxqs takes them", async () => {
    const { queue, url } = await queueFor({}, testKey().signer);
    await queue.send(
      "node",
      Array.from({ length: 5 }, () => snapshotOf(300_000)),
    );
    expect(requests.length).toBeGreaterThan(1);
    for (const entries of requests) expect(bytesOf(entries)).toBeLessThanOrEqual(AWS_LIMITS.sqsBatchBytes);
    expect(await emu.depth(url)).toBe(5);
  });

  it("fauxqs refuses the same snapshots in one request (a budget past SQS's): the split is what lets them in", async () => {
    const { queue, url } = await queueFor({ maxBatchBytes: 2 * AWS_LIMITS.sqsBatchBytes });
    await expect(
      queue.send(
        "node",
        Array.from({ length: 5 }, () => snapshotOf(300_000)),
      ),
    ).rejects.toThrow(ServiceUnavailableError);
    expect(requests.map((entries) => entries.length)).toEqual([5, 5]);
    expect(await emu.depth(url)).toBe(0);
  });

  it("a message at the per-message limit is sent; one byte over refuses the whole send before any request", async () => {
    const size = 1_000;
    const fits = await queueFor({ maxMessageBytes: size });
    await fits.queue.send("node", [snapshotOf(size)]);
    expect(requests).toHaveLength(1);

    const { queue, url } = await queueFor({ maxMessageBytes: size });
    const oversized = snapshotOf(size + 1);
    const sending = queue.send("node", [snapshotOf(10 * 60), oversized]);
    await expect(sending).rejects.toBeInstanceOf(InternalError);
    await expect(sending).rejects.toThrow(
      `the snapshot of router ${oversized.router_id} is ${size + 1} bytes, over SQS's message limit of ${size}`,
    );
    expect(requests).toHaveLength(0);
    expect(await emu.depth(url)).toBe(0);
  });
});
