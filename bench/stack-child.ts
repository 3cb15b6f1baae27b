/**
 * Runs `npm start` (scripts/local-stack.ts) as a child process on a free port with its own state dir, reads
 * the API URL and tokens from its banner, and stops it by PID (SIGTERM: it removes the namespaces it made).
 * Used by the end-to-end benchmark and the soak suites.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

export interface StackChild {
  readonly apiUrl: string;
  readonly token: string;
  readonly adminToken: string;
  readonly backend: string;
  readonly pid: number;
  /** The project the demo token acts for. */
  readonly project: string;
  readonly output: string[];
  /** The stack's CTH_LOCAL_DIR (stack.json, agent state), removed by stop(). */
  readonly dir: string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

/** Why the stack cannot run here, or undefined. */
export function stackMissing(root: string): string | undefined {
  if (!existsSync(resolve(root, "scripts/local-stack.ts")))
    return "scripts/local-stack.ts does not exist yet";
  if (process.getuid?.() !== 0)
    return "not root: the stack's agent would run in dry-run mode, nothing reaches a namespace";
  return undefined;
}

export async function startStackChild(
  root: string,
  options: { env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<StackChild> {
  const dir = mkdtempSync(join(tmpdir(), "cth-stack-"));
  const port = await freePort();
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", "scripts/local-stack.ts"], {
    cwd: root,
    env: {
      ...process.env,
      PORT: String(port),
      CTH_LOCAL_DIR: dir,
      CTH_LOCAL_BACKEND: "iptables",
      CTH_LOCAL_METRICS_PORT: "0",
      // Load and benchmarks measure the system, not the stage's throttle (50/s deployed): lift it.
      CTH_LOCAL_THROTTLE_RATE: "1000000",
      CTH_LOCAL_THROTTLE_BURST: "1000000",
      // The stack waits for the agent's info-level "agent started" line: keep the default log level.
      ...options.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output: string[] = [];
  const keep = (line: string) => {
    output.push(line);
    if (output.length > 20_000) output.shift();
  };
  createInterface({ input: child.stderr! }).on("line", keep);
  const exited = new Promise<void>((resolveExit) => child.once("exit", () => resolveExit()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const banner = await new Promise<Record<string, string>>((resolveBanner, reject) => {
      const found: Record<string, string> = {};
      const timer = setTimeout(
        () => reject(new Error(`the local stack was not ready in time:\n${output.slice(-30).join("\n")}`)),
        options.timeoutMs ?? 120_000,
      );
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`the local stack exited (${code}):\n${output.slice(-30).join("\n")}`));
      });
      createInterface({ input: child.stdout! }).on("line", (line) => {
        keep(line);
        const api = /^\s+API\s+(\S+)/.exec(line);
        if (api) found.api = api[1]!;
        const agent = /^\s+agent\s+.*backend (\S+?)(,|$)/.exec(line);
        if (agent) found.backend = agent[1]!;
        const project = /^\s+demo router\s+\S+ \(project "([^"]+)"/.exec(line);
        if (project) found.project = project[1]!;
        const token = /^export TOKEN=(\S+)/.exec(line);
        if (token) found.token = token[1]!;
        const admin = /^export ADMIN_TOKEN=(\S+)/.exec(line);
        if (admin) found.admin = admin[1]!;
        if (found.api && found.token && found.admin) {
          clearTimeout(timer);
          resolveBanner(found);
        }
      });
    });
    return {
      apiUrl: banner.api!,
      token: banner.token!,
      adminToken: banner.admin!,
      backend: banner.backend ?? "unknown",
      project: banner.project ?? "demo",
      pid: child.pid!,
      output,
      dir,
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** A small client for the local API. */
export async function api(
  stack: Pick<StackChild, "apiUrl">,
  token: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: unknown }> {
  const response = await fetch(`${stack.apiUrl}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...headers,
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  let json: unknown = text;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    // not JSON: keep the text
  }
  return { status: response.status, json };
}
