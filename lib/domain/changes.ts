/**
 * Change semantics (issue 2): created inserts (identical re-create is a no-op, same id with other fields is
 * 409); updated needs the helper (404 otherwise); deleted is idempotent; one helper per (protocol, port);
 * the per-router cap holds after the whole change. Pure: the caller decides where the result goes.
 */
import { ConflictError, NotFoundError } from "../errors.ts";
import type { StoredHelper } from "../ports.ts";
import type { HelperChange, NotificationEvent } from "../schemas/index.ts";
import { insertSorted } from "./snapshot.ts";

export type HelperOp =
  | { readonly kind: "insert"; readonly helper: StoredHelper }
  | { readonly kind: "remove"; readonly helper: StoredHelper }
  | { readonly kind: "replace"; readonly before: StoredHelper; readonly after: StoredHelper };

export interface RouterChange {
  readonly helpers: StoredHelper[];
  /** Empty when the change is a no-op (the revision must not move). */
  readonly ops: HelperOp[];
}

/** A change with its position in the request, for field paths in errors. */
export interface IndexedChange {
  readonly index: number;
  readonly change: HelperChange;
}

const toStored = ({ id, protocol, port, helper }: HelperChange): StoredHelper => ({
  id,
  protocol,
  port,
  helper,
});

const sameRule = (a: StoredHelper, b: StoredHelper): boolean =>
  a.protocol === b.protocol && a.port === b.port && a.helper === b.helper;

function portTaken(helpers: readonly StoredHelper[], candidate: StoredHelper): StoredHelper | undefined {
  return helpers.find(
    (other) =>
      other.id !== candidate.id && other.protocol === candidate.protocol && other.port === candidate.port,
  );
}

export function applyChanges(
  routerId: string,
  current: readonly StoredHelper[],
  event: NotificationEvent,
  changes: readonly IndexedChange[],
  maxHelpersPerRouter: number,
): RouterChange {
  const helpers = [...current];
  const ops: HelperOp[] = [];
  for (const { index, change } of changes) {
    const path = `conntrack_helpers.${index}`;
    const wanted = toStored(change);
    const at = helpers.findIndex((existing) => existing.id === wanted.id);
    const existing = at >= 0 ? helpers[at] : undefined;
    if (event === "deleted") {
      if (existing) {
        helpers.splice(at, 1);
        ops.push({ kind: "remove", helper: existing });
      }
      continue;
    }
    if (event === "created" && existing) {
      if (sameRule(existing, wanted)) continue;
      throw new ConflictError(`helper ${wanted.id} already exists on router ${routerId} with other fields`, [
        { path, message: "a helper with this id exists with a different protocol, port or helper" },
      ]);
    }
    if (event === "updated" && !existing) {
      throw new NotFoundError(`helper ${wanted.id} not found on router ${routerId}`, [
        { path: `${path}.id`, message: "no such helper on this router" },
      ]);
    }
    if (existing && sameRule(existing, wanted)) continue;
    const clash = portTaken(helpers, wanted);
    if (clash) {
      throw new ConflictError(
        `router ${routerId} already has helper ${clash.id} on ${wanted.protocol} port ${wanted.port}`,
        [
          {
            path: `${path}.port`,
            message: "only one helper per protocol and port takes effect in the kernel",
          },
        ],
      );
    }
    // Kept in snapshot order, so building a snapshot needs no sort.
    if (existing) {
      helpers.splice(at, 1);
      insertSorted(helpers, wanted);
      ops.push({ kind: "replace", before: existing, after: wanted });
    } else {
      insertSorted(helpers, wanted);
      ops.push({ kind: "insert", helper: wanted });
    }
  }
  if (helpers.length > maxHelpersPerRouter && helpers.length > current.length) {
    throw new ConflictError(
      `router ${routerId} would hold ${helpers.length} helpers; the limit is ${maxHelpersPerRouter} per router`,
      [{ path: "conntrack_helpers", message: `at most ${maxHelpersPerRouter} helpers per router` }],
    );
  }
  return { helpers, ops };
}

/**
 * Undoes `ops` on whatever the router holds now, touching only what is still as this change left it
 * (a later writer's work is never reverted). Returns the helpers and whether anything changed.
 */
export function revertOps(
  current: readonly StoredHelper[],
  ops: readonly HelperOp[],
): { helpers: StoredHelper[]; changed: boolean } {
  const helpers = [...current];
  let changed = false;
  for (const op of [...ops].reverse()) {
    if (op.kind === "insert") {
      const at = helpers.findIndex((h) => h.id === op.helper.id && sameRule(h, op.helper));
      if (at >= 0) {
        helpers.splice(at, 1);
        changed = true;
      }
    } else if (op.kind === "remove") {
      if (!helpers.some((h) => h.id === op.helper.id) && !portTaken(helpers, op.helper)) {
        insertSorted(helpers, op.helper);
        changed = true;
      }
    } else {
      const at = helpers.findIndex((h) => h.id === op.after.id && sameRule(h, op.after));
      if (at >= 0 && !portTaken(helpers, op.before)) {
        helpers.splice(at, 1);
        insertSorted(helpers, op.before);
        changed = true;
      }
    }
  }
  return { helpers, changed };
}
