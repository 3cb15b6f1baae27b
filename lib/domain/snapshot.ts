import type { Binding, Clock, RouterRecord, StoredHelper } from "../ports.ts";
// The renderer's order (protocol, port, id by code point, never locale-dependent): snapshots and rules agree.
import { compareRules } from "../rules.ts";
import type { RouterSyncMessage } from "../schemas/index.ts";

/**
 * A sorted copy, in the order agents render rules, so equal sets always render equal text. Stored sets are
 * kept in this order (see changes.ts), so this is usually one linear check.
 */
export function sortHelpers(helpers: readonly StoredHelper[]): StoredHelper[] {
  for (let i = 1; i < helpers.length; i++) {
    if (compareRules(helpers[i - 1]!, helpers[i]!) > 0) return [...helpers].sort(compareRules);
  }
  return [...helpers];
}

/** Inserts `helper` where the order puts it (in place). */
export function insertSorted(helpers: StoredHelper[], helper: StoredHelper): void {
  const at = helpers.findIndex((other) => compareRules(helper, other) < 0);
  if (at < 0) helpers.push(helper);
  else helpers.splice(at, 0, helper);
}

/**
 * The router's complete desired helper set at its revision (level-triggered, never a delta), for one of its
 * bindings: the namespace kind tells that host's agent where the rules go.
 */
export function buildSnapshot(
  record: RouterRecord,
  binding: Binding,
  correlationId: string,
  clock: Clock,
): RouterSyncMessage {
  return {
    v: 1,
    kind: "router-sync",
    router_id: record.routerId,
    revision: record.revision,
    namespace: binding.namespace,
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

/**
 * Removes everything a node holds for the router (router deleted, or the host unbound). It names no
 * namespace: the agent empties wherever it last applied the router, whatever kind that was.
 */
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
