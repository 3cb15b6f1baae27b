import { describe, expect, it } from "vitest";
import { loadConfig, loadNodes } from "../../lib/config.ts";

describe("CTH_NODES: the deployed nodes a router may be bound to", () => {
  it("unset or empty: any host (the local stack makes queues as routers need them)", () => {
    expect(loadNodes({})).toBeUndefined();
    expect(loadNodes({ CTH_NODES: " , " })).toBeUndefined();
  });

  it("a comma-separated list, spaces trimmed", () => {
    expect(loadNodes({ CTH_NODES: "net-1, net-2,net_3" })).toEqual(new Set(["net-1", "net-2", "net_3"]));
    expect(loadConfig({ CTH_NODES: "net-1" }).nodes).toEqual(new Set(["net-1"]));
  });

  it.each([["net 1"], ["net/1"], ["n".repeat(49)]])(
    "refuses %s with an error naming the variable",
    (name) => {
      expect(() => loadNodes({ CTH_NODES: `net-1,${name}` })).toThrow(/^CTH_NODES: .* is not a node name/);
    },
  );
});
