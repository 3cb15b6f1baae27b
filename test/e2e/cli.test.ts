/**
 * The operator CLI as an operator runs it: the `cth` bin (scripts/cth.mjs) as a real process against a real
 * local stack (`npm start`, dry-run backend), with dev tokens from the stack's own signing key.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RouterListBody, RouterStateBody, RouterViewBody } from "../../lib/schemas/api.ts";
import { loadOrCreateSigningKey, signToken } from "../../scripts/local/auth.ts";
import type { StackInfo } from "../../scripts/local/stack.ts";
import { alive, freePort, until } from "../support/process.ts";

const root = resolve(import.meta.dirname, "../..");
const BIN = join(root, "scripts", "cth.mjs");

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** The bin as a child process; CTH_URL and CTH_TOKEN only as `env` gives them (never the test's own). */
function cth(args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  const { CTH_URL: _url, CTH_TOKEN: _token, ...inherited } = process.env;
  return new Promise((done) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      { cwd: root, env: { ...inherited, ...env }, timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
        done({ code, stdout, stderr });
      },
    );
  });
}

/** The message of an error answer, in the function's shape or the gateway's (`{"message"}`). */
async function apiMessage(response: Promise<Response>, status: number): Promise<string> {
  const answer = await response;
  expect(answer.status).toBe(status);
  const body = (await answer.json()) as { message?: string; error?: { message: string } };
  const message = body.message ?? body.error?.message;
  expect(message).toBeTruthy();
  return message!;
}

const json = <T>(run: Run): T => {
  expect(run, run.stderr).toMatchObject({ code: 0 });
  return JSON.parse(run.stdout) as T;
};

