import type { Clock, RouterRecord, StoredHelper } from "../ports.ts";
import type { RouterSyncMessage } from "../schemas/index.ts";

/** Stable order: agents render rules in this order, so equal sets always render equal text. */
export function sortHelpers(helpers: readonly StoredHelper[]): StoredHelper[] {
  return [...helpers].sort(
    (a, b) =>
      a.protocol.localeCompare(b.protocol) || a.port - b.port || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
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
