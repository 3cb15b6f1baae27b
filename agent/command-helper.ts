/**
 * The command helper's whole program (why the agent has one: the header of exec-helper.ts). HelperRunner
 * starts it as a bare node: `node agent/command-helper.ts` in development (Node 22 strips the types itself)
 * and `node cth-agent-helper.mjs` beside the bundle (scripts/build-agent.ts builds both). Hence two rules:
 * only erasable TypeScript (no enum, namespace or parameter property: Node refuses them), and no import but
 * `node:` built-ins, so the helper stays as small as a bare node. The agent imports the protocol types below
 * with `import type` only: an import of anything else would run this program inside the agent.
 *
 * Protocol: one JSON line per message on stdin, a request or the farewell; one JSON reply line per request on
 * stdout, in the order the commands finish. Argv arrays through execFile only, never a shell.
 */
import { type ChildProcess, execFile } from "node:child_process";
import { createInterface } from "node:readline";

/** One command to run: `file` with `args`, `input` (if any) on its stdin, SIGKILL after `timeoutMs`. */
export interface HelperRequest {
  readonly id: number;
  readonly file: string;
  readonly args: readonly string[];
  readonly input?: string;
  readonly timeoutMs: number;
}

/** The agent closes: the commands running finish and are answered, then the helper exits with its stdin. */
export interface HelperFarewell {
  readonly bye: true;
}

/** The answer to the request of the same id. */
export type HelperReply =
  | { readonly id: number; readonly ok: true; readonly stdout: string; readonly stderr: string }
  | {
      readonly id: number;
      readonly ok: false;
      /** The exit status, an error code (ENOENT, ERR_CHILD_PROCESS_STDIO_MAXBUFFER) or null (a signal). */
      readonly code?: number | string | null;
      readonly message: string;
      readonly stdout: string;
      readonly stderr: string;
    };

/** The same limit as the agent's DirectRunner (exec-helper.ts MAX_BUFFER). */
const MAX_BUFFER = 64 * 1024 * 1024;

const running = new Set<ChildProcess>();
let farewell = false;

const isFarewell = (message: HelperRequest | HelperFarewell): message is HelperFarewell =>
  (message as Partial<HelperFarewell>).bye === true;

// Signals are the agent's to handle: a stop signal to the whole group must not cut the apply it finishes.
for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(signal, () => undefined);
// The agent died with replies still to come: nobody reads them any more.
process.stdout.on("error", () => process.exit(0));

createInterface({ input: process.stdin })
  .on("line", (line) => {
    let message: HelperRequest | HelperFarewell;
    try {
      message = JSON.parse(line) as HelperRequest | HelperFarewell;
    } catch {
      return;
    }
    if (isFarewell(message)) {
      farewell = true;
      return;
    }
    const request = message;
    // The command stays in the agent's process group: execFile hands spawn only some of its options, and
    // `detached` is not one of them (the `detached: true` this program passed as JavaScript never took
    // effect). Under systemd (KillMode=mixed) the stop signal reaches the agent alone; a terminal's Ctrl-C
    // reaches the command too.
    const child = execFile(
      request.file,
      request.args,
      { encoding: "utf8", maxBuffer: MAX_BUFFER, timeout: request.timeoutMs, killSignal: "SIGKILL" },
      (error, stdout, stderr) => {
        running.delete(child);
        const reply: HelperReply = error
          ? { id: request.id, ok: false, code: error.code, message: error.message, stdout, stderr }
          : { id: request.id, ok: true, stdout, stderr };
        process.stdout.write(`${JSON.stringify(reply)}\n`);
      },
    );
    running.add(child);
    // A command that exits before reading its input closes the pipe: its exit status carries the real error.
    child.stdin?.on("error", () => undefined);
    if (typeof request.input === "string") child.stdin?.end(request.input);
  })
  .on("close", () => {
    // No farewell: the agent died. Its commands die with it, as they would have as its own children.
    if (!farewell) for (const child of running) child.kill("SIGKILL");
    // With stdin closed and the last reply written, nothing is left to keep this process: it exits by
    // itself, after its stdout has drained (an explicit exit could cut a large reply short).
  });