// Every step is a process of its own (tsx starts each): a loaded machine needs more than the default minute.
describe("cth, the operator CLI, against npm start", { timeout: 180_000 }, () => {
  const project = `cli-${randomUUID().slice(0, 8)}`;
  let dir: string;
  let stack: ChildProcess;
  let output = "";
  let info: StackInfo;
  let admin: string;
  let member: string;
  /** The admin's environment: the endpoint and token as variables. */
  let asAdmin: Record<string, string>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "cth-cli-"));
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
    const key = await loadOrCreateSigningKey(join(dir, "dev-signing-key.json"));
    admin = await signToken(key, { projectId: "operators", roles: ["admin"] });
    member = await signToken(key, { projectId: project });
    asAdmin = { CTH_URL: info.apiUrl, CTH_TOKEN: admin };
  }, 150_000);

  afterAll(async () => {
    if (stack?.pid && alive(stack.pid)) process.kill(-stack.pid, "SIGTERM");
    await until("the stack to exit", 30_000, async () => (alive(info?.pid) ? undefined : true)).catch(() => {
      if (stack?.pid) process.kill(-stack.pid, "SIGKILL");
      for (const pid of [info?.pid, info?.agentPid]) if (alive(pid)) process.kill(pid!, "SIGKILL");
    });
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it("routers put registers with --binding host and host:snat, then updates; show prints it", async () => {
    const routerId = randomUUID();
    const put = await cth(
      ["routers", "put", routerId, "--project", project, "--binding", "local", "--binding", "node-b:snat"],
      asAdmin,
    );
    expect(put, put.stderr).toMatchObject({ code: 0 });
    expect(put.stdout).toMatch(new RegExp(`^registered\\nrouter_id: +${routerId}\\n`));
    expect(put.stdout).toMatch(/bindings: +local,node-b:snat\n/);

    const again = await cth(
      ["routers", "put", routerId, "--project", project, "--binding", "local", "--json"],
      asAdmin,
    );
    const updated = json<RouterViewBody>(again);
    expect(updated).toMatchObject({
      router_id: routerId,
      project_id: project,
      bindings: [{ host: "local", namespace: "qrouter" }],
    });

    const show = await cth(["routers", "show", routerId], asAdmin);
    expect(show, show.stderr).toMatchObject({ code: 0 });
    expect(show.stdout).toMatch(new RegExp(`project: +${project}\\n`));
    expect(show.stdout).toMatch(/bindings: +local\n/);
    expect(json<RouterViewBody>(await cth(["routers", "show", routerId, "--json"], asAdmin))).toEqual(
      expect.objectContaining({ router_id: routerId, revision: updated.revision }),
    );
  });

  it("routers ls follows next_cursor to the end, as a table and as --json, with --project and --host", async () => {
    const listed = `${project}-ls`;
    const ids = Array.from({ length: 5 }, () => randomUUID());
    for (const [index, id] of ids.entries()) {
      const binding = index < 2 ? "node-ls" : "local";
      const put = await cth(["routers", "put", id, "--project", listed, "--binding", binding], asAdmin);
      expect(put, put.stderr).toMatchObject({ code: 0 });
    }
    const all = json<RouterListBody>(
      await cth(["routers", "ls", "--project", listed, "--limit", "2", "--json"], asAdmin),
    );
    expect(all.next_cursor).toBeNull();
    expect(all.routers.map((router) => router.router_id).sort()).toEqual([...ids].sort());

    const onHost = json<RouterListBody>(
      await cth(
        ["routers", "ls", "--project", listed, "--host", "node-ls", "--limit", "1", "--json"],
        asAdmin,
      ),
    );
    expect(onHost.routers.map((router) => router.router_id).sort()).toEqual(ids.slice(0, 2).sort());

    const tableRun = await cth(["routers", "ls", "--project", listed, "--limit", "2"], asAdmin);
    expect(tableRun, tableRun.stderr).toMatchObject({ code: 0 });
    const lines = tableRun.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^ROUTER_ID +PROJECT +BINDINGS +REVISION +IN_SYNC$/);
    expect(
      lines
        .slice(1)
        .map((line) => line.split(/ +/)[0])
        .sort(),
    ).toEqual([...ids].sort());
    expect(lines.slice(1).every((line) => line.includes(listed))).toBe(true);
  });

  it("helpers add and rm print the new revision; --out-of-sync lists a router no host confirmed", async () => {
    const routerId = randomUUID();
    const put = await cth(
      ["routers", "put", routerId, "--project", project, "--binding", "node-nobody"],
      asAdmin,
    );
    expect(put, put.stderr).toMatchObject({ code: 0 });
    const helperId = randomUUID();
    const add = await cth(
      ["helpers", "add", routerId, "--protocol", "tcp", "--port", "21", "--helper", "ftp", "--id", helperId],
      asAdmin,
    );
    expect(add, add.stderr).toMatchObject({ code: 0 });
    expect(add.stdout).toContain(`helper ${helperId} added (tcp/21 ftp)`);
    const added = Number(new RegExp(`router ${routerId}: revision (\\d+)`).exec(add.stdout)?.[1]);
    expect(added).toBeGreaterThan(0);

    const state = json<RouterStateBody>(await cth(["helpers", "ls", routerId, "--json"], asAdmin));
    expect(state.helpers).toEqual([{ id: helperId, protocol: "tcp", port: 21, helper: "ftp" }]);
    expect(state.revision).toBe(added);
    const listing = await cth(["helpers", "ls", routerId], asAdmin);
    expect(listing.stdout).toMatch(new RegExp(`${helperId} +tcp +21 +ftp`));

    // Nobody runs an agent on node-nobody: the router stays out of sync.
    expect(json<RouterViewBody>(await cth(["routers", "show", routerId, "--json"], asAdmin)).in_sync).toBe(
      false,
    );
    const stale = json<RouterListBody>(
      await cth(["routers", "ls", "--out-of-sync", "--project", project, "--json"], asAdmin),
    );
    expect(stale.routers.map((router) => router.router_id)).toContain(routerId);

    // Generated id: the helper lands under an id the CLI chose and printed.
    const generated = await cth(
      ["helpers", "add", routerId, "--protocol", "udp", "--port", "69", "--helper", "tftp", "--json"],
      { ...asAdmin },
    );
    const body = json<{ conntrack_helpers: { id: string }[]; routers: { revision: number }[] }>(generated);
    expect(body.routers[0]!.revision).toBe(added + 1);

    const rm = await cth(["helpers", "rm", routerId, helperId, body.conntrack_helpers[0]!.id], asAdmin);
    expect(rm, rm.stderr).toMatchObject({ code: 0 });
    expect(rm.stdout).toContain(`helper ${helperId} removed`);
    expect(rm.stdout).toContain(`router ${routerId}: revision ${added + 2}`);
    const after = json<RouterStateBody>(await cth(["helpers", "ls", routerId, "--json"], asAdmin));
    expect(after.helpers).toEqual([]);
  });

  it("routers rm deletes; show then prints the API's 404 message with exit 1", async () => {
    const routerId = randomUUID();
    expect(
      (await cth(["routers", "put", routerId, "--project", project, "--binding", "local"], asAdmin)).code,
    ).toBe(0);
    const rm = await cth(["routers", "rm", routerId], asAdmin);
    expect(rm).toEqual({ code: 0, stdout: `router ${routerId} deleted\n`, stderr: "" });
    const show = await cth(["routers", "show", routerId], asAdmin);
    expect(show).toEqual({ code: 1, stdout: "", stderr: `router ${routerId} not found\n` });
  });

  it("no token: the gateway's 401 message, exit 1", async () => {
    const message = await apiMessage(fetch(`${info.apiUrl}/v1/routers`), 401);
    const run = await cth(["routers", "ls"], { CTH_URL: info.apiUrl });
    expect(run).toEqual({ code: 1, stdout: "", stderr: `${message}\n` });
  });

  it("a member doing put: the gateway's 403 message, exit 1", async () => {
    const routerId = randomUUID();
    const message = await apiMessage(
      fetch(`${info.apiUrl}/v1/routers/${routerId}`, {
        method: "PUT",
        headers: { authorization: `Bearer ${member}`, "content-type": "application/json" },
        body: JSON.stringify({ project_id: project, bindings: [{ host: "local", namespace: "qrouter" }] }),
      }),
      403,
    );
    const run = await cth(["routers", "put", routerId, "--project", project, "--binding", "local"], {
      CTH_URL: info.apiUrl,
      CTH_TOKEN: member,
    });
    expect(run).toEqual({ code: 1, stdout: "", stderr: `${message}\n` });
  });

  it("a field the API refuses: its message and the detail's path, exit 1", async () => {
    const run = await cth(
      ["routers", "put", randomUUID(), "--project", "not.a.project", "--binding", "local"],
      asAdmin,
    );
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/\n {2}project_id: /);
  });

  it("--url beats CTH_URL and --token beats CTH_TOKEN", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const byFlags = await cth(
      ["--url", info.apiUrl, "--token", admin, "routers", "ls", "--project", project],
      {
        CTH_URL: dead,
        CTH_TOKEN: "not-a-token",
      },
    );
    expect(byFlags, byFlags.stderr).toMatchObject({ code: 0 });
    const badFlag = await cth(["routers", "ls", "--token", "not-a-token"], asAdmin);
    expect(badFlag.code).toBe(1);
    expect(badFlag.stderr).not.toBe("");
    const badUrl = await cth(["routers", "ls", "--url", dead], asAdmin);
    expect(badUrl.code).toBe(1);
    expect(badUrl.stderr).toContain(`cannot reach ${dead}`);
  });

  it("usage errors exit 2 and reach no API", async () => {
    const run = await cth(["routers", "put", randomUUID(), "--binding", "local"], {
      CTH_URL: "http://127.0.0.1:9",
    });
    expect(run).toMatchObject({ code: 2, stdout: "" });
    expect(run.stderr).toContain("--project is required");
    const help = await cth(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain(
      "helpers add ROUTER_ID --protocol tcp|udp --port N --helper NAME [--id UUID]",
    );
  });
});
