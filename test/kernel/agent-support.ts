/** Runs the real agent CLI as a child process (by PID) and reads its pino JSON log lines. */
import type { ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { eventually, type Sandbox } from "../support/netns.ts";

export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface LogLine {
  readonly msg?: string;
  readonly level?: number;
  readonly [key: string]: unknown;
}

/** Where a test agent's queues, state and keys are. */
export interface AgentPlacement {
  readonly node: string;
  readonly queueUrl: string;
  readonly statusQueueUrl: string;
  readonly stateDir: string;
  readonly verifyKeysDir: string;
}

/**
 * The flags every test agent runs with: its node's queues, state and keys, a 1 s long poll (tests wait on
 * it), then `extra`, the flags a suite is about.
 */
export function agentFlags(placement: AgentPlacement, extra: readonly string[] = []): string[] {
  return [
    ...["--node", placement.node, "--queue-url", placement.queueUrl],
    ...["--status-queue-url", placement.statusQueueUrl, "--state-dir", placement.stateDir],
    ...["--verify-keys", placement.verifyKeysDir, "--wait-seconds", "1"],
    ...extra,
  ];
}

export class AgentProcess {
  readonly logs: LogLine[] = [];
  readonly stderr: string[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private constructor(readonly child: ChildProcess) {
    let buffer = "";
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      buffer += chunk;
      const lines = buffer.split("\n");
      buffer = lines.pop() ?? "";
      for (const line of lines) {
        try {
          this.logs.push(JSON.parse(line) as LogLine);
        } catch {
          this.stderr.push(line);
        }
      }
    });
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => this.stderr.push(chunk));
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  }

  get pid(): number {
    return this.child.pid!;
  }

  static async start(
    sandbox: Sandbox,
    flags: readonly string[],
    env: NodeJS.ProcessEnv,
  ): Promise<AgentProcess> {
    const child = sandbox.spawn(
      process.execPath,
      ["--import", "tsx", `${REPO_ROOT}agent/cli.ts`, ...flags],
      {
        ...process.env,
        ...env,
      },
      REPO_ROOT,
    );
    const agent = new AgentProcess(child);
    await Promise.race([
      agent.waitFor((line) => line.msg === "agent started", 60_000),
      agent.exited.then(({ code }) => {
        throw new Error(`agent exited early (${code}): ${agent.stderr.join("")}`);
      }),
    ]);
    return agent;
  }

  waitFor(
    predicate: (line: LogLine) => boolean,
    timeoutMs = 20_000,
    what = "agent log line",
  ): Promise<LogLine> {
    return eventually(async () => this.logs.find(predicate), timeoutMs, what);
  }

  metricsPort(): number {
    const line = this.logs.find((entry) => entry.msg === "metrics listening on 127.0.0.1");
    return Number(line?.port);
  }
}
