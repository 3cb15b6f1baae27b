/**
 * Hostile EventBridge events against functions/events.ts makeHandler (real middy chain, in-memory stores),
 * built on the recorded EventBridge envelope. Properties: the handler never throws on hostile input (a throw
 * means EventBridge retries it, forever in effect); a parked event changes neither the table nor the queue
 * and is counted once; an applied event queues snapshots the agent's schema accepts, for the right owner only,
 * and came from an account allowed to put its detail type.
 */
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";
import { makeHandler } from "../../functions/events.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { loadLimits } from "../../lib/config.ts";
import { isTombstone, type RouterRecord, type Tombstone } from "../../lib/ports.ts";
import { FAMILIES, planFamily } from "../../lib/rules.ts";
import { buildSchemas, type RouterSyncMessage } from "../../lib/schemas/index.ts";
import { eventBridgeEvent, lambdaContext } from "../support/events.ts";
import { fixedClock, PROJECT_A, PROJECT_B, qrouters, routerRecord } from "../support/factories.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../support/memory.ts";
import {
  allStrings,
  fcParams,
  hostileValueArb,
  mutate,
  mutationArb,
  PROTO_KEYS,
  uuidArb,
  validHelperArb,
} from "./arbitraries.ts";
import { describeAcceptedInKernel } from "./kernel-check.ts";

const limits = loadLimits();
const catalog = new HelperCatalog();
const schemas = buildSchemas(limits, catalog);
const RUNS = Number(process.env.CTH_HOSTILE_EVENTS_RUNS ?? 10_000);

const R_A = "a1a1a1a1-0000-4000-8000-0000000000a1";
const R_A_FULL = "a2a2a2a2-0000-4000-8000-0000000000a2";
const R_B = "b0b0b0b0-0000-4000-8000-0000000000b1";
const R_UNKNOWN = "deadbeef-0000-4000-8000-0000000000ff";
const T0 = "2026-11-24T00:00:00.000Z";

// The recorded envelope's account may put both kinds; the others one kind or none.
const FIXTURE_ACCOUNT = "123456789012";
const NOTIFIER_ONLY = "111122223333";
const LIFECYCLE_ONLY = "444455556666";
const ACCOUNTS = {
  lifecycle: new Set([FIXTURE_ACCOUNT, LIFECYCLE_ONLY]),
  notification: new Set([FIXTURE_ACCOUNT, NOTIFIER_ONLY]),
};
const allowedFor = (detailType: unknown) =>
  detailType === "Conntrack Helper Notification" ? ACCOUNTS.notification : ACCOUNTS.lifecycle;

async function seedStore(): Promise<MemoryRoutersStore> {
  const store = new MemoryRoutersStore();
  // R_A_FULL sits one helper below the per-router cap, so creates of two or more must be refused whole.
  const full = Array.from({ length: limits.maxHelpersPerRouter - 1 }, (_, i) => ({
    id: `f0000000-0000-4000-8000-${i.toString(16).padStart(12, "0")}`,
    protocol: "udp" as const,
    port: 10_000 + i,
    helper: "tftp",
  }));
  const rows: RouterRecord[] = [
    routerRecord({
      routerId: R_A,
      projectId: PROJECT_A,
      bindings: qrouters("node-a"),
      revision: 2,
      helpers: [],
      updatedAt: T0,
    }),
    routerRecord({
      routerId: R_A_FULL,
      projectId: PROJECT_A,
      bindings: qrouters("node-b"),
      revision: 9,
      helpers: full,
      updatedAt: T0,
    }),
    routerRecord({
      routerId: R_B,
      projectId: PROJECT_B,
      bindings: qrouters("node-a"),
      revision: 1,
      helpers: [],
      updatedAt: T0,
    }),
  ];
  for (const row of rows) await store.put(row, undefined);
  return store;
}

async function dump(store: MemoryRoutersStore): Promise<(RouterRecord | Tombstone)[]> {
  const rows: (RouterRecord | Tombstone)[] = [];
  for await (const row of store.listAll()) rows.push(row);
  return rows.sort((a, b) => (a.routerId < b.routerId ? -1 : 1));
}

