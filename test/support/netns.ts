/**
 * Namespaces, veth pairs and processes for kernel tests. Everything created through a Sandbox is removed
 * by `cleanup()` (call it in afterAll; it never throws), processes are killed by their PID.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";

export interface Result {
  readonly stdout: string;
  readonly stderr: string;
}

export function sh(file: string, args: readonly string[], input?: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error) reject(Object.assign(error, { stdout, stderr }));
        else resolve({ stdout, stderr });
      },
    );
    child.stdin?.on("error", () => undefined); // EPIPE when the child exits first; its status tells why
    if (input !== undefined) child.stdin?.end(input);
  });
}

export const inNs = (ns: string, args: readonly string[], input?: string): Promise<Result> =>
  sh("ip", ["netns", "exec", ns, ...args], input);

/** `iptables-save -t raw` (or ip6tables-save) without the timestamped `#` lines. */
export async function rawSave(ns: string, family: "ipv4" | "ipv6", counters = false): Promise<string> {
  const tool = family === "ipv4" ? "iptables-save" : "ip6tables-save";
  const { stdout } = await inNs(ns, [tool, "-t", "raw", ...(counters ? ["-c"] : [])]);
  return stdout
    .split("\n")
    .filter((line) => !line.startsWith("#"))
    .join("\n");
}

export async function eventually<T>(
  check: () => Promise<T | undefined | false>,
  timeoutMs = 20_000,
  what = "condition",
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) throw new Error(`${what} not met in ${timeoutMs} ms`, { cause: lastError });
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Child processes of `pid` (Linux /proc), e.g. to catch an agent while its iptables-restore runs. */
export function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** Children, grandchildren and so on (the agent's iptables commands run under its command helper). */
export function descendantPids(pid: number): number[] {
  const found: number[] = [];
  for (const child of childPids(pid)) found.push(child, ...descendantPids(child));
  return found;
}

export class Sandbox {
  private readonly namespaces = new Set<string>();
  private readonly processes = new Set<ChildProcess>();
  /** Tells this sandbox's names from another process's (and a previous run's leftovers). */
  readonly tag = randomUUID().slice(0, 6);
  /** Names within the sandbox are counted, not drawn: 16 random bits collided in a CI run. */
  private created = 0;

  /** A unique name within the sandbox's tag, short enough for a veth (15 characters with a 2-letter prefix). */
  private nextName(prefix: string, separator = "-"): string {
    this.created += 1;
    return `${prefix}${this.tag}${separator}${this.created.toString(36)}`;
  }

  /** A namespace with a unique name (prefix, the sandbox's tag, a counter); loopback up. */
  async namespace(prefix: string, name = this.nextName(`${prefix}-`)): Promise<string> {
    this.namespaces.add(name);
    await sh("ip", ["netns", "add", name]);
    await inNs(name, ["ip", "link", "set", "lo", "up"]);
    return name;
  }

  /** Tracks a namespace someone else (the agent) creates, so cleanup removes it too. */
  adopt(ns: string): void {
    this.namespaces.add(ns);
  }

  /** A veth pair between two namespaces with 198.18.0.0/15 addresses (a/24 each side). */
  async veth(a: string, aAddress: string, b: string, bAddress: string): Promise<void> {
    const left = this.nextName("va", "");
    const right = this.nextName("vb", "");
    await sh("ip", ["link", "add", left, "netns", a, "type", "veth", "peer", "name", right, "netns", b]);
    await inNs(a, ["ip", "addr", "add", aAddress, "dev", left]);
    await inNs(b, ["ip", "addr", "add", bAddress, "dev", right]);
    await inNs(a, ["ip", "link", "set", left, "up"]);
    await inNs(b, ["ip", "link", "set", right, "up"]);
  }

  spawn(file: string, args: readonly string[], env?: NodeJS.ProcessEnv, cwd?: string): ChildProcess {
    const child = spawn(file, args, { env: env ?? process.env, cwd, stdio: ["ignore", "pipe", "pipe"] });
    this.processes.add(child);
    child.once("exit", () => this.processes.delete(child));
    return child;
  }

  /** Kills (SIGKILL, by PID) every process still running and deletes every namespace. Never throws. */
  async cleanup(): Promise<void> {
    for (const child of this.processes) {
      if (child.pid !== undefined && child.exitCode === null) {
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    for (const ns of this.namespaces) {
      await sh("ip", ["netns", "delete", ns]).catch(() => undefined);
    }
    this.namespaces.clear();
  }
}
