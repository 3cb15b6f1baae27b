/**
 * Runs the agent's iptables commands from a small helper process instead of the agent itself.
 *
 * Why: Node forks on every spawn, and fork's cost grows with the forking process's resident memory. The agent
 * holds the AWS SDK, its metrics and its logs (about 100 MB); a bare `node` holds about 40 MB. Measured here,
 * a spawn blocks the forking process's event loop for about 3 ms from the agent against under 1 ms from a
 * bare node, and an apply is four spawns. The helper forks instead, off the agent's event loop.
 *
 * The helper is its own program, command-helper.ts, importing only node's built-ins: in development node
 * runs that TypeScript source, and the bundle has it built beside itself as cth-agent-helper.mjs
 * (commandHelperPath). It reads one JSON request per line ({id, file, args, input, timeoutMs}, or the
 * farewell {bye: true}) and answers one JSON line per request; argv arrays through execFile only, never a
 * shell, exactly as the direct runner. It ignores SIGTERM, SIGINT and SIGHUP (a stop signal to the agent's
 * group must not cut the apply the agent is finishing); its commands stay in the agent's process group
 * (execFile does not pass `detached` on), so under systemd, KillMode=mixed is what keeps the stop signal from
 * them. It exits when its stdin closes: after close() once its commands are done and their replies written,
 * and at once, killing its commands, when the agent died.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
// Type-only, so erased: a value import would run the helper's program inside the agent.
import type { HelperFarewell, HelperReply, HelperRequest } from "./command-helper.ts";

export interface ExecResult {
  readonly stdout: string;
  readonly stderr: string;
}

/** A command that failed: non-zero exit, signal, timeout, or could not be started. */
export class ExecError extends Error {
  override readonly name = "ExecError";
  constructor(
    message: string,
    /** The exit status, an error code (ENOENT, EHELPER...), or null for a command killed by a signal. */
    readonly code: number | string | null | undefined,
    readonly stderr: string,
  ) {
    super(message);
  }
}

/** Runs `file` with `args` (no shell), `input` on its stdin. */
export interface CommandRunner {
  run(file: string, args: readonly string[], input?: string, timeoutMs?: number): Promise<ExecResult>;
  close(): void;
}

/** The most output a command may write to stdout or stderr; command-helper.ts has the same limit. */
const MAX_BUFFER = 64 * 1024 * 1024;

/** The built helper's file name: scripts/build-agent.ts writes it beside the agent bundle. */
export const HELPER_BUNDLE_FILE = "cth-agent-helper.mjs";

/**
 * The helper program for the agent module at `moduleUrl` (this one's by default). TypeScript source (tsx,
 * vitest, `npm run agent`) runs the helper's source beside it, agent/command-helper.ts; a built module (the
 * bundle, whatever its name) runs the built helper beside it, cth-agent-helper.mjs. Decided by the module's
 * own kind, not by which file happens to exist, so a stale build can never stand in for the source.
 */
export function commandHelperPath(moduleUrl: string = import.meta.url): string {
  const source = new URL(moduleUrl).pathname.endsWith(".ts");
  return fileURLToPath(new URL(source ? "./command-helper.ts" : `./${HELPER_BUNDLE_FILE}`, moduleUrl));
}

/** Spawns each command from this process. */
export class DirectRunner implements CommandRunner {
  run(file: string, args: readonly string[], input?: string, timeoutMs = 60_000): Promise<ExecResult> {
    return new Promise((resolve, reject) => {
      const child = execFile(
        file,
        args,
        { encoding: "utf8", maxBuffer: MAX_BUFFER, timeout: timeoutMs, killSignal: "SIGKILL" },
        (error, stdout, stderr) => {
          if (error) {
            const code = (error as NodeJS.ErrnoException).code;
            reject(new ExecError(`${file} ${args.join(" ")}: ${stderr || error.message}`, code, stderr));
          } else resolve({ stdout, stderr });
        },
      );
      // A child that exits before reading its input (missing namespace) closes the pipe: EPIPE on stdin is
      // then expected and the exit status above carries the real error.
      child.stdin?.on("error", () => undefined);
      if (input !== undefined) child.stdin?.end(input);
    });
  }

