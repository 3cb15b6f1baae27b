/**
 * The agent's one side effect on the host: a router namespace's `raw` table. Every verb is idempotent.
 * The real adapter runs argv arrays through execFile (never a shell) and hands rule text to
 * iptables-restore on stdin, so nothing from a message is ever parsed by a shell.
 */
import type { Family } from "../../lib/catalog.ts";
import { assertNamespaceName, NamespaceMissingError, type Namespaces } from "../backend.ts";
import { ExecError } from "../exec-helper.ts";
import { ExecNamespaces } from "../namespaces.ts";

export interface IptablesPort extends Namespaces {
  /**
   * iptables-restore of `text` in a throwaway network namespace (`unshare --net`): nothing persists, nothing
   * can leak. Throws RestoreError like restore. The start-up probe uses it.
   */
  probeRestore(family: Family, text: string): Promise<void>;
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

/** The real adapter: `ip netns exec NS iptables-restore --noflush --wait` and friends. */
export class ExecIptables extends ExecNamespaces implements IptablesPort {
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
