/**
 * The promise behind `in_sync`, as a property: concurrent DELETE, POST and PUT (moves, re-creates) on one
 * router, with the routers table and the node queues failing at random (before a write, after a write whose
 * answer is lost, on a send), real agent cores on two hosts (in-memory iptables model) receiving what was
 * queued, and their reports going through the status path bound to the reporting host. Asserted throughout:
 * - no revision of the router is ever sent to one host with two different helper sets, and no revision ever
 *   carries two different non-empty sets (a move sends the full set to the new host and the empty set to the
 *   old one under one revision, nothing else);
 * - whenever GET says `in_sync: true`, the current host's kernel holds exactly the desired set;
 * and, once the faults stop and the reconciler has run, every host the router left holds nothing of it and
 * a live router is in sync.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { pino } from "pino";
import { afterAll, describe, expect, it } from "vitest";
import { AgentCore } from "../../agent/core.ts";
import { MemoryIptables } from "../../agent/iptables/memory.ts";
import { expectedOwnedLines, ownedLines } from "../../agent/iptables/render.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { StateStore } from "../../agent/state.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { reconcile, recordAppliedReport } from "../../lib/domain/reports.ts";
import {
  type DomainDeps,
  deleteRouter,
  readRouterState,
  submitNotification,
  upsertRouter,
} from "../../lib/domain/services.ts";
import { ServiceUnavailableError } from "../../lib/errors.ts";
import type { Binding, CommandQueue, RoutersStore, SendOptions } from "../../lib/ports.ts";
import { FAMILIES, planFamily } from "../../lib/rules.ts";
import type { HelperRule, NamespaceKind, RouterSyncMessage } from "../../lib/schemas/index.ts";
import { iptablesBackend } from "../support/backends.ts";
import { admin, fixedClock, PROJECT_A, qrouters } from "../support/factories.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../support/memory.ts";

const ROUTER = "7a0c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3";
const HOSTS = ["node-a", "node-b", "node-c"] as const;
const KINDS = ["qrouter", "snat"] as const;
type Host = (typeof HOSTS)[number];
const catalog = new HelperCatalog();
const clock = fixedClock("2026-12-02T09:00:00.000Z");
const RUNS = Number(process.env.CTH_PROPERTY_RUNS ?? 300);

/** Helper ids and ports from small pools, so creates, deletes and port clashes meet often. */
const HELPER_IDS = [
  "11111111-1111-4111-8111-111111111111",
  "22222222-2222-4222-8222-222222222222",
  "33333333-3333-4333-8333-333333333333",
];

type Fault = "none" | "before" | "lost-ack";
type Op =
  | { kind: "post"; event: "created" | "deleted"; id: number; port: number; helper: "ftp" | "irc" }
  | { kind: "put"; bindings: Binding[] }
  | { kind: "delete" };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant("post" as const),
      event: fc.constantFrom("created" as const, "deleted" as const),
      id: fc.nat(HELPER_IDS.length - 1),
      port: fc.constantFrom(21, 2121, 6667),
      helper: fc.constantFrom("ftp" as const, "irc" as const),
    }),
  },
  {
    weight: 2,
    // A new set of replicas: hosts added, removed, moved, or switched between qrouter and snat (migrations).
    arbitrary: fc.record({
      kind: fc.constant("put" as const),
      bindings: fc
        .subarray([...HOSTS], { minLength: 1 })
        .chain((hosts) =>
          fc.tuple(
            ...hosts.map((host) =>
              fc.record({ host: fc.constant(host), namespace: fc.constantFrom(...KINDS) }),
            ),
          ),
        ),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("delete" as const) }) },
);

const stepArb = fc.record({
  /** Run together: they race for the same router. */
  ops: fc.array(opArb, { minLength: 1, maxLength: 3 }),
  storeFaults: fc.array(fc.constantFrom<Fault>("none", "none", "none", "before", "lost-ack"), {
    maxLength: 4,
  }),
  queueFaults: fc.array(fc.boolean(), { maxLength: 4 }),
  /** Messages each host's agent takes off its queue after this step (SQS FIFO: in order). */
  deliver: fc.record({ "node-a": fc.nat(3), "node-b": fc.nat(3), "node-c": fc.nat(3) }),
  /** Whether an agent's report reaches the status path (a lost report is healed by a re-send). */
  reportsArrive: fc.boolean(),
});

