/**
 * The AWS limits a valid request can reach, and the worst-case size of what each one bounds, derived from
 * the schemas' caps: lib/config.ts refuses a setting that would let a request exceed one (an error naming
 * the variable when the function starts, never a 500 at run time). Sizes follow each service's documented
 * rules, rounded up; the tests build the worst case for real and check that it stays within these bounds.
 */
import type { SendMessageBatchRequestEntry } from "@aws-sdk/client-sqs";
import { KERNEL_HELPERS } from "../catalog.ts";
import type { Limits } from "../config.ts";
import type { ReplicaContent } from "../ports.ts";
import { FIELD_LIMITS } from "../schemas/field-limits.ts";
import { type ApplyError, MAX_BINDINGS, namespaceKind, type RouterSyncMessage } from "../schemas/index.ts";
import { KEY_ID_ATTRIBUTE, SIGNATURE_ATTRIBUTE } from "../signing.ts";
import {
  bindingSlotAttribute,
  OUT_OF_SYNC_ATTRIBUTE,
  SYNC_REVISION_ATTRIBUTE,
  TOMBSTONE_FLAG,
} from "./tables.ts";

/** From the AWS documentation; DynamoDB's "KB" and "MB" read as the smaller, decimal values. */
export const AWS_LIMITS = {
  /** TransactWriteItems: actions in one request. */
  transactWriteActions: 100,
  /** TransactWriteItems: "the aggregate size of the items in the transaction cannot exceed 4 MB". */
  transactWriteBytes: 4_000_000,
  /** DynamoDB: one item, attribute names and values (400 KB). */
  itemBytes: 400_000,
  /** SQS: one message, its body and its attributes' names, types and values (1 MiB). */
  sqsMessageBytes: 1_048_576,
  /** SQS SendMessageBatch: the sum of its messages (1 MiB). */
  sqsBatchBytes: 1_048_576,
  /** SQS SendMessageBatch: entries in one request. */
  sqsBatchEntries: 10,
} as const;

/**
 * What the routers item keeps of one replica's errors (the report may carry maxHelpersPerRouter + 8, each
 * message up to 512 characters): the first few, those naming no helper first (they say the router could not
 * be placed at all), code and message clipped to these UTF-8 byte lengths. Without the clip a node's reports
 * alone could take its routers' items past DynamoDB's item limit at any helper cap.
 */
export const KEPT_REPLICA_ERRORS = { count: 4, codeBytes: 64, messageBytes: 256 } as const;

/**
 * Replicas an item may hold: one per binding, and one per host just unbound whose report raced the unbinding
 * write (the next desired write removes it). Hosts left draining: bounded by assumption, as a router leaves
 * hosts only by an operator's rebinding and each confirms its empty snapshot; this many unconfirmed at once.
 */
const REPLICAS_PER_ITEM = 2 * MAX_BINDINGS;
export const DRAINING_HOSTS_BUDGET = 4 * MAX_BINDINGS;

/** `text` clipped to at most `maxBytes` of UTF-8, never inside a character. */
export function clipUtf8(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text, "utf8") <= maxBytes) return text;
  let bytes = 0;
  let end = 0;
  for (const character of text) {
    bytes += Buffer.byteLength(character, "utf8");
    if (bytes > maxBytes) break;
    end += character.length;
  }
  return text.slice(0, end);
}

/** The errors the routers item keeps of a replica's (KEPT_REPLICA_ERRORS). */
export function keptReplicaErrors(errors: readonly ApplyError[]): ApplyError[] {
  const routerLevel = errors.filter((error) => error.helper_id === undefined);
  const perHelper = errors.filter((error) => error.helper_id !== undefined);
  return [...routerLevel, ...perHelper].slice(0, KEPT_REPLICA_ERRORS.count).map((error) => ({
    ...error,
    code: clipUtf8(error.code, KEPT_REPLICA_ERRORS.codeBytes),
    message: clipUtf8(error.message, KEPT_REPLICA_ERRORS.messageBytes),
  }));
}

// DynamoDB's item size rules: a name or string is its UTF-8 bytes; a number one byte per two significant
// digits plus one (plus one more here: dynalite counts up to that); a list or map 3 bytes, plus 1 per
// element, plus its elements (a map's keys count as names).
const UUID = 36;
const REVISION = Math.ceil(String(Number.MAX_SAFE_INTEGER).length / 2) + 2;
const PORT = Math.ceil(String(65_535).length / 2) + 2;
/** Date#toISOString: 24 characters, 27 past the year 9999. */
const TIMESTAMP = 27;
const longest = (values: readonly string[]): number =>
  Math.max(...values.map((value) => Buffer.byteLength(value, "utf8")));
/** Stored and queued helpers carry the catalog's canonical name. */
const HELPER_NAME = longest(KERNEL_HELPERS.map((spec) => spec.name));
const NAMESPACE = longest(namespaceKind.options);
const CONTENT = longest(["match", "partial", "mismatch", "behind"] satisfies ReplicaContent[]);

const named = (name: string, value: number): number => Buffer.byteLength(name, "utf8") + value;
/** A map of these (name, value size) entries. */
const map = (entries: readonly (readonly [string, number])[]): number =>
  3 + entries.reduce((sum, [name, value]) => sum + 1 + named(name, value), 0);
