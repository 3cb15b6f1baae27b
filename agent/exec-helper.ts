/**
 * Runs the agent's iptables commands from a small helper process instead of the agent itself.
 *
 * Why: Node forks on every spawn, and fork's cost grows with the forking process's resident memory. The agent
 * holds the AWS SDK, its metrics and its logs (about 100 MB); a bare `node` holds about 40 MB. Measured here,
 * a spawn blocks the forking process's event loop for about 3 ms from the agent against under 1 ms from a
 * bare node, and an apply is four spawns. The helper forks instead, off the agent's event loop.
 *
 * The helper is plain JavaScript passed to `node -e` (no file to install beside the bundle). It reads one JSON
 * request per line ({id, file, args, input, timeoutMs}) and answers one JSON line per request; argv arrays
 * through execFile only, never a shell, exactly as the direct runner. It ignores SIGTERM and SIGINT, and runs
 * each command in a process group of its own (a stop signal to the agent's group must not cut the apply the
 * agent is finishing). It exits when its stdin closes: after close() once its commands are done and their
 * replies written, and at once, killing its commands, when the agent died.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createInterface } from "node:readline";

export interface ExecResult {
  readonly stdout: string;
  readonly stderr: string;
}

/** A command that failed: non-zero exit, signal, timeout, or could not be started. */
export class ExecError extends Error {
  override readonly name = "ExecError";
  constructor(
    message: string,
    readonly code: number | string | undefined,
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

const MAX_BUFFER = 64 * 1024 * 1024;

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

/** The helper's whole program. Kept to what a bare node has: child_process and readline. */
const HELPER_SOURCE = `
const { execFile } = require("node:child_process");
const { createInterface } = require("node:readline");
const running = new Set();
let farewell = false;
// Signals are the agent's to handle: a stop signal to the whole group must not cut the apply it finishes.
for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(signal, () => undefined);
// The agent died with replies still to come: nobody reads them any more.
process.stdout.on("error", () => process.exit(0));
createInterface({ input: process.stdin }).on("line", (line) => {
  let request;
  try { request = JSON.parse(line); } catch { return; }
  if (request.bye === true) { farewell = true; return; }
  // Its own process group, so a terminal's Ctrl-C to the agent's group does not reach the command either.
  const child = execFile(request.file, request.args, { encoding: "utf8", maxBuffer: ${MAX_BUFFER},
    timeout: request.timeoutMs, killSignal: "SIGKILL", detached: true }, (error, stdout, stderr) => {
    running.delete(child);
    process.stdout.write(JSON.stringify(error
      ? { id: request.id, ok: false, code: error.code, message: error.message, stdout, stderr }
      : { id: request.id, ok: true, stdout, stderr }) + "\\n");
  });
  running.add(child);
  child.stdin.on("error", () => undefined);
  if (typeof request.input === "string") child.stdin.end(request.input);
}).on("close", () => {
  // No farewell: the agent died. Its commands die with it, as they would have as its own children.
  if (!farewell) for (const child of running) child.kill("SIGKILL");
  // With stdin closed and the last reply written, nothing is left to keep this process: it exits by itself,
  // after its stdout has drained (an explicit exit could cut a large reply short).
});
`;

interface Reply {
  readonly id: number;
  readonly ok: boolean;
  readonly code?: number | string;
  readonly message?: string;
  readonly stdout: string;
  readonly stderr: string;
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

  constructor(private readonly nodeBinary: string = process.execPath) {}

  /** The helper's PID, once started (tests). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  run(file: string, args: readonly string[], input?: string, timeoutMs = 60_000): Promise<ExecResult> {
    if (this.closed) return Promise.reject(new ExecError("command runner closed", "ECLOSED", ""));
    const child = this.helper();
    const id = this.nextId++;
    const label = `${file} ${args.join(" ")}`;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { label, resolve, reject });
      if (this.waiting.size === 1) this.hold(child, true);
      child.stdin?.write(`${JSON.stringify({ id, file, args, input, timeoutMs })}\n`);
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
    this.child?.stdin?.end(`${JSON.stringify({ bye: true })}\n`);
    this.child = undefined;
  }

  private helper(): ChildProcess {
    if (this.child) return this.child;
    // No inherited execArgv (tsx, inspector): a bare node, as small as it gets.
    const child = spawn(this.nodeBinary, ["-e", HELPER_SOURCE], {
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
    let reply: Reply;
    try {
      reply = JSON.parse(line) as Reply;
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
