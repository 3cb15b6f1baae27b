/**
 * The last applied snapshot per router, one JSON file per node under the state directory. Written with
 * temp file + fsync + rename so a SIGKILL leaves either the old or the new file, never half of one.
 */
import { mkdir, open, readFile, rename } from "node:fs/promises";
import { join } from "node:path";
import * as z from "zod/mini";
import type { HelperRule } from "../lib/schemas/index.ts";
import { primitives } from "../lib/schemas/index.ts";

export interface RouterState {
  readonly revision: number;
  readonly helpers: readonly HelperRule[];
  readonly namespace: string;
  readonly appliedAt: string;
  /** The agent created this namespace itself (--create-namespaces), so it may remove it again. */
  readonly createdNamespace?: boolean | undefined;
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
      appliedAt: z.string().check(z.maxLength(40)),
      createdNamespace: z.optional(z.boolean()),
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

  /** Loads the node's state; a corrupt file is reported and replaced (snapshots are level-triggered). */
  static async load(dir: string, node: string, onCorrupt?: (error: unknown) => void): Promise<StateStore> {
    primitives.host.parse(node);
    await mkdir(dir, { recursive: true });
    const path = join(dir, `agent-${node}.json`);
    let routers = new Map<string, RouterState>();
    try {
      const parsed = stateFile.parse(JSON.parse(await readFile(path, "utf8")));
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
    const tmp = `${this.path}.${process.pid}.tmp`;
    const handle = await open(tmp, "w", 0o600);
    try {
      await handle.writeFile(body);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, this.path);
  }
}
