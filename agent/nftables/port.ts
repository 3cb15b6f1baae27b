/**
 * The nftables backend's side effect: `nft` inside a router namespace. The real adapter enters the namespace
 * with `nsenter --net` (the network namespace is all nft needs; `ip netns exec` also remounts /sys, about a
 * millisecond per command here) and runs argv arrays through the command runner, never a shell.
 *
 * The transaction is written to a file first: with `-j` (JSON output), nft tries its input as JSON and then
 * re-reads it as text, and a pipe cannot be read twice (measured: stdin input with `--echo -j` silently
 * commits nothing). The directory is this process's own, mode 0700.
 */
import { mkdtemp, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assertNamespaceName, NamespaceMissingError, type Namespaces } from "../backend.ts";
import { ExecError } from "../exec-helper.ts";
import { ExecNamespaces } from "../namespaces.ts";
import { TABLE } from "./render.ts";

export interface NftPort extends Namespaces {
  /** `nft --echo --handle -j -f` of `text` in `ns`: all or nothing; returns the echo (JSON). Throws NftError. */
  apply(ns: string, text: string): Promise<string>;
  /** `nft -j list table inet cth-helpers` in `ns`; undefined when there is no such table. */
  list(ns: string): Promise<string | undefined>;
  /** `apply` in a throwaway network namespace (`unshare --net`): nothing persists. The start-up probe. */
  probeApply(text: string): Promise<void>;
}

/** nft rejected the transaction; nothing of it was committed. */
export class NftError extends Error {
  override readonly name = "NftError";
  constructor(readonly stderr: string) {
    super(`nft failed: ${stderr.trim().slice(0, 400)}`);
  }
}

const stderrOf = (error: unknown): string =>
  error instanceof ExecError
    ? error.stderr || error.message
    : error instanceof Error
      ? error.message
      : String(error);

export class ExecNft extends ExecNamespaces implements NftPort {
  private dir: Promise<string> | undefined;
  private files = 0;

  private async withFile<T>(text: string, use: (path: string) => Promise<T>): Promise<T> {
    // A failed mkdtemp (a full /tmp) is not kept: the next apply tries again.
    this.dir ??= mkdtemp(join(tmpdir(), "cth-nft-")).catch((error: unknown) => {
      this.dir = undefined;
      throw error;
    });
    const path = join(await this.dir, `${process.pid}-${++this.files}.nft`);
    await writeFile(path, text, { mode: 0o600 });
    try {
      return await use(path);
    } finally {
      await unlink(path).catch(() => undefined);
    }
  }

  /** `nft ARGS` inside `ns`; a failure is NamespaceMissingError when `ns` is gone, else NftError. */
  private async nft(ns: string, args: readonly string[]): Promise<string> {
    assertNamespaceName(ns);
    try {
      const nsenter = [`--net=${this.netnsDir}/${ns}`, "nft", ...args];
      return (await this.runner.run("nsenter", nsenter, undefined, this.timeoutMs)).stdout;
    } catch (error) {
      if (!(await this.namespaceExists(ns))) throw new NamespaceMissingError(ns);
      throw new NftError(stderrOf(error));
    }
  }

  apply(ns: string, text: string): Promise<string> {
    return this.withFile(text, (path) => this.nft(ns, ["--echo", "--handle", "-j", "-f", path]));
  }

  async list(ns: string): Promise<string | undefined> {
    try {
      return await this.nft(ns, ["-j", "list", "table", "inet", TABLE]);
    } catch (error) {
      if (error instanceof NftError && /No such file or directory/.test(error.stderr)) return undefined;
      throw error;
    }
  }

  async probeApply(text: string): Promise<void> {
    await this.withFile(text, async (path) => {
      try {
        await this.runner.run("unshare", ["--net", "nft", "-f", path], undefined, this.timeoutMs);
      } catch (error) {
        throw new NftError(stderrOf(error));
      }
    });
  }

  override close(): void {
    super.close();
    const dir = this.dir;
    this.dir = undefined;
    void dir?.then((path) => rm(path, { recursive: true, force: true })).catch(() => undefined);
  }
}