const routerArb = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(R_A, R_A, R_A, R_A_FULL, R_B, R_UNKNOWN) },
  { weight: 1, arbitrary: uuidArb },
);
const projectArb = fc.constantFrom(PROJECT_A, PROJECT_A, PROJECT_A, PROJECT_B, "p-other");

const notificationDetailArb = fc
  .record({
    event: fc.constantFrom("created", "created", "updated", "deleted"),
    project: projectArb,
    router: routerArb,
    // Now and then a helper names a project (its own, or another one: the cross-project attack).
    helperProject: fc.oneof(
      { weight: 4, arbitrary: fc.constant(undefined) },
      { weight: 1, arbitrary: projectArb },
    ),
    helpers: fc.oneof(
      { weight: 12, arbitrary: fc.array(validHelperArb(true), { minLength: 0, maxLength: 4 }) },
      {
        weight: 1,
        arbitrary: fc
          .constantFrom(limits.maxHelpersPerNotification, limits.maxHelpersPerNotification + 1)
          .chain((n) => fc.array(validHelperArb(false), { minLength: n, maxLength: n })),
      },
    ),
  })
  .map(({ event, project, router, helperProject, helpers }) => ({
    event,
    project_id: project,
    conntrack_helpers: helpers.map(({ id, pair, port }) => ({
      id,
      router_id: router,
      protocol: pair.protocol,
      port,
      helper: pair.helper,
      ...(helperProject === undefined ? {} : { project_id: helperProject }),
    })),
  }));

const upsertDetailArb = fc.record({
  router_id: routerArb,
  project_id: projectArb,
  host: fc.constantFrom("node-a", "node-b", "node-c"),
});
const deleteDetailArb = fc.record({ router_id: routerArb });

const DETAIL_TYPES = ["Conntrack Helper Notification", "Router Upserted", "Router Deleted"] as const;

const eventArb = fc
  .record({
    // Notifications twice as often as each lifecycle event: they carry the most input to get wrong.
    which: fc.constantFrom(0, 0, 0, 0, 1, 2),
    // A detail of another type now and then: the schema per detail-type must catch it.
    crossed: fc.oneof(
      { weight: 10, arbitrary: fc.constant(false) },
      { weight: 1, arbitrary: fc.constant(true) },
    ),
    notification: notificationDetailArb,
    upsert: upsertDetailArb,
    del: deleteDetailArb,
    account: fc.oneof(
      { weight: 6, arbitrary: fc.constant(FIXTURE_ACCOUNT) },
      { weight: 2, arbitrary: fc.constantFrom(NOTIFIER_ONLY, LIFECYCLE_ONLY, "999999999999") },
    ),
    detailMutations: fc.oneof(
      { weight: 3, arbitrary: fc.constant([]) },
      { weight: 2, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 3 }) },
    ),
    envelope: fc.oneof(
      { weight: 8, arbitrary: fc.constant(undefined) },
      {
        weight: 1,
        arbitrary: fc.record({
          field: fc.constantFrom(
            "id",
            "account",
            "source",
            "detail-type",
            "detail",
            "version",
            "time",
            "resources",
          ),
          value: fc.oneof(
            hostileValueArb,
            fc.constantFrom(undefined, "aws.ec2", "conntrack.helpers ", "Router upserted", "router deleted"),
          ),
        }),
      },
      {
        weight: 1,
        arbitrary: fc.record({
          field: fc.constantFrom(...PROTO_KEYS),
          value: fc.constantFrom({ source: "conntrack.helpers" }, null, "x"),
        }),
      },
    ),
  })
  .map(({ which, crossed, notification, upsert, del, account, detailMutations, envelope }) => {
    const detailType = DETAIL_TYPES[which]!;
    const details = [notification, upsert, del];
    const detail = mutate(details[crossed ? (which + 1) % 3 : which], detailMutations);
    const event = eventBridgeEvent(detailType, detail, { account }) as unknown as Record<string, unknown>;
    if (envelope) {
      if (envelope.value === undefined) delete event[envelope.field];
      else
        Object.defineProperty(event, envelope.field, {
          value: envelope.value,
          enumerable: true,
          writable: true,
          configurable: true,
        });
    }
    return event;
  });

const acceptedSnapshots: RouterSyncMessage[] = [];

