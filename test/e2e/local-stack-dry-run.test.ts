/**
 * `npm start` on a machine without root or iptables (forced here with CTH_LOCAL_BACKEND=dry-run): it says so
 * loudly at start, the agent writes the rendered iptables-restore input under the local directory instead of
 * touching a namespace, and the rest of the system (API, queue, status, in_sync) behaves the same.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadOrCreateSigningKey, signToken } from "../../scripts/local/auth.ts";
import type { StackInfo } from "../../scripts/local/stack.ts";
import { alive, freePort, until } from "../support/process.ts";

const root = resolve(import.meta.dirname, "../..");

describe("npm start with the dry-run backend", () => {
  const demoRouterId = randomUUID();
  let dir: string;
  let stack: ChildProcess;
  let output = "";
  let info: StackInfo;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "cth-dry-"));
    stack = spawn("npm", ["start"], {
      cwd: root,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env,
        PORT: String(await freePort()),
        CTH_LOCAL_DIR: dir,
        CTH_LOCAL_BACKEND: "dry-run",
        CTH_LOCAL_METRICS_PORT: "0",
        CTH_LOCAL_DEMO_ROUTER: demoRouterId,
      },
    });
    for (const stream of [stack.stdout!, stack.stderr!]) {
      stream.on("data", (chunk: Buffer) => {
        output += chunk.toString();
      });
    }
    await until("the stack to be ready", 120_000, async () => {
      if (stack.exitCode !== null) throw new Error(`npm start exited early:\n${output}`);
      return output.includes("cth local stack ready in") ? true : undefined;
    });
    info = JSON.parse(readFileSync(join(dir, "stack.json"), "utf8")) as StackInfo;
  }, 150_000);

  afterAll(async () => {
    if (stack?.pid && alive(stack.pid)) process.kill(-stack.pid, "SIGTERM");
    await until("the stack to exit", 30_000, async () => (alive(info?.pid) ? undefined : true)).catch(() => {
      if (stack?.pid) process.kill(-stack.pid, "SIGKILL");
      for (const pid of [info?.pid, info?.agentPid]) if (alive(pid)) process.kill(pid!, "SIGKILL");
    });
    expect(alive(info?.agentPid)).toBe(false);
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it("says it is a dry run before anything else is printed as ready", () => {
    expect(info.backend).toBe("dry-run");
    const warning = output.indexOf("DRY RUN (CTH_LOCAL_BACKEND=dry-run)");
    expect(warning).toBeGreaterThanOrEqual(0);
    expect(warning).toBeLessThan(output.indexOf("cth local stack ready in"));
    expect(output).toContain(`${join(dir, "agent")}/dry-run`);
  });

  it("the demo owner's notification is rendered to the dry-run directory and reported in sync", async () => {
    const key = await loadOrCreateSigningKey(join(dir, "dev-signing-key.json"));
    const token = await signToken(key, { projectId: "demo" });
    const helperId = randomUUID();
    const post = await fetch(`${info.apiUrl}/v1/notifications`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({
        event: "created",
        conntrack_helpers: [
          { id: helperId, router_id: demoRouterId, protocol: "tcp", port: 21, helper: "ftp" },
        ],
      }),
    });
    expect(post.status).toBe(202);
    const restore = await until("the rendered input", 60_000, async () => {
      const text = readFileSync(
        join(dir, "agent", "dry-run", `qrouter-${demoRouterId}.ipv4.restore`),
        "utf8",
      );
      return text.includes(helperId) ? text : undefined;
    });
    expect(restore).toContain("-p tcp -m tcp --dport 21");
    expect(restore).toContain("-j CT --helper ftp");
    await until("in_sync", 60_000, async () => {
      const res = await fetch(`${info.apiUrl}/v1/routers/${demoRouterId}/conntrack-helpers`, {
        headers: { authorization: `Bearer ${token}` },
      });
      return ((await res.json()) as { in_sync: boolean }).in_sync ? true : undefined;
    });
  });
});
