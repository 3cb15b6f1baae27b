/**
 * test/support/memory.ts's MemoryCacheClient stands in for Valkey/Redis under Powertools' CachePersistenceLayer
 * (the hostile HTTP property runs the real idempotency layer on it). One spec, two implementations: the fake
 * and a real redis-server on loopback through the `redis` client, then Powertools' layer on each.
 */
import { spawn, spawnSync } from "node:child_process";
import { IdempotencyConfig, makeIdempotent } from "@aws-lambda-powertools/idempotency";
import { CachePersistenceLayer } from "@aws-lambda-powertools/idempotency/cache";
import { createClient } from "redis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../../bench/stack-child.ts";
import { lambdaContext } from "../support/events.ts";
import { MemoryCacheClient } from "../support/memory.ts";

type Client = Pick<MemoryCacheClient, "get" | "set" | "del">;

const noRedis =
  spawnSync("redis-server", ["--version"], { stdio: "ignore" }).status === 0
    ? undefined
    : "needs redis-server";
if (noRedis && process.env.CI === "true") {
  describe("redis-server", () => {
    it("is available in CI (.ci/run installs it)", () => {
      throw new Error(`CI=true but this contract ${noRedis}`);
    });
  });
}

let redis: ReturnType<typeof spawn> | undefined;
let redisClient: ReturnType<typeof createClient> | undefined;
beforeAll(async () => {
  if (noRedis) return;
  const port = await freePort();
  redis = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    {
      stdio: "ignore",
    },
  );
  redisClient = createClient({ url: `redis://127.0.0.1:${port}` });
  redisClient.on("error", () => undefined);
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await redisClient.connect();
      break;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}, 20_000);
afterAll(async () => {
  await redisClient?.quit().catch(() => undefined);
  redis?.kill("SIGTERM");
});

const clients: [string, () => Client][] = [
  ["MemoryCacheClient", () => new MemoryCacheClient()],
  ...(noRedis
    ? []
    : ([["redis-server", () => redisClient as unknown as Client]] as [string, () => Client][])),
];

describe.each(clients)("cache client contract: %s", (_name, make) => {
  const key = (name: string) => `${name}-${Math.random().toString(36).slice(2)}`;

  it("answers null for a missing key and stores what is set", async () => {
    const client = make();
    const k = key("a");
    expect(await client.get(k)).toBeNull();
    expect(await client.set(k, "v1")).toBe("OK");
    expect(await client.get(k)).toBe("v1");
  });

  it("NX sets only a missing key", async () => {
    const client = make();
    const k = key("nx");
    expect(await client.set(k, "first", { NX: true, EX: 60 })).toBe("OK");
    expect(await client.set(k, "second", { NX: true, EX: 60 })).toBeNull();
    expect(await client.get(k)).toBe("first");
  });

  it("EX expires a key, after which NX may set it again", async () => {
    const client = make();
    const k = key("ex");
    await client.set(k, "short", { EX: 1 });
    await new Promise((resolve) => setTimeout(resolve, 1_300));
    expect(await client.get(k)).toBeNull();
    expect(await client.set(k, "again", { NX: true, EX: 60 })).toBe("OK");
  });

  it("DEL removes the keys that exist and counts them", async () => {
    const client = make();
    const [a, b] = [key("d"), key("d")];
    await client.set(a, "x");
    expect(await client.del([a, b])).toBe(1);
    expect(await client.get(a)).toBeNull();
  });

  it("carries Powertools' idempotency: the same payload runs once, its result is replayed", async () => {
    let runs = 0;
    const config = new IdempotencyConfig({ eventKeyJmesPath: "key" });
    config.registerLambdaContext(lambdaContext());
    const work = makeIdempotent(
      async (event: { key: string; n: number }) => {
        runs++;
        return { doubled: event.n * 2, run: runs };
      },
      {
        persistenceStore: new CachePersistenceLayer({ client: make() }),
        config,
      },
    );
    const k = key("idem");
    const first = await work({ key: k, n: 21 });
    const again = await work({ key: k, n: 21 });
    expect(first).toEqual({ doubled: 42, run: 1 });
    expect(again).toEqual(first);
    expect(runs).toBe(1);
  });
});
