import { describe, expect, it } from "vitest";
import {
  AWS_LIMITS,
  clipUtf8,
  KEPT_REPLICA_ERRORS,
  keptReplicaErrors,
  sqsMessageBytes,
  worstCaseRouterItemBytes,
  worstCaseSnapshotBytes,
  worstCaseTransactionBytes,
} from "../../lib/aws/limits.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS, type Limits, loadConfig } from "../../lib/config.ts";
import { buildSnapshot } from "../../lib/domain/snapshot.ts";
import { ValidationError } from "../../lib/errors.ts";
import { buildSchemas, parseNotificationBody } from "../../lib/schemas/index.ts";
import { SettingError } from "../../lib/settings.ts";
import { KEY_ID_ATTRIBUTE, SIGNATURE_ATTRIBUTE } from "../../lib/signing.ts";
import { fixedClock, newId, PROJECT_A, routerRecord, wireHelper } from "../support/factories.ts";
import { testKey } from "../support/signing.ts";

/** The largest value of `key` (counted up from 1, not searched) at which `fits` holds. */
function edge(key: keyof Limits, base: Limits, fits: (limits: Limits) => boolean): number {
  let value = 1;
  while (fits({ ...base, [key]: value + 1 })) value++;
  return value;
}

const env = (limits: Partial<Limits>, more: Record<string, string> = {}) => ({
  ...(limits.maxHelpersPerRouter ? { CTH_MAX_HELPERS_PER_ROUTER: String(limits.maxHelpersPerRouter) } : {}),
  ...(limits.maxHelpersPerNotification
    ? { CTH_MAX_HELPERS_PER_NOTIFICATION: String(limits.maxHelpersPerNotification) }
    : {}),
  ...more,
});

/** The SettingError loadConfig throws for `variables`, or a failure when it loads. */
function refusal(variables: Record<string, string>): SettingError {
  try {
    loadConfig(variables);
  } catch (error) {
    if (error instanceof SettingError) return error;
    throw error;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(variables)}`);
}

describe("routers item: at most DynamoDB's 400 KB at the per-router helper cap", () => {
  const fits = (limits: Limits) => worstCaseRouterItemBytes(limits) <= AWS_LIMITS.itemBytes;
  // One helper per notification: the transaction bound (a multiple of the item's) stays out of the way.
  const base = { ...DEFAULT_LIMITS, maxHelpersPerNotification: 1 };
  const last = edge("maxHelpersPerRouter", base, fits);

  it("grows with the cap, and the defaults fit with room to spare", () => {
    expect(worstCaseRouterItemBytes({ maxHelpersPerRouter: 2 })).toBeGreaterThan(
      worstCaseRouterItemBytes({ maxHelpersPerRouter: 1 }),
    );
    expect(worstCaseRouterItemBytes(DEFAULT_LIMITS)).toBeLessThan(AWS_LIMITS.itemBytes / 4);
    expect(last).toBeGreaterThan(DEFAULT_LIMITS.maxHelpersPerRouter);
  });

  it("loads at the edge and refuses one past it, naming the variable and the largest value", () => {
    expect(loadConfig(env({ ...base, maxHelpersPerRouter: last })).limits.maxHelpersPerRouter).toBe(last);
    const error = refusal(env({ ...base, maxHelpersPerRouter: last + 1 }));
    expect(error.setting).toBe("CTH_MAX_HELPERS_PER_ROUTER");
    expect(error.message).toMatch(
      new RegExp(
        `^CTH_MAX_HELPERS_PER_ROUTER is ${last + 1}: .* over DynamoDB's item limit .*; at most ${last}$`,
      ),
    );
  });

  it("is held with and without transactions (every write is one item)", () => {
    const error = refusal(
      env({ ...base, maxHelpersPerRouter: last + 1 }, { CTH_ROUTERS_TRANSACTIONS: "off" }),
    );
    expect(error.setting).toBe("CTH_MAX_HELPERS_PER_ROUTER");
  });
});

