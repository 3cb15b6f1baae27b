/**
 * The routers item at its worst, written by the real store to dynalite and measured: never above the bound
 * lib/config.ts holds the per-router helper cap to (so the bound is not an under-estimate), at the default
 * cap and at the largest the bound allows.
 */
import { createRequire } from "node:module";
import { type AttributeValue, GetItemCommand } from "@aws-sdk/client-dynamodb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AWS_LIMITS,
  DRAINING_HOSTS_BUDGET,
  KEPT_REPLICA_ERRORS,
  worstCaseRouterItemBytes,
} from "../../lib/aws/limits.ts";
import { DynamoRoutersStore } from "../../lib/aws/routers-store.ts";
import { type Config, DEFAULT_LIMITS, FIELD_LIMITS } from "../../lib/config.ts";
import type { ReplicaStatus, RouterRecord } from "../../lib/ports.ts";
import { MAX_BINDINGS } from "../../lib/schemas/index.ts";
import { type Emulators, startEmulators } from "../support/emulators.ts";
import { newId } from "../support/factories.ts";

const require = createRequire(import.meta.url);
/** dynalite's own item size (it counts a string's UTF-16 units, so it is the smaller reading for non-ASCII). */
const dynaliteItemSize = (
  require("dynalite/db") as { itemSize(item: Record<string, AttributeValue>): number }
).itemSize;

/** DynamoDB's documented rules, strings in UTF-8: names and values, 3 + 1 per element for lists and maps. */
function valueBytes(value: AttributeValue): number {
  if (value.S !== undefined) return Buffer.byteLength(value.S, "utf8");
  if (value.N !== undefined) return Math.ceil(value.N.replace(/^-|\.|^0+|0+$/g, "").length / 2) + 1;
  if (value.BOOL !== undefined || value.NULL !== undefined) return 1;
  if (value.L !== undefined) return 3 + value.L.reduce((sum, element) => sum + 1 + valueBytes(element), 0);
  if (value.M !== undefined) return 3 + Object.keys(value.M).length + itemBytes(value.M);
  throw new Error(`no size rule for ${JSON.stringify(value)}`);
}
const itemBytes = (item: Record<string, AttributeValue>): number =>
  Object.entries(item).reduce(
    (sum, [name, value]) => sum + Buffer.byteLength(name, "utf8") + valueBytes(value),
    0,
  );

const LATEST = "+275760-09-13T00:00:00.000Z";
const host = (prefix: string, index: number) => `${prefix}${index}`.padEnd(FIELD_LIMITS.host, "x");

/** Every field at its longest: 8 bindings, 16 replicas with more errors than kept, 4-byte characters. */
function worstRecord(helpers: number): RouterRecord {
  const replica: ReplicaStatus = {
    revision: Number.MAX_SAFE_INTEGER,
    at: LATEST,
    errors: Array.from({ length: KEPT_REPLICA_ERRORS.count + 3 }, () => ({
      helper_id: newId(),
      code: "😀".repeat(64),
      message: "😀".repeat(FIELD_LIMITS.errorMessage),
    })),
    content: "mismatch",
  };
  return {
    routerId: newId(),
    projectId: "p".repeat(FIELD_LIMITS.projectId),
    bindings: Array.from({ length: MAX_BINDINGS }, (_, index) => ({
      host: host("bound", index),
      namespace: "qrouter",
    })),
    revision: Number.MAX_SAFE_INTEGER - 1,
    helpers: Array.from({ length: helpers }, (_, index) => ({
      id: newId(),
      protocol: "udp",
      port: 65_535 - (index % 55_000),
      helper: "netbios-ns",
    })),
    replicas: Object.fromEntries(
      Array.from({ length: 2 * MAX_BINDINGS }, (_, index) => [
        index < MAX_BINDINGS ? host("bound", index) : host("left", index),
        replica,
      ]),
    ),
    draining: Object.fromEntries(
      Array.from({ length: DRAINING_HOSTS_BUDGET }, (_, index) => [
        host("drain", index),
        Number.MAX_SAFE_INTEGER,
      ]),
    ),
    updatedAt: LATEST,
  };
}

let emu: Emulators;
let config: Config;
let store: DynamoRoutersStore;

beforeAll(async () => {
  emu = await startEmulators();
  config = emu.makeConfig();
  await emu.createTables(config);
  store = new DynamoRoutersStore(emu.clients(config).dynamo, config.routersTable, { transactions: false });
});

afterAll(async () => {
  await emu?.stop();
});

async function writtenItem(record: RouterRecord): Promise<Record<string, AttributeValue>> {
  await store.put(record, undefined);
  const { Item } = await emu.clients(config).dynamoRaw.send(
    new GetItemCommand({
      TableName: config.routersTable,
      Key: { router_id: { S: record.routerId } },
      ConsistentRead: true,
    }),
  );
  return Item!;
}

describe("routers item: the measured worst case stays within the bound", () => {
  it("at the default per-router cap", async () => {
    const limits = DEFAULT_LIMITS;
    const item = await writtenItem(worstRecord(limits.maxHelpersPerRouter));
    const bound = worstCaseRouterItemBytes(limits);
    expect(itemBytes(item)).toBeLessThanOrEqual(bound);
    expect(dynaliteItemSize(item)).toBeLessThanOrEqual(bound);
    // The record above is the worst case the bound describes, not a small one that passes trivially.
    expect(itemBytes(item)).toBeGreaterThan(0.97 * bound);
  });

  it("at the largest cap the bound allows: dynalite takes the write, and it is under DynamoDB's 400 KB", async () => {
    let last = DEFAULT_LIMITS.maxHelpersPerRouter;
    while (worstCaseRouterItemBytes({ maxHelpersPerRouter: last + 1 }) <= AWS_LIMITS.itemBytes) last++;
    const item = await writtenItem(worstRecord(last));
    expect(itemBytes(item)).toBeLessThanOrEqual(worstCaseRouterItemBytes({ maxHelpersPerRouter: last }));
    expect(itemBytes(item)).toBeLessThanOrEqual(AWS_LIMITS.itemBytes);
  });

  it("keeps the first errors of each replica, clipped, and reads them back", async () => {
    const record = worstRecord(1);
    await store.put(record, undefined);
    const read = await store.get(record.routerId);
    const errors = read!.replicas[record.bindings[0]!.host]!.errors;
    expect(errors).toHaveLength(KEPT_REPLICA_ERRORS.count);
    for (const error of errors) {
      expect(Buffer.byteLength(error.code, "utf8")).toBe(KEPT_REPLICA_ERRORS.codeBytes);
      expect(Buffer.byteLength(error.message, "utf8")).toBe(KEPT_REPLICA_ERRORS.messageBytes);
    }
  });
});
