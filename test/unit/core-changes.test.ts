import { describe, expect, it } from "vitest";
import { applyChanges, type IndexedChange, revertOps } from "../../lib/domain/changes.ts";
import { ConflictError, NotFoundError } from "../../lib/errors.ts";
import type { StoredHelper } from "../../lib/ports.ts";
import type { HelperChange } from "../../lib/schemas/index.ts";
import { helperChange, newId, storedHelper } from "../support/factories.ts";

const routerId = newId();
const indexed = (...changes: HelperChange[]): IndexedChange[] =>
  changes.map((change, index) => ({ index, change }));
const asChange = (helper: StoredHelper, overrides: Partial<HelperChange> = {}): HelperChange => ({
  ...helper,
  router_id: routerId,
  ...overrides,
});
const CAP = 128;

describe("created", () => {
  it("inserts a new helper", () => {
    const change = helperChange(routerId);
    const result = applyChanges(routerId, [], "created", indexed(change), CAP);
    expect(result.helpers).toEqual([
      { id: change.id, protocol: change.protocol, port: change.port, helper: "ftp" },
    ]);
    expect(result.ops).toHaveLength(1);
  });

  it("is a no-op for an identical re-create", () => {
    const existing = storedHelper();
    const result = applyChanges(routerId, [existing], "created", indexed(asChange(existing)), CAP);
    expect(result).toEqual({ helpers: [existing], ops: [] });
  });

  it("refuses the same id with other fields with 409", () => {
    const existing = storedHelper();
    expect(() =>
      applyChanges(
        routerId,
        [existing],
        "created",
        indexed(asChange(existing, { port: existing.port + 1 })),
        CAP,
      ),
    ).toThrow(ConflictError);
  });

  it("refuses a second helper on a taken protocol and port with 409", () => {
    const existing = storedHelper({ protocol: "udp", port: 5060, helper: "sip" });
    const rival = helperChange(routerId, { protocol: "udp", port: 5060, helper: "sip" });
    expect(() => applyChanges(routerId, [existing], "created", indexed(rival), CAP)).toThrow(ConflictError);
  });

  it("allows the same port on the other protocol", () => {
    const existing = storedHelper({ protocol: "udp", port: 5060, helper: "sip" });
    const other = helperChange(routerId, { protocol: "tcp", port: 5060, helper: "sip" });
    expect(applyChanges(routerId, [existing], "created", indexed(other), CAP).helpers).toHaveLength(2);
  });

  it("refuses two helpers on one port within the same notification", () => {
    const a = helperChange(routerId, { port: 21 });
    const b = helperChange(routerId, { port: 21 });
    expect(() => applyChanges(routerId, [], "created", indexed(a, b), CAP)).toThrow(ConflictError);
  });

  it("refuses to grow a router past the per-router cap with 409 and a clear message", () => {
    const current = [storedHelper(), storedHelper()];
    const attempt = () => applyChanges(routerId, current, "created", indexed(helperChange(routerId)), 2);
    expect(attempt).toThrow(ConflictError);
    expect(attempt).toThrow("would hold 3 helpers; the limit is 2 per router");
  });

  it("names the offending entry's field path", () => {
    const existing = storedHelper({ port: 21 });
    try {
      applyChanges(
        routerId,
        [existing],
        "created",
        indexed(helperChange(routerId), helperChange(routerId, { port: 21 })),
        CAP,
      );
      expect.unreachable();
    } catch (error) {
      expect((error as ConflictError).details).toEqual([
        { path: "conntrack_helpers.1.port", message: expect.any(String) },
      ]);
    }
  });
});

describe("updated", () => {
  it("replaces an existing helper", () => {
    const existing = storedHelper({ port: 21 });
    const result = applyChanges(
      routerId,
      [existing],
      "updated",
      indexed(asChange(existing, { port: 2121 })),
      CAP,
    );
    expect(result.helpers).toEqual([{ ...existing, port: 2121 }]);
  });

  it("refuses an update of a helper the router does not hold with 404", () => {
    expect(() => applyChanges(routerId, [], "updated", indexed(helperChange(routerId)), CAP)).toThrow(
      NotFoundError,
    );
  });

  it("is a no-op when nothing differs", () => {
    const existing = storedHelper();
    expect(applyChanges(routerId, [existing], "updated", indexed(asChange(existing)), CAP).ops).toEqual([]);
  });

  it("refuses moving onto another helper's port with 409", () => {
    const a = storedHelper({ port: 21 });
    const b = storedHelper({ port: 2121 });
    expect(() => applyChanges(routerId, [a, b], "updated", indexed(asChange(b, { port: 21 })), CAP)).toThrow(
      ConflictError,
    );
  });
});

