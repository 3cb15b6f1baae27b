/** Builders for domain values: tests state only what matters to them. */
import { randomUUID } from "node:crypto";
import type { Identity } from "../../lib/domain/identity.ts";
import type { Binding, Clock, ReplicaStatus, RouterRecord, StoredHelper } from "../../lib/ports.ts";
import type {
  HelperChange,
  HelperRule,
  NamespaceKind,
  Notification,
  NotificationEvent,
  RouterSyncMessage,
} from "../../lib/schemas/index.ts";

export const newId = (): string => randomUUID();

export const PROJECT_A = "0f2c4a6e8b1d3f5a7c9e0b2d4f6a8c1e";
export const PROJECT_B = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";

export function routerRecord(overrides: Partial<RouterRecord> = {}): RouterRecord {
  return {
    routerId: newId(),
    projectId: PROJECT_A,
    bindings: qrouters("node-a"),
    revision: 0,
    helpers: [],
    replicas: {},
    draining: {},
    updatedAt: "2026-01-01T00:00:00.000Z",
    ...overrides,
  };
}

/** One qrouter binding per host (a legacy router on one host, an L3 HA router on several). */
export const qrouters = (...hosts: string[]): Binding[] =>
  hosts.map((host) => ({ host, namespace: "qrouter" }));

/** One snat binding per host (a DVR router's SNAT node, or several for DVR + HA). */
export const snats = (...hosts: string[]): Binding[] => hosts.map((host) => ({ host, namespace: "snat" }));

/** A host's applied status, as the status path records it (in sync with revision `revision` by default). */
export function replica(revision: number, overrides: Partial<ReplicaStatus> = {}): ReplicaStatus {
  return { revision, at: "2026-01-01T00:00:00.000Z", errors: [], content: "match", ...overrides };
}

let nextPort = 2000;

export function storedHelper(overrides: Partial<StoredHelper> = {}): StoredHelper {
  return { id: newId(), protocol: "tcp", port: nextPort++, helper: "ftp", ...overrides };
}

export function helperChange(routerId: string, overrides: Partial<HelperChange> = {}): HelperChange {
  return { id: newId(), router_id: routerId, protocol: "tcp", port: nextPort++, helper: "ftp", ...overrides };
}

export function notification(event: NotificationEvent, helpers: HelperChange[]): Notification {
  return { event, conntrack_helpers: helpers };
}

/** The wire form of a helper change (what a client POSTs). */
export function wireHelper(
  routerId: string,
  overrides: Record<string, unknown> = {},
): Record<string, unknown> {
  return { id: newId(), router_id: routerId, protocol: "tcp", port: nextPort++, helper: "ftp", ...overrides };
}

export function member(projectId = PROJECT_A): Identity {
  return { projectId, roles: new Set() };
}

export function admin(projectId = "admin-project"): Identity {
  return { projectId, roles: new Set(["admin"]) };
}

export function service(projectId = PROJECT_A): Identity {
  return { projectId, roles: new Set(["service"]) };
}

export const fixedClock = (iso = "2026-11-24T06:00:00.000Z"): Clock => ({ now: () => new Date(iso) });

/** A helper as a snapshot carries it. */
export const helperRule = (
  name: string,
  protocol: "tcp" | "udp",
  port: number,
  id: string = newId(),
): HelperRule => ({ id, protocol, port, helper: name });

/** A router-sync message as the dispatcher queues it (unsigned: sign it where the test sends it). */
export const routerSync = (
  routerId: string,
  revision: number,
  helpers: readonly HelperRule[],
  namespace?: NamespaceKind,
): RouterSyncMessage => ({
  v: 1,
  kind: "router-sync",
  router_id: routerId,
  revision,
  ...(namespace ? { namespace } : {}),
  helpers: [...helpers],
  correlation_id: `c-${revision}`,
  issued_at: "2026-11-24T05:00:00.000Z",
});

/** Neutron's L3 agent's own chain in a router namespace's raw table: never ours to touch. */
export const NEUTRON_RAW =
  "*raw\n:neutron-l3-agent-PREROUTING - [0:0]\n-A PREROUTING -j neutron-l3-agent-PREROUTING\nCOMMIT\n";