  close(): void {}
}

interface Waiter {
  readonly label: string;
  resolve(result: ExecResult): void;
  reject(error: Error): void;
}

/**
 * Sends each command to the helper process. A helper that dies fails the commands it held (the agent's
 * apply then fails and is retried like any other) and is started again on the next command.
 */
export class HelperRunner implements CommandRunner {
  private child: ChildProcess | undefined;
  private nextId = 1;
  private readonly waiting = new Map<number, Waiter>();
  private closed = false;

  constructor(
    private readonly nodeBinary: string = process.execPath,
    /** The helper's program (a file node runs as is): by default the one beside this module. */
    private readonly program: string = commandHelperPath(),
  ) {}

  /** The helper's PID, once started (tests). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  run(file: string, args: readonly string[], input?: string, timeoutMs = 60_000): Promise<ExecResult> {
    if (this.closed) return Promise.reject(new ExecError("command runner closed", "ECLOSED", ""));
    const label = `${file} ${args.join(" ")}`;
    if (!this.child && !existsSync(this.program)) {
      // Said plainly, rather than as node's "Cannot find module" and an exit status.
      return Promise.reject(
        new ExecError(`${label}: command helper ${this.program} is missing`, "EHELPER", ""),
      );
    }
    const child = this.helper();
    const id = this.nextId++;
    const request: HelperRequest = { id, file, args, input, timeoutMs };
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { label, resolve, reject });
      if (this.waiting.size === 1) this.hold(child, true);
      child.stdin?.write(`${JSON.stringify(request)}\n`);
    });
  }

  /** Keeps the agent's event loop alive only while commands are in flight (never because of an idle helper). */
  private hold(child: ChildProcess, busy: boolean): void {
    const streams = [child.stdout, child.stdin] as unknown as ({
      ref?: () => void;
      unref?: () => void;
    } | null)[];
    if (busy) {
      child.ref();
      for (const stream of streams) stream?.ref?.();
    } else {
      child.unref();
      for (const stream of streams) stream?.unref?.();
    }
  }

  close(): void {
    this.closed = true;
    // A farewell, then EOF: the helper finishes what it runs, then exits by itself.
    const farewell: HelperFarewell = { bye: true };
    this.child?.stdin?.end(`${JSON.stringify(farewell)}\n`);
    this.child = undefined;
  }

  private helper(): ChildProcess {
    if (this.child) return this.child;
    // No inherited execArgv (tsx, inspector): a bare node, as small as it gets. Node 22 runs the .ts source
    // with no flag (type stripping is on by default and silent since 22.18).
    const child = spawn(this.nodeBinary, [this.program], {
      stdio: ["pipe", "pipe", "inherit"],
      env: process.env,
    });
    this.child = child;
    child.stdin?.on("error", () => undefined);
    createInterface({ input: child.stdout! }).on("line", (line) => this.settle(line));
    const fail = (why: string) => {
      if (this.child === child) this.child = undefined;
      for (const [id, waiter] of this.waiting) {
        this.waiting.delete(id);
        waiter.reject(new ExecError(`${waiter.label}: command helper ${why}`, "EHELPER", ""));
      }
    };
    child.once("error", (error) => fail(`could not start: ${error.message}`));
    // "close", not "exit": the replies still in the pipe are read before the waiters are failed.
    child.once("close", (code, signal) => fail(`exited (${signal ?? code})`));
    this.hold(child, false);
    return child;
  }

  private settle(line: string): void {
    let reply: HelperReply;
    try {
      reply = JSON.parse(line) as HelperReply;
    } catch {
      return;
    }
    const waiter = this.waiting.get(reply.id);
    if (!waiter) return;
    this.waiting.delete(reply.id);
    if (this.waiting.size === 0 && this.child) this.hold(this.child, false);
    if (reply.ok) waiter.resolve({ stdout: reply.stdout, stderr: reply.stderr });
    else
      waiter.reject(
        new ExecError(
          `${waiter.label}: ${reply.stderr || reply.message || "failed"}`,
          reply.code,
          reply.stderr,
        ),
      );
  }
}
