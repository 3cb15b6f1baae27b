/**
 * The state directory decides which revisions the agent drops: nothing planted in or around it may steer the
 * agent or be written through (finding 8).
 */
import { randomUUID } from "node:crypto";
import {
  chmod,
  chown,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AgentSetupError } from "../../agent/private-path.ts";
import { StateStore } from "../../agent/state.ts";

const NODE = "state-node";
const entry = { revision: 4, helpers: [], namespace: "qrouter-x", appliedAt: "2026-12-02T00:00:00.000Z" };

describe("agent state directory", () => {
  let root: string;
  let dir: string;
  let outside: string;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), "cth-state-"));
    dir = join(root, "state");
    outside = join(root, "outside.txt");
    await writeFile(outside, "precious\n");
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it("creates a missing directory (and parents) with mode 0700 and the state file with 0600", async () => {
    const nested = join(dir, "deeper");
    const store = await StateStore.load(nested, NODE);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(nested)).mode & 0o777).toBe(0o700);
    await store.set(randomUUID(), entry);
    expect((await stat(join(nested, `agent-${NODE}.json`))).mode & 0o777).toBe(0o600);
    // No temp file left behind.
    expect(await readdir(nested)).toEqual([`agent-${NODE}.json`]);
  });

  it("a symlink planted at the old predictable temp path is not written through", async () => {
    await mkdir(dir, { mode: 0o700 });
    const store = await StateStore.load(dir, NODE);
    const predictable = join(dir, `agent-${NODE}.json.${process.pid}.tmp`);
    await symlink(outside, predictable);
    const routerId = randomUUID();
    await store.set(routerId, entry);
    expect(await readFile(outside, "utf8")).toBe("precious\n");
    expect((await StateStore.load(dir, NODE)).get(routerId)?.revision).toBe(4);
  });

  it("a symlink planted at the state file is neither read nor written through", async () => {
    await mkdir(dir, { mode: 0o700 });
    const routerId = randomUUID();
    // A valid state file elsewhere: followed, it would make the agent drop revisions up to 2^53-1.
    await writeFile(
      outside,
      JSON.stringify({
        v: 1,
        node: NODE,
        routers: { [routerId]: { ...entry, revision: 9_007_199_254_740_991 } },
      }),
    );
    await symlink(outside, join(dir, `agent-${NODE}.json`));
    const refused: unknown[] = [];
    const store = await StateStore.load(dir, NODE, (error) => refused.push(error));
    expect(store.get(routerId)).toBeUndefined();
    expect(refused).toHaveLength(1);
    await store.set(routerId, entry);
    expect(JSON.parse(await readFile(outside, "utf8")).routers[routerId].revision).toBe(
      9_007_199_254_740_991,
    );
    expect((await lstat(join(dir, `agent-${NODE}.json`))).isFile()).toBe(true);
  });

  it("refuses a group- or world-writable directory, naming it", async () => {
    await mkdir(dir);
    await chmod(dir, 0o777);
    const error = await StateStore.load(dir, NODE).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AgentSetupError);
    expect((error as Error).message).toContain(dir);
    expect((error as Error).message).toMatch(/group- or world-writable \(mode 0777\)/);
    await chmod(dir, 0o770);
    await expect(StateStore.load(dir, NODE)).rejects.toThrow(/mode 0770/);
    // Nothing was created in it.
    expect(await readdir(dir)).toEqual([]);
  });

  it.skipIf(process.getuid?.() !== 0 && process.env.CI !== "true")(
    "refuses a directory owned by another user (as root: chown 65534)",
    async () => {
      await mkdir(dir, { mode: 0o700 });
      await chown(dir, 65_534, 65_534);
      const error = await StateStore.load(dir, NODE).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(AgentSetupError);
      expect((error as Error).message).toContain(dir);
      expect((error as Error).message).toMatch(/owned by uid 65534/);
    },
  );
});
