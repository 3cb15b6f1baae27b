/**
 * `CTH_LOCAL_DATA_DIR`: the routers table survives a restart of the local stack, and the agent (which starts
 * with a fresh state, its namespaces removed at the last stop) gets every kept router back into the kernel
 * through its resync request.
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { api, type StackChild, startStackChild } from "../../bench/stack-child.ts";
import type { StackInfo } from "../../scripts/local/stack.ts";
import { describeKernel } from "../support/requirements.ts";

const ROOT = join(import.meta.dirname, "../..");

const rawTable = (ns: string): string => {
  try {
    return execFileSync("ip", ["netns", "exec", ns, "iptables-save", "-t", "raw"], { encoding: "utf8" });
  } catch {
    return "";
  }
};

async function until<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describeKernel("local stack with a data directory", () => {
  const dataDir = mkdtempSync(join(tmpdir(), "cth-data-"));
  let stack: StackChild | undefined;
  afterAll(async () => {
    await stack?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("keeps routers and helpers across a restart and puts their rules back in the kernel", async () => {
    const env = { CTH_LOCAL_DATA_DIR: dataDir };
    const routerId = randomUUID();
    const helperId = randomUUID();
    const ns = `qrouter-${routerId}`;
    stack = await startStackChild(ROOT, { env });
    const put = await api(stack, stack.adminToken, "PUT", `/v1/routers/${routerId}`, {
      project_id: stack.project,
      host: "local",
    });
    expect(put.status).toBe(201);
    const post = await api(stack, stack.token, "POST", "/v1/notifications", {
      event: "created",
      conntrack_helpers: [{ id: helperId, router_id: routerId, protocol: "udp", port: 69, helper: "tftp" }],
    });
    expect(post.status).toBe(202);
    await until("the rule", 30_000, async () =>
      rawTable(ns).includes(`cth:${helperId}`) ? true : undefined,
    );
    // One router bound to a second host, one that left a third (that host only drains now): after the
    // restart both hosts need their queues, or every send and sweep to them fails.
    const replicated = randomUUID();
    const elsewhere = randomUUID();
    const bindTo = (id: string, hosts: string[]) =>
      api(stack!, stack!.adminToken, "PUT", `/v1/routers/${id}`, {
        project_id: stack!.project,
        bindings: hosts.map((host) => ({ host, namespace: "qrouter" })),
      });
    expect((await bindTo(replicated, ["local", "net-3"])).status).toBe(201);
    expect((await bindTo(elsewhere, ["net-4"])).status).toBe(201);
    await api(stack, stack.token, "POST", "/v1/notifications", {
      event: "created",
      conntrack_helpers: [
        { id: randomUUID(), router_id: elsewhere, protocol: "tcp", port: 21, helper: "ftp" },
      ],
    });
    expect((await bindTo(elsewhere, ["local"])).status).toBe(200);
    await stack.stop();
    stack = undefined;
    // The stack removed the namespace it made; only the table on disk remembers the router.
    expect(rawTable(ns)).toBe("");

    stack = await startStackChild(ROOT, { env });
    const nodes = (JSON.parse(readFileSync(join(stack.dir, "stack.json"), "utf8")) as StackInfo).nodes;
    expect(nodes.map((node) => node.host).sort()).toEqual(["local", "net-3", "net-4"]);
    const state = (await api(stack, stack.token, "GET", `/v1/routers/${routerId}/conntrack-helpers`))
      .json as {
      revision: number;
      helpers: { id: string }[];
    };
    expect(state.revision).toBe(1);
    expect(state.helpers.map((h) => h.id)).toEqual([helperId]);
    await until("the rule back after the restart", 30_000, async () =>
      rawTable(ns).includes(`cth:${helperId}`) ? true : undefined,
    );
    await until("in sync", 30_000, async () => {
      const view = (await api(stack!, stack!.token, "GET", `/v1/routers/${routerId}/conntrack-helpers`))
        .json as {
        in_sync: boolean;
      };
      return view.in_sync ? true : undefined;
    });
  }, 120_000);
});