/** A list of `count` elements of `size` bytes each. */
const list = (count: number, size: number): number => 3 + count * (1 + size);

const HELPER_ITEM = map([
  ["id", UUID],
  ["protocol", 3],
  ["port", PORT],
  ["helper", HELPER_NAME],
]);

const REPLICA_ITEM = map([
  ["revision", REVISION],
  ["at", TIMESTAMP],
  [
    "errors",
    list(
      KEPT_REPLICA_ERRORS.count,
      map([
        ["helper_id", UUID],
        ["code", KEPT_REPLICA_ERRORS.codeBytes],
        ["message", KEPT_REPLICA_ERRORS.messageBytes],
      ]),
    ),
  ],
  ["content", CONTENT],
]);

/** The largest a live router's item can be (a tombstone is smaller), at `limits.maxHelpersPerRouter`. */
export function worstCaseRouterItemBytes(limits: Pick<Limits, "maxHelpersPerRouter">): number {
  const host = FIELD_LIMITS.host;
  const hostMap = (count: number, value: number) => 3 + count * (1 + host + value);
  const slots = Array.from({ length: MAX_BINDINGS }, (_, slot) => named(bindingSlotAttribute(slot), host));
  return (
    named("router_id", UUID) +
    named("project_id", FIELD_LIMITS.projectId) +
    named(
      "bindings",
      list(
        MAX_BINDINGS,
        map([
          ["host", host],
          ["namespace", NAMESPACE],
        ]),
      ),
    ) +
    slots.reduce((sum, size) => sum + size, 0) +
    named("revision", REVISION) +
    named("helpers", list(limits.maxHelpersPerRouter, HELPER_ITEM)) +
    named("replicas", hostMap(REPLICAS_PER_ITEM, REPLICA_ITEM)) +
    named("draining", hostMap(DRAINING_HOSTS_BUDGET, REVISION)) +
    named("updated_at", TIMESTAMP) +
    named(OUT_OF_SYNC_ATTRIBUTE, Math.max(FIELD_LIMITS.projectId, TOMBSTONE_FLAG.length)) +
    named(SYNC_REVISION_ATTRIBUTE, REVISION)
  );
}

/**
 * Routers one notification can name, each one TransactWriteItems action (an Update or a Put): every helper
 * change names one router, so at most as many as a notification holds helpers.
 */
export function transactActionsPerNotification(limits: Pick<Limits, "maxHelpersPerNotification">): number {
  return limits.maxHelpersPerNotification;
}

/** The aggregate size of one notification's transaction: every router it names at its largest. */
export function worstCaseTransactionBytes(limits: Limits): number {
  return transactActionsPerNotification(limits) * worstCaseRouterItemBytes(limits);
}

/** SQS's size of a message: its body and each attribute's name, data type and value, in UTF-8 bytes. */
export function sqsMessageBytes(
  message: Pick<SendMessageBatchRequestEntry, "MessageBody" | "MessageAttributes">,
): number {
  const utf8 = (text: string | undefined) => Buffer.byteLength(text ?? "", "utf8");
  let bytes = utf8(message.MessageBody);
  for (const [name, value] of Object.entries(message.MessageAttributes ?? {})) {
    bytes += utf8(name) + utf8(value.DataType) + utf8(value.StringValue);
  }
  return bytes;
}

/** A DER ECDSA P-256 signature is at most 72 bytes: 96 characters of base64 (lib/signing.ts). */
const SIGNATURE_BASE64 = 96;
const KEY_ID = 64;

/** A RouterSyncMessage with `helpers` helpers, every field at its longest (its JSON is all ASCII). */
function worstCaseSnapshot(helpers: number): RouterSyncMessage {
  const helper = {
    id: "0".repeat(UUID),
    protocol: "tcp" as const,
    port: 65_535,
    helper: "h".repeat(HELPER_NAME),
  };
  return {
    v: 1,
    kind: "router-sync",
    router_id: "0".repeat(UUID),
    revision: Number.MAX_SAFE_INTEGER,
    namespace: "qrouter",
    helpers: Array.from({ length: helpers }, () => helper),
    correlation_id: "c".repeat(FIELD_LIMITS.correlationId),
    issued_at: new Date(8.64e15).toISOString(),
  };
}

/** The largest snapshot message SQS is sent at `limits.maxHelpersPerRouter`: body and signature attributes. */
export function worstCaseSnapshotBytes(limits: Pick<Limits, "maxHelpersPerRouter">): number {
  const attributes = {
    [KEY_ID_ATTRIBUTE]: { DataType: "String", StringValue: "k".repeat(KEY_ID) },
    [SIGNATURE_ATTRIBUTE]: { DataType: "String", StringValue: "s".repeat(SIGNATURE_BASE64) },
  };
  const empty = JSON.stringify(worstCaseSnapshot(0)).length;
  const one = JSON.stringify(worstCaseSnapshot(1)).length;
  // Each further helper adds its JSON and a comma.
  const helpers = limits.maxHelpersPerRouter;
  const body = empty + helpers * (one - empty) + Math.max(0, helpers - 1);
  return body + sqsMessageBytes({ MessageBody: "", MessageAttributes: attributes });
}