/** The routers table, failing on cue: before a write (nothing written) or after it (written, answer lost). */
function faultyStore(inner: MemoryRoutersStore, faults: Fault[]): RoutersStore {
  const writeWith = async (write: () => Promise<void>) => {
    const fault = faults.shift() ?? "none";
    if (fault === "before") throw new ServiceUnavailableError("the routers table is busy; retry later");
    await write();
    if (fault === "lost-ack") throw new ServiceUnavailableError("the routers table is busy; retry later");
  };
  return {
    get: (id) => inner.get(id),
    getMany: (ids) => inner.getMany(ids),
    tombstone: (id) => inner.tombstone(id),
    put: (next, expected, draining) => writeWith(() => inner.put(next, expected, draining)),
    ...(inner.putAll ? { putAll: (writes) => writeWith(() => inner.putAll!(writes)) } : {}),
    delete: (id, rev, at, draining) => writeWith(() => inner.delete(id, rev, at, draining)),
    recordReplica: (report) => inner.recordReplica(report),
    confirmDrained: (id, host, rev, basis) => inner.confirmDrained(id, host, rev, basis),
    listByHost: (host) => inner.listByHost(host),
    listAll: () => inner.listAll(),
    listPage: (query) => inner.listPage(query),
    listOutOfSync: () => inner.listOutOfSync(),
    clearOutOfSync: (entry) => inner.clearOutOfSync(entry),
  };
}

interface Sent {
  readonly host: string;
  readonly revision: number;
  readonly digest: string;
}

/** Node queues that fail on cue and remember every snapshot that left. */
class RecordingQueue implements CommandQueue {
  readonly inner = new MemoryCommandQueue();
  readonly sent: Sent[] = [];
  faults: boolean[] = [];
  async send(host: string, commands: readonly RouterSyncMessage[], options?: SendOptions): Promise<void> {
    if (this.faults.shift()) throw new ServiceUnavailableError(`could not queue snapshots for node ${host}`);
    for (const command of commands) {
      this.sent.push({ host, revision: command.revision, digest: helperSetDigest(command.helpers) });
    }
    await this.inner.send(host, commands, options);
  }
}

interface Node {
  readonly host: Host;
  readonly iptables: MemoryIptables;
  readonly core: AgentCore;
  delivered: number;
}

const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function startNode(
  host: Host,
  onReport: (host: Host, message: unknown) => Promise<void>,
): Promise<Node> {
  const dir = await mkdtemp(join(tmpdir(), "cth-revisions-"));
  dirs.push(dir);
  const iptables = new MemoryIptables();
  const core = new AgentCore({
    node: host,
    backend: iptablesBackend(iptables, { catalog }),
    state: await StateStore.load(dir, host),
    status: { send: (message) => onReport(host, message) },
    metrics: new AgentMetrics(),
    logger: pino({ level: "silent" }),
    namespacePattern: "{namespace}-{router_id}",
    createNamespaces: true,
  });
  return { host, iptables, core, delivered: 0 };
}

/**
 * True when `host`'s kernel holds exactly `helpers` for the router in the namespace of `kind` (nothing, for
 * an empty set) and nothing in the other kind's.
 */
async function kernelHolds(
  node: Node,
  helpers: readonly HelperRule[],
  kind: NamespaceKind,
): Promise<boolean> {
  for (const other of KINDS) {
    if (other !== kind && !(await namespaceHolds(node, [], other))) return false;
  }
  return namespaceHolds(node, helpers, kind);
}

async function namespaceHolds(
  node: Node,
  helpers: readonly HelperRule[],
  kind: NamespaceKind,
): Promise<boolean> {
  const ns = node.core.namespaceFor(ROUTER, kind);
  if (!(await node.iptables.namespaceExists(ns))) return helpers.length === 0;
  for (const family of FAMILIES) {
    const wanted = expectedOwnedLines(planFamily(helpers, family, catalog).rules);
    const held = ownedLines(await node.iptables.save(ns, family));
    if (wanted.join("\n") !== held.join("\n")) return false;
  }
  return true;
}

