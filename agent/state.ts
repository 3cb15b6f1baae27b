/**
 * The last applied snapshot per router (and the snapshots taken off the queue, not applied yet): per node, one
 * JSON file under the state directory plus a journal of later changes. The file is written with temp file +
 * fsync + rename so a SIGKILL leaves either the old or the new file, never half of one; a journal line is
 * appended and fsynced, and a torn last line is dropped on load.
 * The directory is the agent's own (0700 when it creates it; refused when others could write to it), temp
 * files get an unguessable name and are created exclusively, and no symlink is ever followed: what is in
 * this file decides which revisions the agent drops.
 */
import { randomBytes } from "node:crypto";
import { close, constants, fstat, fsync, open as openCallback, write } from "node:fs";
import { mkdir, open, readdir, rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import * as z from "zod/mini";
import type { HelperRule, NamespaceKind, RouterSyncMessage } from "../lib/schemas/index.ts";
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

const helperEntry = z.strictObject({
  id: primitives.uuid,
  protocol: primitives.protocol,
  port: primitives.port,
  helper: primitives.helperName,
});

const routerEntry = z.strictObject({
  revision: primitives.revision,
  helpers: z.array(helperEntry),
  namespace: z.string().check(z.maxLength(64)),
  kind: z.optional(namespaceKind),
  appliedAt: z.string().check(z.maxLength(40)),
  createdNamespace: z.optional(z.boolean()),
  backend: z.optional(z.enum(BACKEND_NAMES)),
});

/** A verified snapshot taken off the queue and not yet applied (the queue message is gone: this is its copy). */
const pendingEntry = z.strictObject({
  v: z.literal(1),
  kind: z.literal("router-sync"),
  router_id: primitives.uuid,
  revision: primitives.revision,
  namespace: z.optional(namespaceKind),
  helpers: z.array(helperEntry),
  correlation_id: primitives.correlationId,
  issued_at: z.string().check(z.maxLength(40)),
});

const stateFile = z.strictObject({
  v: z.literal(1),
  node: primitives.host,
  /** Which journal lines belong to this file; absent (files written before the journal) means 0. */
  generation: z.optional(primitives.revision),
  routers: z.record(primitives.uuid, routerEntry),
  pending: z.optional(z.record(primitives.uuid, pendingEntry)),
});

/** One journal line: a router's whole record after a change (null: none). */
const journalLine = z.strictObject({
  g: primitives.revision,
  id: primitives.uuid,
  a: z.nullable(routerEntry),
  p: z.nullable(pendingEntry),
});

/** The journal is folded into the state file once it outgrows the file (and this floor). */
const COMPACT_FLOOR_BYTES = 64 * 1024;

export interface StateStoreOptions {
  readonly onCorrupt?: (error: unknown) => void;
  /** Journal bytes below which no compaction happens, whatever the state file's size. */
  readonly compactFloorBytes?: number;
}

/**
 * What the agent has applied per router, and what it has taken off the queue but not applied yet. The state
 * file holds a whole map; every later change appends its router's record to a journal (one line, one fsync
 * shared by every change made meanwhile), so a write costs what changed, not what the node holds. Once the
 * journal outgrows the file, both are folded into a new file (written aside, fsync, rename) of the next
 * generation; journal lines of an older generation are ignored, so a crash between the rename and the
 * journal's removal replays nothing twice.
 */
export class StateStore {
  private writing: Promise<void> = Promise.resolve();
  /** The write not yet started, which later changes join. */
  private next: Promise<void> | undefined;
  private flushes = 0;
  private bytes = 0;
  private readonly dirty = new Set<string>();
  private journalBytes: number;
  private fileBytes: number;
  private readonly compactFloor: number;
  private journal: number | undefined;
  private constructor(
    private readonly path: string,
    private readonly node: string,
    private readonly routers: Map<string, RouterState>,
    private readonly pendingSnapshots: Map<string, RouterSyncMessage>,
    private generation: number,
    /** No valid state file of this generation on disk yet: the first write is a whole file. */
    private fileMissing: boolean,
    options: StateStoreOptions,
  ) {
    this.journalBytes = 0;
    this.fileBytes = 0;
    this.compactFloor = options.compactFloorBytes ?? COMPACT_FLOOR_BYTES;
  }

  /**
   * Loads the node's state and replays its journal; a corrupt file (or anything but a regular file at its
   * path) is reported and replaced (snapshots are level-triggered). A torn last journal line (a crash during
   * an append) is dropped silently; anything else unreadable in the journal is reported and replay stops
   * there. Throws AgentSetupError for a directory others could write to.
   */
  static async load(
    dir: string,
    node: string,
    onCorruptOrOptions?: ((error: unknown) => void) | StateStoreOptions,
  ): Promise<StateStore> {
    const options =
      typeof onCorruptOrOptions === "function"
        ? { onCorrupt: onCorruptOrOptions }
        : (onCorruptOrOptions ?? {});
    const { onCorrupt } = options;
    primitives.host.parse(node);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    assertPrivatePath(dir, "state directory", false);
    const path = join(dir, stateFileName(node));
    await removeStaleTemps(dir, node);
    let routers = new Map<string, RouterState>();
    let pending = new Map<string, RouterSyncMessage>();
    let generation = 0;
    let fileMissing = true;
    try {
      const parsed = stateFile.parse(JSON.parse(await readNoFollow(path)));
      routers = new Map(Object.entries(parsed.routers));
      pending = new Map(Object.entries(parsed.pending ?? {}) as [string, RouterSyncMessage][]);
      generation = parsed.generation ?? 0;
      fileMissing = false;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") onCorrupt?.(error);
    }
    const store = new StateStore(path, node, routers, pending, generation, fileMissing, options);
    // A journal without its file is not replayed (it would be a partial map): it goes at the next write.
    if (!fileMissing) {
      const replayed = await store.replay(onCorrupt);
      // Folded at once: a restart begins with one file and an empty journal.
      if (replayed > 0) await store.commit(undefined, true);
    }
    return store;
  }

  get(routerId: string): RouterState | undefined {
    return this.routers.get(routerId);
  }

  entries(): [string, RouterState][] {
    return [...this.routers];
  }

  /** The snapshot taken off the queue for this router and not applied yet. */
  pending(routerId: string): RouterSyncMessage | undefined {
    return this.pendingSnapshots.get(routerId);
  }

  pendingRouters(): string[] {
    return [...this.pendingSnapshots.keys()];
  }

  /** Durable writes done so far (each one fsync). */
  get writes(): number {
    return this.flushes;
  }

  /** Bytes written to the state file and the journal so far. */
  get bytesWritten(): number {
    return this.bytes;
  }

  /** Records an applied snapshot; resolves once it is on disk. */
  async set(routerId: string, state: RouterState): Promise<void> {
    this.routers.set(routerId, state);
    await this.commit(routerId);
  }

  /** Keeps a snapshot to apply (replacing an older one); resolves once it is on disk. */
  async setPending(snapshot: RouterSyncMessage): Promise<void> {
    this.pendingSnapshots.set(snapshot.router_id, snapshot);
    await this.commit(snapshot.router_id);
  }

  /** Forgets the pending snapshot if it is still `snapshot` (a newer one stays); resolves once on disk. */
  async clearPending(snapshot: RouterSyncMessage): Promise<void> {
    if (this.pendingSnapshots.get(snapshot.router_id) !== snapshot) return;
    this.pendingSnapshots.delete(snapshot.router_id);
    await this.commit(snapshot.router_id);
  }

  /**
   * Routers are applied concurrently: writes are chained so no two run at once. Group commit: a change that
   * arrives while a write runs joins the next one, so one fsync covers every router changed meanwhile.
   */
  private commit(routerId: string | undefined, compact = false): Promise<void> {
    if (routerId !== undefined) this.dirty.add(routerId);
    if (compact) this.fileMissing = true;
    this.next ??= this.writing.then(() => {
      this.next = undefined;
      return this.flush();
    });
    const write = this.next;
    this.writing = write.catch(() => undefined);
    return write;
  }

  private async flush(): Promise<void> {
    const ids = [...this.dirty];
    this.dirty.clear();
    try {
      const lines = ids
        .map(
          (id) =>
            `${JSON.stringify({ g: this.generation, id, a: this.routers.get(id) ?? null, p: this.pendingSnapshots.get(id) ?? null })}\n`,
        )
        .join("");
      const size = Buffer.byteLength(lines);
      if (this.fileMissing || this.journalBytes + size > Math.max(this.compactFloor, this.fileBytes)) {
        await this.compact();
      } else if (size > 0) {
        try {
          await this.append(lines);
          this.journalBytes += size;
        } catch {
          // Something other than our journal at its path (a symlink planted, say): the fold replaces it.
          await this.compact();
        }
      }
    } catch (error) {
      // Not on disk: the next write carries these routers again.
      for (const id of ids) this.dirty.add(id);
      throw error;
    }
  }

  private async append(lines: string): Promise<void> {
    this.flushes++;
    // Opened once per generation (O_NOFOLLOW, checked a regular file) and kept: an append is write + fsync.
    // A plain descriptor, not a FileHandle: a store dropped without close() must not warn when collected.
    if (this.journal === undefined) {
      const fd = await openFd(this.journalPath, APPEND_FLAGS, 0o600);
      if (!(await fstatFd(fd)).isFile()) {
        await closeFd(fd);
        throw new Error(`${this.journalPath} is not a regular file`);
      }
      this.journal = fd;
    }
    try {
      const buffer = Buffer.from(lines);
      for (let done = 0; done < buffer.length; ) done += await writeFd(this.journal, buffer, done);
      await fsyncFd(this.journal);
    } catch (error) {
      await this.closeJournal();
      throw error;
    }
    this.bytes += Buffer.byteLength(lines);
  }

  private async closeJournal(): Promise<void> {
    const fd = this.journal;
    this.journal = undefined;
    if (fd !== undefined) await closeFd(fd).catch(() => undefined);
  }

  /** Closes the journal file (the agent's stop; a later change opens it again). */
  async close(): Promise<void> {
    await this.writing;
    await this.closeJournal();
  }

  private async compact(): Promise<void> {
    this.flushes++;
    const generation = this.generation + 1;
    const body = JSON.stringify({
      v: 1,
      node: this.node,
      generation,
      routers: Object.fromEntries(this.routers),
      pending: Object.fromEntries(this.pendingSnapshots),
    });
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
    this.generation = generation;
    this.fileMissing = false;
    this.fileBytes = Buffer.byteLength(body);
    this.bytes += this.fileBytes;
    this.journalBytes = 0;
    // Its lines are of an older generation now; unlink removes a symlink itself, never its target.
    await this.closeJournal();
    await unlink(this.journalPath).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "ENOENT") throw error;
    });
  }

  private get journalPath(): string {
    return `${this.path.slice(0, -".json".length)}.journal`;
  }

  /** Applies the journal's lines of this generation; returns how many. */
  private async replay(onCorrupt?: (error: unknown) => void): Promise<number> {
    let text: string;
    try {
      text = await readNoFollow(this.journalPath);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") onCorrupt?.(error);
      return 0;
    }
    const lines = text.split("\n");
    // A complete journal ends with a newline; what follows the last one is a torn append.
    lines.pop();
    let replayed = 0;
    for (const [index, line] of lines.entries()) {
      let record: z.infer<typeof journalLine>;
      try {
        record = journalLine.parse(JSON.parse(line));
      } catch (error) {
        onCorrupt?.(
          new Error(`state journal line ${index + 1} unreadable; later lines ignored`, { cause: error }),
        );
        break;
      }
      if (record.g !== this.generation) continue;
      if (record.a) this.routers.set(record.id, record.a);
      else this.routers.delete(record.id);
      if (record.p) this.pendingSnapshots.set(record.id, record.p as RouterSyncMessage);
      else this.pendingSnapshots.delete(record.id);
      replayed++;
    }
    return replayed;
  }
}

const WRITE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const openFd = promisify(openCallback);
const fstatFd = promisify(fstat);
const fsyncFd = promisify(fsync);
const closeFd = promisify(close);
const writeFd = (fd: number, buffer: Buffer, offset: number) =>
  new Promise<number>((resolve, reject) =>
    write(fd, buffer, offset, buffer.length - offset, null, (error, written) =>
      error ? reject(error) : resolve(written),
    ),
  );
const APPEND_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | constants.O_NOFOLLOW;
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