describe("deleted", () => {
  it("removes a present helper", () => {
    const existing = storedHelper();
    expect(applyChanges(routerId, [existing], "deleted", indexed(asChange(existing)), CAP).helpers).toEqual(
      [],
    );
  });

  it("is a no-op for an absent helper (deletes are idempotent)", () => {
    const existing = storedHelper();
    expect(applyChanges(routerId, [existing], "deleted", indexed(helperChange(routerId)), CAP)).toEqual({
      helpers: [existing],
      ops: [],
    });
  });

  it("lets a router over a lowered cap shrink", () => {
    const current = [storedHelper(), storedHelper(), storedHelper()];
    expect(
      applyChanges(routerId, current, "deleted", indexed(asChange(current[0]!)), 1).helpers,
    ).toHaveLength(2);
  });
});

describe("revertOps", () => {
  it("undoes inserts, removals and replacements", () => {
    const kept = storedHelper();
    const removed = storedHelper();
    const before = [kept, removed];
    const added = applyChanges(routerId, before, "created", indexed(helperChange(routerId)), CAP);
    const deleted = applyChanges(routerId, added.helpers, "deleted", indexed(asChange(removed)), CAP);
    const updated = applyChanges(
      routerId,
      deleted.helpers,
      "updated",
      indexed(asChange(kept, { port: 1 })),
      CAP,
    );
    let helpers = updated.helpers;
    for (const ops of [updated.ops, deleted.ops, added.ops]) helpers = revertOps(helpers, ops).helpers;
    expect([...helpers].sort((a, b) => a.id.localeCompare(b.id))).toEqual(
      [...before].sort((a, b) => a.id.localeCompare(b.id)),
    );
  });

  it("never reverts what a later writer changed", () => {
    const inserted = helperChange(routerId);
    const { ops } = applyChanges(routerId, [], "created", indexed(inserted), CAP);
    const laterVersion = { id: inserted.id, protocol: inserted.protocol, port: 9999, helper: "ftp" };
    expect(revertOps([laterVersion], ops)).toEqual({ helpers: [laterVersion], changed: false });
  });
});

describe("stored order", () => {
  const byOrder = (helpers: readonly StoredHelper[]) =>
    helpers.map((h) => `${h.protocol}/${String(h.port).padStart(5, "0")}/${h.id}`);
  const isSnapshotOrder = (helpers: readonly StoredHelper[]) => {
    const keys = byOrder(helpers);
    return keys.every((key, i) => i === 0 || keys[i - 1]! < key);
  };

  it("keeps a router's helpers in snapshot order whatever order they arrive in", () => {
    const arriving = [
      helperChange(routerId, { protocol: "udp", port: 69, helper: "tftp" }),
      helperChange(routerId, { port: 6000 }),
      helperChange(routerId, { port: 21 }),
      helperChange(routerId, { protocol: "udp", port: 5060, helper: "sip" }),
      helperChange(routerId, { port: 2121 }),
    ];
    let helpers: StoredHelper[] = [];
    for (const change of arriving)
      helpers = applyChanges(routerId, helpers, "created", indexed(change), CAP).helpers;
    expect(isSnapshotOrder(helpers)).toBe(true);
    expect(helpers.map((h) => h.port)).toEqual([21, 2121, 6000, 69, 5060]);
  });

  it("re-places an updated helper whose port moved, and a reverted one", () => {
    const low = storedHelper({ port: 100 });
    const high = storedHelper({ port: 200 });
    const moved = applyChanges(routerId, [low, high], "updated", indexed(asChange(low, { port: 300 })), CAP);
    expect(moved.helpers.map((h) => h.port)).toEqual([200, 300]);
    const reverted = revertOps(moved.helpers, moved.ops);
    expect(reverted.helpers.map((h) => h.port)).toEqual([100, 200]);
  });
});
