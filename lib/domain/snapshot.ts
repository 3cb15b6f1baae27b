import type { Clock, RouterRecord, StoredHelper } from "../ports.ts";
import type { RouterSyncMessage } from "../schemas/index.ts";

const byCodePoint = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Stable order: agents render rules in this order, so equal sets always render equal text. Code-point
 * comparison, not localeCompare: the order must not depend on the runtime's locale (and ICU is slow).
 */
export const compareHelpers = (a: StoredHelper, b: StoredHelper): number =>
  byCodePoint(a.protocol, b.protocol) || a.port - b.port || byCodePoint(a.id, b.id);

/** A sorted copy. Stored sets are kept in this order (see changes.ts), so this is usually one linear check. */
export function sortHelpers(helpers: readonly StoredHelper[]): StoredHelper[] {
  for (let i = 1; i < helpers.length; i++) {
    if (compareHelpers(helpers[i - 1]!, helpers[i]!) > 0) return [...helpers].sort(compareHelpers);
  }
  return [...helpers];
}

/** Inserts `helper` where the order puts it (in place). */
export function insertSorted(helpers: StoredHelper[], helper: StoredHelper): void {
  const at = helpers.findIndex((other) => compareHelpers(helper, other) < 0);
  if (at < 0) helpers.push(helper);
  else helpers.splice(at, 0, helper);
}

/** The router's complete desired helper set at its revision (level-triggered, never a delta). */
export function buildSnapshot(record: RouterRecord, correlationId: string, clock: Clock): RouterSyncMessage {
  return {
    v: 1,
    kind: "router-sync",
    router_id: record.routerId,
    revision: record.revision,
    helpers: sortHelpers(record.helpers).map(({ id, protocol, port, helper }) => ({
      id,
      protocol,
      port,
      helper,
    })),
    correlation_id: correlationId,
    issued_at: clock.now().toISOString(),
  };
}

/** Removes everything a node holds for the router (router deleted or moved away). */
export function buildEmptySnapshot(
  routerId: string,
  revision: number,
  correlationId: string,
  clock: Clock,
): RouterSyncMessage {
  return {
    v: 1,
    kind: "router-sync",
    router_id: routerId,
    revision,
    helpers: [],
    correlation_id: correlationId,
    issued_at: clock.now().toISOString(),
  };
}