describe("TransactWriteItems: at most 100 actions, one per router a notification names", () => {
  const small = { ...DEFAULT_LIMITS, maxHelpersPerRouter: 16 };

  it("loads at 100 helpers per notification and refuses 101, naming the variable", () => {
    expect(
      loadConfig(env({ ...small, maxHelpersPerNotification: 100 })).limits.maxHelpersPerNotification,
    ).toBe(100);
    const error = refusal(env({ ...small, maxHelpersPerNotification: 101 }));
    expect(error.setting).toBe("CTH_MAX_HELPERS_PER_NOTIFICATION");
    expect(error.message).toMatch(
      /is 101: a notification could name 101 routers, .*TransactWriteItems.*at most 100$/,
    );
  });

  it("does not apply without transactions (router by router)", () => {
    const config = loadConfig(
      env({ ...small, maxHelpersPerNotification: 500 }, { CTH_ROUTERS_TRANSACTIONS: "off" }),
    );
    expect(config.limits.maxHelpersPerNotification).toBe(500);
  });

  it("a notification past the cap is a 422 naming conntrack_helpers, before any write", () => {
    const schemas = buildSchemas({ ...small, maxHelpersPerNotification: 100 }, new HelperCatalog());
    const body = (count: number) => ({
      event: "created",
      conntrack_helpers: Array.from({ length: count }, (_, port) => wireHelper(newId(), { port: port + 1 })),
    });
    expect(parseNotificationBody(schemas, body(100)).conntrack_helpers).toHaveLength(100);
    let thrown: unknown;
    try {
      parseNotificationBody(schemas, body(101));
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(ValidationError);
    expect((thrown as ValidationError).status).toBe(422);
    expect((thrown as ValidationError).details.map((issue) => issue.path)).toEqual(["conntrack_helpers"]);
  });
});

describe("TransactWriteItems: at most 4 MB of items in one notification's transaction", () => {
  const fits = (limits: Limits) => worstCaseTransactionBytes(limits) <= AWS_LIMITS.transactWriteBytes;

  it("at the default per-router cap: the edge loads, one more helper per notification is refused", () => {
    const last = edge("maxHelpersPerNotification", DEFAULT_LIMITS, fits);
    expect(last).toBeGreaterThanOrEqual(DEFAULT_LIMITS.maxHelpersPerNotification);
    expect(loadConfig(env({ maxHelpersPerNotification: last })).limits.maxHelpersPerNotification).toBe(last);
    const error = refusal(env({ maxHelpersPerNotification: last + 1 }));
    expect(error.setting).toBe("CTH_MAX_HELPERS_PER_NOTIFICATION");
    expect(error.message).toMatch(new RegExp(`TransactWriteItems.*at most ${last} helpers per notification`));
  });

  it("at the default per-notification cap: the edge loads, one more helper per router is refused", () => {
    const last = edge("maxHelpersPerRouter", DEFAULT_LIMITS, fits);
    expect(loadConfig(env({ maxHelpersPerRouter: last })).limits.maxHelpersPerRouter).toBe(last);
    const error = refusal(env({ maxHelpersPerRouter: last + 1 }));
    expect(error.setting).toBe("CTH_MAX_HELPERS_PER_NOTIFICATION");
    expect(error.message).toMatch(
      new RegExp(`with CTH_MAX_HELPERS_PER_ROUTER at ${last + 1}: .* or ${last} per router$`),
    );
  });

  it("the defaults load", () => {
    expect(loadConfig({}).limits).toEqual(DEFAULT_LIMITS);
  });
});

describe("snapshot message: within SQS's 1 MiB at every per-router cap the item bound allows", () => {
  it("a real signed snapshot at the worst case is within the bound", async () => {
    const helpers = 200;
    const record = routerRecord({
      routerId: newId(),
      projectId: PROJECT_A,
      revision: Number.MAX_SAFE_INTEGER,
      bindings: [{ host: "h".repeat(48), namespace: "qrouter" }],
      helpers: Array.from({ length: helpers }, (_, index) => ({
        id: newId(),
        protocol: "udp" as const,
        port: 65_535 - index,
        helper: "netbios-ns",
      })),
    });
    const snapshot = buildSnapshot(
      record,
      record.bindings[0]!,
      "c".repeat(128),
      fixedClock("+275760-09-13T00:00:00.000Z"),
    );
    const body = JSON.stringify(snapshot);
    const { keyId, signature } = await testKey("k".repeat(64)).signer.sign(body);
    const measured = sqsMessageBytes({
      MessageBody: body,
      MessageAttributes: {
        [KEY_ID_ATTRIBUTE]: { DataType: "String", StringValue: keyId },
        [SIGNATURE_ATTRIBUTE]: { DataType: "String", StringValue: signature },
      },
    });
    const bound = worstCaseSnapshotBytes({ maxHelpersPerRouter: helpers });
    expect(measured).toBeLessThanOrEqual(bound);
    // The ports here are shorter than 65535 for some helpers: the bound is close, not loose.
    expect(bound - measured).toBeLessThan(helpers * 2 + 64);
  });

  it("the largest cap a routers item allows still makes a message under SQS's limit", () => {
    const last = edge(
      "maxHelpersPerRouter",
      DEFAULT_LIMITS,
      (limits) => worstCaseRouterItemBytes(limits) <= AWS_LIMITS.itemBytes,
    );
    expect(worstCaseSnapshotBytes({ maxHelpersPerRouter: last })).toBeLessThan(AWS_LIMITS.sqsMessageBytes);
  });
});

describe("what the routers item keeps of a replica's errors", () => {
  it("clips UTF-8 at a character boundary, never inside one", () => {
    expect(clipUtf8("abc", 3)).toBe("abc");
    expect(clipUtf8("abcd", 3)).toBe("abc");
    // "€" is 3 bytes, "😀" 4 (two UTF-16 units).
    expect(clipUtf8("€€", 5)).toBe("€");
    expect(clipUtf8("😀😀", 7)).toBe("😀");
    expect(clipUtf8("😀😀", 8)).toBe("😀😀");
    expect(clipUtf8("😀", 3)).toBe("");
  });

  it("keeps the first few, those naming no helper first, each code and message clipped", () => {
    const perHelper = Array.from({ length: 6 }, (_, index) => ({
      helper_id: newId(),
      code: `missing_${index}`,
      message: "€".repeat(512),
    }));
    const routerLevel = { code: "content_mismatch", message: "the rules read back differ" };
    const kept = keptReplicaErrors([...perHelper, routerLevel]);
    expect(kept).toHaveLength(KEPT_REPLICA_ERRORS.count);
    expect(kept[0]).toEqual(routerLevel);
    expect(kept.slice(1).map((error) => error.code)).toEqual(["missing_0", "missing_1", "missing_2"]);
    for (const error of kept) {
      expect(Buffer.byteLength(error.message, "utf8")).toBeLessThanOrEqual(KEPT_REPLICA_ERRORS.messageBytes);
    }
    expect(kept[1]!.message).toBe("€".repeat(Math.floor(KEPT_REPLICA_ERRORS.messageBytes / 3)));
  });

  it("leaves a short list as it is", () => {
    const errors = [{ helper_id: newId(), code: "helper_unavailable", message: "no nf_conntrack_sane" }];
    expect(keptReplicaErrors(errors)).toEqual(errors);
  });
});
