/**
 * The node agent for node `local` as a child process: spawned as `node --import tsx agent/cli.ts` (no npm
 * or shell in between, so the PID we hold is the agent's own), its pino lines relayed with a prefix, and
 * stopped by that PID: SIGTERM, then SIGKILL if it does not exit in time.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { REPO_ROOT } from "./paths.ts";

export interface AgentProcessOptions {
  readonly args: readonly string[];
  readonly env: NodeJS.ProcessEnv;
  readonly print: (line: string) => void;
  /** Called once per unexpected exit (not after stop()). */
  readonly onExit?: (code: number | null, signal: NodeJS.Signals | null) => void;
}

export interface AgentProcess {
  readonly pid: number;
  /** Resolves when the agent logged "agent started". */
  readonly started: Promise<void>;
  stop(timeoutMs?: number): Promise<void>;
}

export function spawnAgent(options: AgentProcessOptions): AgentProcess {
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", "agent/cli.ts", ...options.args], {
    cwd: REPO_ROOT,
    env: options.env,
    stdio: ["ignore", "pipe", "pipe"],
    // Its own process group: a Ctrl-C at the terminal reaches the stack, which stops the agent in order.
    detached: true,
  });
  if (child.pid === undefined) throw new Error("could not spawn the agent");
  let stopping = false;
  // Last resort if the stack itself dies without running its cleanup.
  const orphanGuard = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
  };
  process.once("exit", orphanGuard);
  const exited = new Promise<void>((resolve) => {
    child.once("exit", (code, signal) => {
      process.off("exit", orphanGuard);
      if (!stopping) options.onExit?.(code, signal);
      resolve();
    });
  });
  const started = new Promise<void>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`agent exited with code ${code} before it started`)));
    for (const stream of [child.stdout!, child.stderr!]) {
      createInterface({ input: stream }).on("line", (line) => {
        let msg: string | undefined;
        try {
          msg = (JSON.parse(line) as { msg?: string }).msg;
        } catch {
          msg = undefined;
        }
        if (msg === "agent started") resolve();
        options.print(`[agent] ${line}`);
      });
    }
  });
  started.catch(() => undefined);
  return {
    pid: child.pid,
    started,
    stop: async (timeoutMs = 15_000) => {
      stopping = true;
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      await exited;
      clearTimeout(timer);
    },
  };
}
