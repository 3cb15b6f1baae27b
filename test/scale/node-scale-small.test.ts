/**
 * The node-scale benchmark kept from rotting (bench/node-scale.ts, `npm run bench -- --only node` runs it at
 * 1,000 routers): the real agent bundle's cold start on 20 real namespaces per backend, every one read back,
 * the agent's memory bounded; and the state bytes per snapshot not growing with the node. Counts and bytes
 * only: the times belong to the benchmark.
 */
import { resolve } from "node:path";
import { expect, it } from "vitest";
import { benchNodeScale, benchStateBytes } from "../../bench/node-scale.ts";
import { describeKernel } from "../support/requirements.ts";

const ROOT = resolve(import.meta.dirname, "../..");

describeKernel("node scale, small: the agent process's cold start on 20 routers", () => {
  it("every router applied, verified and read back by each backend, the agent under 150 MiB", async () => {
    const rows = await benchNodeScale({
      root: ROOT,
      routers: 20,
      backends: ["nftables", "iptables"],
      concurrencyLevels: [2],
      verifySample: 20,
      log: () => undefined,
    });
    expect(rows.map((row) => row.backend)).toEqual(["nftables", "iptables"]);
    for (const row of rows) {
      expect(row.verified).toEqual({ held: 20, read: 20 });
      expect(row.agentRssMiB).toBeGreaterThan(0);
      expect(row.agentRssMiB).toBeLessThanOrEqual(150);
      expect(row.stateBytes).toBeGreaterThan(0);
    }
  }, 180_000);
});

it("state bytes per snapshot on a node of 300 routers stay within 10x of a node of 10", async () => {
  const small = await benchStateBytes(10, 100);
  const large = await benchStateBytes(300, 100);
  expect(small.bytesPerChange).toBeGreaterThan(0);
  expect(large.bytesPerChange).toBeLessThanOrEqual(10 * small.bytesPerChange);
  // A whole-map rewrite at 300 routers would be far over that bound: the measure can tell the two apart.
  expect(large.wholeMapBytes).toBeGreaterThan(10 * small.bytesPerChange);
});