describe("hostile EventBridge events (functions/events.ts, real middy chain, in-memory stores)", () => {
  it(`never throws, parked events change nothing, applied ones queue valid snapshots (${RUNS} events)`, async () => {
    const outcomes = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(eventArb, async (event) => {
        const store = await seedStore();
        const queue = new MemoryCommandQueue();
        const parked: string[] = [];
        const errors: string[] = [];
        const log = {
          info: () => undefined,
          warn: () => undefined,
          error: (message: string) => void errors.push(message),
        };
        const handler = makeHandler({
          domain: {
            store,
            queue,
            clock: fixedClock(),
            limits,
            log,
            retry: { maxAttempts: 3, baseDelayMs: 0, maxDelayMs: 0 },
          },
          schemas,
          logger: log,
          metrics: { parked: (detailType, code) => void parked.push(`${detailType}/${code}`) },
          accounts: ACCOUNTS,
        });
        const before = await dump(store);
        const writesBefore = store.writes;
        // A rejection here would be a retry storm on hostile input: the call itself must succeed.
        const result = await handler(event as never, lambdaContext());
        expect(errors).toEqual([]);
        const key =
          result.outcome === "parked"
            ? `parked:${result.code}`
            : `applied:${(event as { "detail-type"?: string })["detail-type"]}`;
        outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
        if (result.outcome === "parked") {
          expect(parked).toHaveLength(1);
          expect(store.writes).toBe(writesBefore);
          expect(await dump(store)).toEqual(before);
          expect(queue.all()).toEqual([]);
          return;
        }
        expect(parked).toEqual([]);
        // Only a publisher of this detail type gets anything applied, whatever the detail says.
        expect(allowedFor(event["detail-type"]).has(event.account as string)).toBe(true);
        const after = await dump(store);
        // One expect per run, not per string: thousands of expect() calls would dominate the run time.
        expect(
          after.flatMap((row) => allStrings(row)).filter((text) => !/^[A-Za-z0-9_.:-]*$/.test(text)),
        ).toEqual([]);
        for (const row of after)
          if (!isTombstone(row)) expect(row.helpers.length).toBeLessThanOrEqual(limits.maxHelpersPerRouter);
        for (const message of queue.all()) {
          const reparsed = schemas.routerSync.parse(JSON.parse(JSON.stringify(message)));
          for (const family of FAMILIES) planFamily(reparsed.helpers, family, catalog);
          if (reparsed.helpers.length > 0 && acceptedSnapshots.length < 3_000)
            acceptedSnapshots.push(reparsed);
        }
        if (event["detail-type"] === "Conntrack Helper Notification") {
          // A notification acts as a plain member of detail.project_id: only that project's routers change,
          // and no helper may claim another project.
          const detail = event.detail as { project_id: string; conntrack_helpers: { project_id?: string }[] };
          const project = detail.project_id;
          for (const helper of detail.conntrack_helpers) {
            expect(helper.project_id ?? project).toBe(project);
          }
          for (const message of queue.all()) {
            const owner = before.find((row) => row.routerId === message.router_id);
            expect(owner && !isTombstone(owner) ? owner.projectId : undefined).toBe(project);
          }
        }
      }),
      fcParams("eventbridge events", RUNS),
    );
    const summary = [...outcomes]
      .sort()
      .map(([k, v]) => `${k}=${v}`)
      .join(" ");
    console.log(`[hostile] eventbridge outcomes: ${summary}`);
    const applied = [...outcomes].filter(([k]) => k.startsWith("applied")).reduce((n, [, v]) => n + v, 0);
    expect(applied).toBeGreaterThan(RUNS / 20);
    expect(outcomes.get("applied:Conntrack Helper Notification") ?? 0).toBeGreaterThan(0);
    expect(outcomes.get("applied:Router Upserted") ?? 0).toBeGreaterThan(0);
    expect(outcomes.get("applied:Router Deleted") ?? 0).toBeGreaterThan(0);
    for (const code of ["parked:validation_failed", "parked:not_found", "parked:forbidden"])
      expect(outcomes.get(code) ?? 0, code).toBeGreaterThan(0);
  }, 180_000);
});

describeAcceptedInKernel("EventBridge events", acceptedSnapshots, catalog);
