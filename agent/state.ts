/**
 * The last applied snapshot per router, one JSON file per node under the state directory. Written with
 * temp file + fsync + rename so a SIGKILL leaves either the old or the new file, never half of one.
 * The directory is the agent's own (0700 when it creates it; refused when others could write to it), temp
 * files get an unguessable name and are created exclusively, and no symlink is ever followed: what is in
 * this file decides which revisions the agent drops.
 */
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { mkdir, open, readdir, rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import * as z from "zod/mini";
import type { HelperRule, NamespaceKind } from "../lib/schemas/index.ts";
import { namespaceKind, primitives } from "../lib/schemas/index.ts";
import { BACKEND_NAMES, type BackendName } from "./backend.ts";
import { assertPrivatePath } from "./private-path.ts";

export interface RouterState {
  readonly revision: number;
  readonly helpers: readonly HelperRule[];
  readonly namespace: string;
  /** The kind `namespace` was rendered for; absent (state written before DVR support) means qrouter. */
  readonly kind?: NamespaceKind | undefined;
  readonly appliedAt: string;
  /** The agent created this namespace itself (--create-namespaces), so it may remove it again. */
  readonly createdNamespace?: boolean | undefined;
  /** The firewall backend that wrote it; absent (state written before nftables support) means iptables. */
  readonly backend?: BackendName | undefined;
}

const stateFile = z.strictObject({
  v: z.literal(1),
  node: primitives.host,
  routers: z.record(
    primitives.uuid,
    z.strictObject({
      revision: primitives.revision,
      helpers: z.array(
        z.strictObject({
          id: primitives.uuid,
          protocol: primitives.protocol,
          port: primitives.port,
          helper: primitives.helperName,
        }),
      ),
      namespace: z.string().check(z.maxLength(64)),
      kind: z.optional(namespaceKind),
      appliedAt: z.string().check(z.maxLength(40)),
      createdNamespace: z.optional(z.boolean()),
      backend: z.optional(z.enum(BACKEND_NAMES)),
    }),
  ),
});

export class StateStore {
  private writing: Promise<void> = Promise.resolve();
  /** The write not yet started, which later sets join. */
  private next: Promise<void> | undefined;
  private flushes = 0;
  private constructor(
    private readonly path: string,
    private readonly node: string,
    private readonly routers: Map<string, RouterState>,
  ) {}

  /**
   * Loads the node's state; a corrupt file (or anything but a regular file at its path) is reported and
   * replaced (snapshots are level-triggered). Throws AgentSetupError for a directory others could write to.
   */
  static async load(dir: string, node: string, onCorrupt?: (error: unknown) => void): Promise<StateStore> {
    primitives.host.parse(node);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    assertPrivatePath(dir, "state directory", false);
    const path = join(dir, stateFileName(node));
    await removeStaleTemps(dir, node);
    let routers = new Map<string, RouterState>();
    try {
      const parsed = stateFile.parse(JSON.parse(await readNoFollow(path)));
      routers = new Map(Object.entries(parsed.routers));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") onCorrupt?.(error);
    }
    return new StateStore(path, node, routers);
  }

  get(routerId: string): RouterState | undefined {
    return this.routers.get(routerId);
  }

  entries(): [string, RouterState][] {
    return [...this.routers];
  }

  /** Whole-file writes done so far (each one fsync). */
  get writes(): number {
    return this.flushes;
  }

  async set(routerId: string, state: RouterState): Promise<void> {
    this.routers.set(routerId, state);
    // Routers are applied concurrently: writes are chained so each rename publishes a newer whole map and
    // no two writers share the temp file. Group commit: a set that arrives while a write runs joins the
    // next one, which serializes the whole map when it starts, so one fsync covers every router changed
    // meanwhile (ten routers applied at once cost one or two fsync calls, not ten in a row).
    this.next ??= this.writing.then(() => {
      this.next = undefined;
      return this.flush();
    });
    const write = this.next;
    this.writing = write.catch(() => undefined);
    await write;
  }

  private async flush(): Promise<void> {
    this.flushes++;
    const body = JSON.stringify({ v: 1, node: this.node, routers: Object.fromEntries(this.routers) });
    // Exclusive and unguessable: nothing planted at a temp path (a symlink, a file) is ever written through.
    const tmp = `${this.path}.${randomBytes(8).toString("hex")}.tmp`;
    const handle = await open(tmp, WRITE_FLAGS, 0o600);
    try {
      await handle.writeFile(body);
      await handle.sync();
    } finally {
      await handle.close();
    }
    // rename replaces whatever is at the path (a symlink included) and never follows it.
    await rename(tmp, this.path);
  }
}

const WRITE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
// O_NONBLOCK: a FIFO planted at the path must not hang the start-up (no effect on a regular file).
const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

const stateFileName = (node: string) => `agent-${node}.json`;

async function readNoFollow(path: string): Promise<string> {
  const handle = await open(path, READ_FLAGS);
  try {
    if (!(await handle.stat()).isFile()) throw new Error(`${path} is not a regular file`);
    return await handle.readFile("utf8");
  } finally {
    await handle.close();
  }
}

/** Temp files a crash left behind (unlink removes a symlink itself, never its target). */
async function removeStaleTemps(dir: string, node: string): Promise<void> {
  const prefix = `${stateFileName(node)}.`;
  for (const name of await readdir(dir)) {
    if (name.startsWith(prefix) && name.endsWith(".tmp"))
      await unlink(join(dir, name)).catch(() => undefined);
  }
}