describe("revisions and in_sync under concurrent changes and faults", () => {
  it("never sends two helper sets under one revision, and in_sync always tells the truth", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(stepArb, { minLength: 1, maxLength: 12 }),
        fc.boolean(),
        async (steps, transactions) => {
          const memory = new MemoryRoutersStore({ transactions });
          const faults: Fault[] = [];
          const queue = new RecordingQueue();
          const deps: DomainDeps = {
            store: faultyStore(memory, faults),
            queue,
            clock,
            limits: DEFAULT_LIMITS,
            retry: { maxAttempts: 4, baseDelayMs: 0, maxDelayMs: 1 },
          };
          const healthy = { store: memory, queue, clock };
          let reportsArrive = true;
          const nodes = new Map<Host, Node>();
          for (const host of HOSTS) {
            nodes.set(
              host,
              await startNode(host, async (from, message) => {
                if (!reportsArrive) return;
                const parsed = message as Parameters<typeof recordAppliedReport>[2];
                if (parsed.kind === "applied") await recordAppliedReport(healthy, from, parsed);
              }),
            );
          }
          await upsertRouter(
            deps,
            admin(),
            ROUTER,
            { project_id: PROJECT_A, bindings: qrouters("node-a") },
            "seed",
          );

          const deliver = async (node: Node, count: number) => {
            const pending = queue.inner.messages(node.host).slice(node.delivered, node.delivered + count);
            for (const message of pending) {
              node.delivered++;
              if (message.router_id === ROUTER) await node.core.apply(message);
            }
          };

          /** The claim under test: in_sync true means the kernel holds the desired set. */
          const checkTruth = async () => {
            const record = await memory.get(ROUTER);
            if (!record) return;
            const state = await readRouterState({ store: memory }, admin(), ROUTER);
            if (state.in_sync) {
              for (const binding of record.bindings) {
                const node = nodes.get(binding.host as Host)!;
                expect(await kernelHolds(node, record.helpers, binding.namespace)).toBe(true);
              }
            }
          };

          for (const [index, step] of steps.entries()) {
            faults.push(...step.storeFaults);
            queue.faults.push(...step.queueFaults);
            reportsArrive = step.reportsArrive;
            await Promise.allSettled(
              step.ops.map((op, position) => {
                const cid = `s${index}-${position}`;
                switch (op.kind) {
                  case "post":
                    return submitNotification(
                      deps,
                      admin(),
                      {
                        event: op.event,
                        conntrack_helpers: [
                          {
                            id: HELPER_IDS[op.id]!,
                            router_id: ROUTER,
                            protocol: "tcp",
                            port: op.port,
                            helper: op.helper,
                          },
                        ],
                      },
                      cid,
                    );
                  case "put":
                    return upsertRouter(
                      deps,
                      admin(),
                      ROUTER,
                      { project_id: PROJECT_A, bindings: op.bindings },
                      cid,
                    );
                  default:
                    return deleteRouter(deps, admin(), ROUTER, cid);
                }
              }),
            );
            for (const host of HOSTS) await deliver(nodes.get(host)!, step.deliver[host]);
            await checkTruth();
          }

          // Faults stop; the reconciler and the agents heal whatever was lost.
          faults.length = 0;
          queue.faults = [];
          reportsArrive = true;
          for (let round = 0; round < 4; round++) {
            for (const host of HOSTS) await deliver(nodes.get(host)!, Number.POSITIVE_INFINITY);
            await checkTruth();
            await reconcile(healthy, { correlationId: `heal-${round}` });
          }
          for (const host of HOSTS) await deliver(nodes.get(host)!, Number.POSITIVE_INFINITY);

          // One helper set per (host, revision); at most one non-empty set per revision.
          const byHost = new Map<string, string>();
          const nonEmpty = new Map<number, string>();
          const empty = helperSetDigest([]);
          for (const { host, revision, digest } of queue.sent) {
            const key = `${host}@${revision}`;
            expect(byHost.get(key) ?? digest, `two helper sets sent to ${key}`).toBe(digest);
            byHost.set(key, digest);
            if (digest === empty) continue;
            expect(nonEmpty.get(revision) ?? digest, `two helper sets under revision ${revision}`).toBe(
              digest,
            );
            nonEmpty.set(revision, digest);
          }

          // Converged: every bound host holds the desired set in its binding's namespace kind and nothing in
          // the other; every other host holds nothing; the router says in sync.
          const record = await memory.get(ROUTER);
          for (const host of HOSTS) {
            const binding = record?.bindings.find((candidate) => candidate.host === host);
            const holds = await kernelHolds(
              nodes.get(host)!,
              binding ? record!.helpers : [],
              binding?.namespace ?? "qrouter",
            );
            expect(holds, `${host} holds what it should`).toBe(true);
          }
          if (record) {
            expect(record.draining).toEqual({});
            if (record.revision > 0) {
              expect((await readRouterState({ store: memory }, admin(), ROUTER)).in_sync).toBe(true);
            }
          } else {
            expect((await memory.tombstone(ROUTER))?.draining ?? {}).toEqual({});
          }
        },
      ),
      { numRuns: RUNS, seed: Number(process.env.CTH_PROPERTY_SEED ?? Date.now() % 2 ** 31) },
    );
  }, 120_000);
});
