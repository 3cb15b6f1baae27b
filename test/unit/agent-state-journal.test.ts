/**
 * The state journal: a write costs what changed, not what the node holds; what was written survives a
 * restart, a torn append and a crash between folding the journal and removing it.
 */
import { randomUUID } from "node:crypto";
import { appendFile, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type RouterState, StateStore } from "../../agent/state.ts";
import type { RouterSyncMessage } from "../../lib/schemas/index.ts";

const NODE = "journal-node";
const FILE = `agent-${NODE}.json`;
const JOURNAL = `agent-${NODE}.journal`;

const applied = (revision: number, helpers = 2): RouterState => ({
  revision,
  helpers: Array.from({ length: helpers }, (_, i) => ({
    id: randomUUID(),
    protocol: "tcp" as const,
    port: 2100 + i,
    helper: "ftp",
  })),
  namespace: `qrouter-${randomUUID()}`,
  kind: "qrouter",
  appliedAt: "2026-12-03T00:00:00.000Z",
  backend: "nftables",
});

const snapshot = (routerId: string, revision: number): RouterSyncMessage => ({
  v: 1,
  kind: "router-sync",
  router_id: routerId,
  revision,
  helpers: [{ id: randomUUID(), protocol: "udp", port: 69, helper: "tftp" }],
  correlation_id: `c-${revision}`,
  issued_at: "2026-12-03T00:00:00.000Z",
});

describe("agent state journal", () => {
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "cth-journal-"));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A store holding `routers` applied routers, folded into one file, and their ids. */
  async function storeOf(routers: number): Promise<{ store: StateStore; ids: string[] }> {
    const ids = Array.from({ length: routers }, () => randomUUID());
    const store = await StateStore.load(dir, NODE);
    await Promise.all(ids.map((id) => store.set(id, applied(1))));
    return { store, ids };
  }

  it("one router's change on a node of 1,000 writes what a node of 10 writes", async () => {
    const costOfOneChange = async (routers: number) => {
      await rm(dir, { recursive: true, force: true });
      const { store, ids } = await storeOf(routers);
      const before = store.bytesWritten;
      await store.set(ids[0]!, applied(2));
      return store.bytesWritten - before;
    };
    const small = await costOfOneChange(10);
    const large = await costOfOneChange(1_000);
    expect(small).toBeGreaterThan(0);
    expect(large).toBe(small);
    expect(await readdir(dir)).toEqual(expect.arrayContaining([FILE, JOURNAL]));
  });

  it("a restart reads the file and its journal back, and folds the journal", async () => {
    const { store, ids } = await storeOf(5);
    const changed = applied(7);
    await store.set(ids[2]!, changed);
    const pending = snapshot(ids[3]!, 9);
    await store.setPending(pending);
    const reloaded = await StateStore.load(dir, NODE);
    expect(reloaded.get(ids[2]!)).toEqual(changed);
    expect(reloaded.get(ids[0]!)?.revision).toBe(1);
    expect(reloaded.pending(ids[3]!)).toEqual(pending);
    expect(reloaded.pendingRouters()).toEqual([ids[3]]);
    expect(await readdir(dir)).toEqual([FILE]);
  });

  it("the journal is folded into the file once it outgrows it", async () => {
    const store = await StateStore.load(dir, NODE, { compactFloorBytes: 1 });
    const ids = [randomUUID(), randomUUID()];
    await store.set(ids[0]!, applied(1));
    const fileBytes = (await readFile(join(dir, FILE))).length;
    for (let revision = 2; revision < 12; revision++) await store.set(ids[1]!, applied(revision));
    const journal = await readFile(join(dir, JOURNAL), "utf8").catch(() => "");
    // Never more than the file's size in the journal, plus the one line that crossed it.
    expect(journal.length).toBeLessThanOrEqual(2 * fileBytes);
    const reloaded = await StateStore.load(dir, NODE);
    expect(reloaded.get(ids[1]!)?.revision).toBe(11);
    expect(reloaded.get(ids[0]!)?.revision).toBe(1);
  });

  it("a torn last journal line is dropped silently; the lines before it hold", async () => {
    const { store, ids } = await storeOf(2);
    await store.set(ids[0]!, applied(3));
    await appendFile(join(dir, JOURNAL), '{"g":1,"id":"');
    const refused: unknown[] = [];
    const reloaded = await StateStore.load(dir, NODE, (error) => refused.push(error));
    expect(refused).toEqual([]);
    expect(reloaded.get(ids[0]!)?.revision).toBe(3);
  });

  it("an unreadable line in the middle is reported and nothing after it is replayed", async () => {
    const { store, ids } = await storeOf(2);
    await store.set(ids[0]!, applied(3));
    await appendFile(join(dir, JOURNAL), "not json\n");
    await store.set(ids[1]!, applied(4));
    const refused: unknown[] = [];
    const reloaded = await StateStore.load(dir, NODE, (error) => refused.push(error));
    expect(refused).toHaveLength(1);
    expect(String(refused[0])).toMatch(/journal line 2 unreadable/);
    expect(reloaded.get(ids[0]!)?.revision).toBe(3);
    expect(reloaded.get(ids[1]!)?.revision).toBe(1);
  });

  it("journal lines of an older generation are not replayed over a newer file", async () => {
    const { store, ids } = await storeOf(1);
    await store.set(ids[0]!, applied(5));
    const stale = await readFile(join(dir, JOURNAL), "utf8");
    // The fold of a restart, then the old journal put back: a crash between the rename and the unlink.
    const folded = await StateStore.load(dir, NODE);
    await folded.set(ids[0]!, applied(6));
    await StateStore.load(dir, NODE);
    await writeFile(join(dir, JOURNAL), stale);
    expect((await StateStore.load(dir, NODE)).get(ids[0]!)?.revision).toBe(6);
  });

  it("a pending snapshot is cleared only by the snapshot it is, not by an older one", async () => {
    const { store, ids } = await storeOf(1);
    const older = snapshot(ids[0]!, 2);
    const newer = snapshot(ids[0]!, 3);
    await store.setPending(older);
    await store.setPending(newer);
    await store.clearPending(older);
    expect(store.pending(ids[0]!)).toBe(newer);
    await store.clearPending(newer);
    expect((await StateStore.load(dir, NODE)).pending(ids[0]!)).toBeUndefined();
  });

  it("a symlink planted at the journal path is not written through: the change goes into a whole file", async () => {
    const outside = join(dir, "..", `outside-${randomUUID()}`);
    await writeFile(outside, "precious\n");
    try {
      const { store, ids } = await storeOf(1);
      await symlink(outside, join(dir, JOURNAL));
      await store.set(ids[0]!, applied(2));
      expect(await readFile(outside, "utf8")).toBe("precious\n");
      // The change went into a new whole file instead, and the link is gone.
      expect(await readdir(dir)).toEqual([FILE]);
      expect((await StateStore.load(dir, NODE)).get(ids[0]!)?.revision).toBe(2);
    } finally {
      await rm(outside, { force: true });
    }
  });
});
