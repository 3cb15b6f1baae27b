/**
 * The agent's one side effect on the host: a router namespace's `raw` table. Every verb is idempotent.
 * The real adapter runs argv arrays through execFile (never a shell) and hands rule text to
 * iptables-restore on stdin, so nothing from a message is ever parsed by a shell.
 */
import { stat } from "node:fs/promises";
import type { Family } from "../lib/catalog.ts";
import { type CommandRunner, ExecError, HelperRunner } from "./exec-helper.ts";

export interface IptablesPort {
  namespaceExists(ns: string): Promise<boolean>;
  /**
   * iptables-restore of `text` in a throwaway network namespace (`unshare --net`): nothing persists, nothing
   * can leak. Throws RestoreError like restore. The start-up probe uses it.
   */
  probeRestore(family: Family, text: string): Promise<void>;
  /** Creates the namespace unless it exists. */
  createNamespace(ns: string): Promise<void>;
  /** Deletes the namespace if it exists. */
  deleteNamespace(ns: string): Promise<void>;
  /** `iptables-save -t raw` (or ip6tables-save) inside the namespace. */
  save(ns: string, family: Family): Promise<string>;
  /** `iptables-restore --noflush --wait` with `text` on stdin: all or nothing. Throws RestoreError. */
  restore(ns: string, family: Family, text: string): Promise<void>;
}

/** iptables-restore rejected the input; nothing of it was committed. */
export class RestoreError extends Error {
  override readonly name = "RestoreError";
  constructor(
    readonly family: Family,
    readonly stderr: string,
  ) {
    super(`${family === "ipv4" ? "iptables" : "ip6tables"}-restore failed: ${stderr.trim().slice(0, 400)}`);
  }
}

export class NamespaceMissingError extends Error {
  override readonly name = "NamespaceMissingError";
  constructor(readonly namespace: string) {
    super(`network namespace ${namespace} does not exist`);
  }
}

const NS_RE = /^[A-Za-z0-9_.-]{1,64}$/;

/** Namespace names become argv entries and a path under /run/netns: allow only a plain, short name. */
export function assertNamespaceName(ns: string): void {
  if (!NS_RE.test(ns) || ns === "." || ns === "..") throw new Error(`unsafe namespace name "${ns}"`);
}

export interface ExecIptablesOptions {
  /** Where `ip netns` keeps its namespace handles. */
  readonly netnsDir?: string;
  readonly ipBinary?: string;
  readonly timeoutMs?: number;
  /** Who spawns the commands; default: a small helper process (see exec-helper.ts). */
  readonly runner?: CommandRunner;
}

/** The real adapter: `ip netns exec NS iptables-restore --noflush --wait` and friends. */
export class ExecIptables implements IptablesPort {
  private readonly netnsDir: string;
  private readonly ip: string;
  private readonly timeoutMs: number;
  private readonly runner: CommandRunner;

  constructor(options: ExecIptablesOptions = {}) {
    this.netnsDir = options.netnsDir ?? "/run/netns";
    this.ip = options.ipBinary ?? "ip";
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.runner = options.runner ?? new HelperRunner();
  }

  /** Lets the command helper exit once the commands in flight are done. */
  close(): void {
    this.runner.close();
  }

  async namespaceExists(ns: string): Promise<boolean> {
    assertNamespaceName(ns);
    try {
      await stat(`${this.netnsDir}/${ns}`);
      return true;
    } catch {
      return false;
    }
  }

  async probeRestore(family: Family, text: string): Promise<void> {
    const tool = family === "ipv4" ? "iptables-restore" : "ip6tables-restore";
    try {
      await this.runner.run("unshare", ["--net", tool, "--noflush", "--wait"], text, this.timeoutMs);
    } catch (error) {
      throw new RestoreError(
        family,
        error instanceof ExecError ? error.stderr || error.message : String(error),
      );
    }
  }

  async createNamespace(ns: string): Promise<void> {
    if (await this.namespaceExists(ns)) return;
    try {
      await this.runner.run(this.ip, ["netns", "add", ns], undefined, this.timeoutMs);
    } catch (error) {
      // Lost a race with another creator: fine, the verb is idempotent.
      if (!(await this.namespaceExists(ns))) throw error;
    }
  }

  async deleteNamespace(ns: string): Promise<void> {
    if (!(await this.namespaceExists(ns))) return;
    try {
      await this.runner.run(this.ip, ["netns", "delete", ns], undefined, this.timeoutMs);
    } catch (error) {
      if (await this.namespaceExists(ns)) throw error;
    }
  }

  async save(ns: string, family: Family): Promise<string> {
    assertNamespaceName(ns);
    const tool = family === "ipv4" ? "iptables-save" : "ip6tables-save";
    try {
      const { stdout } = await this.runner.run(
        this.ip,
        ["netns", "exec", ns, tool, "-t", "raw"],
        undefined,
        this.timeoutMs,
      );
      return stdout;
    } catch (error) {
      if (!(await this.namespaceExists(ns))) throw new NamespaceMissingError(ns);
      throw error;
    }
  }

  async restore(ns: string, family: Family, text: string): Promise<void> {
    assertNamespaceName(ns);
    const tool = family === "ipv4" ? "iptables-restore" : "ip6tables-restore";
    try {
      await this.runner.run(
        this.ip,
        ["netns", "exec", ns, tool, "--noflush", "--wait"],
        text,
        this.timeoutMs,
      );
    } catch (error) {
      if (!(await this.namespaceExists(ns))) throw new NamespaceMissingError(ns);
      throw new RestoreError(
        family,
        error instanceof ExecError ? error.stderr || error.message : String(error),
      );
    }
  }
}
