/**
 * Router namespaces on the host: `ip netns` handles under /run/netns. Every verb is idempotent. Commands are
 * argv arrays run through a CommandRunner (never a shell), so nothing from a message is parsed by a shell.
 */
import { stat } from "node:fs/promises";
import { assertNamespaceName, type Namespaces } from "./backend.ts";
import { type CommandRunner, HelperRunner } from "./exec-helper.ts";

export interface ExecOptions {
  /** Where `ip netns` keeps its namespace handles. */
  readonly netnsDir?: string;
  readonly ipBinary?: string;
  readonly timeoutMs?: number;
  /** Who spawns the commands; default: a small helper process (see exec-helper.ts). */
  readonly runner?: CommandRunner;
}

export class ExecNamespaces implements Namespaces {
  protected readonly netnsDir: string;
  protected readonly ip: string;
  protected readonly timeoutMs: number;
  protected readonly runner: CommandRunner;

  constructor(options: ExecOptions = {}) {
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
}
