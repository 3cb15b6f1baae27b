/**
 * The EventBridge function on dynalite and fauxqs: valid events change state and queue snapshots; invalid or
 * refused ones are logged with their id, counted and parked without changing anything; transient failures
 * throw so that EventBridge retries.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { type EventsDeps, eventMetrics, makeHandler } from "../../functions/events.ts";
import { type ParkSink, sqsParkSink } from "../../lib/aws/park-sink.ts";
import { type EventAccounts, loadConfig, loadEventAccounts } from "../../lib/config.ts";
import { ServiceUnavailableError } from "../../lib/errors.ts";
import { functionMetrics } from "../../lib/metrics.ts";
import { eventBridgeEvent, lambdaContext } from "../support/events.ts";
import { newId, PROJECT_A, PROJECT_B, qrouters, storedHelper, wireHelper } from "../support/factories.ts";
import { type Core, startCore } from "./core-harness.ts";

let core: Core;
beforeAll(async () => {
  core = await startCore();
});
afterAll(async () => {
  await core?.stop();
});
beforeEach(async () => {
  await core.queued("node-a");
  await core.queued("node-b");
});

/** The recorded envelope's account (test/fixtures/aws-events): allowed for both kinds unless a test says. */
const PUBLISHER = "123456789012";
const NOTIFIER_ONLY = "111122223333";
const LIFECYCLE_ONLY = "444455556666";
const BOTH: EventAccounts = {
  lifecycle: new Set([PUBLISHER, LIFECYCLE_ONLY]),
  notification: new Set([PUBLISHER, NOTIFIER_ONLY]),
};

function harness(
  overrides: Parameters<Core["deps"]>[0] = {},
  park?: ParkSink,
  /** null: the deps name no accounts (the function's own account then). */
  accounts: EventAccounts | null = BOTH,
) {
  const parked: { detailType: string; code: string }[] = [];
  const http = core.deps(overrides);
  const deps: EventsDeps = {
    domain: http.domain,
    schemas: http.schemas,
    logger: core.logger,
    metrics: { parked: (detailType, code) => parked.push({ detailType, code }) },
    ...(park ? { park } : {}),
    ...(accounts ? { accounts } : {}),
  };
  const handler = makeHandler(deps);
  return { parked, invoke: (event: unknown) => handler(event, lambdaContext()) };
}

const notification = (projectId: string, helpers: Record<string, unknown>[]) =>
  eventBridgeEvent("Conntrack Helper Notification", {
    event: "created",
    conntrack_helpers: helpers,
    project_id: projectId,
  });

describe("valid events", () => {
  it("applies a helper notification for the detail's project and queues the snapshot", async () => {
    const router = await core.seedRouter({ projectId: PROJECT_A });
    const helper = wireHelper(router.routerId);
    const { invoke, parked } = harness();
    const outcome = await invoke(notification(PROJECT_A, [helper]));
    expect(outcome).toMatchObject({ outcome: "applied", detail_type: "Conntrack Helper Notification" });
    expect((await core.store.get(router.routerId))?.helpers.map((h) => h.id)).toEqual([helper.id]);
    expect((await core.queued("node-a")).map((s) => s.revision)).toEqual([1]);
    expect(parked).toEqual([]);
  });

  it("creates a router from Router Upserted", async () => {
    const routerId = newId();
    const { invoke } = harness();
    await invoke(
      eventBridgeEvent("Router Upserted", { router_id: routerId, project_id: PROJECT_B, host: "node-b" }),
    );
    expect(await core.store.get(routerId)).toMatchObject({
      projectId: PROJECT_B,
      bindings: qrouters("node-b"),
      revision: 0,
    });
  });

  it("deletes a router from Router Deleted and empties its node", async () => {
    const router = await core.seedRouter({ revision: 2, helpers: [storedHelper()] });
    const { invoke } = harness();
    await invoke(eventBridgeEvent("Router Deleted", { router_id: router.routerId }));
    expect(await core.store.get(router.routerId)).toBeUndefined();
    expect((await core.queued("node-a")).map((s) => [s.revision, s.helpers.length])).toEqual([[3, 0]]);
  });

  it("treats a repeated Router Deleted of a gone router as done", async () => {
    const { invoke, parked } = harness();
    const outcome = await core.expectNothingWritten(() =>
      invoke(eventBridgeEvent("Router Deleted", { router_id: newId() })),
    );
    expect(outcome.outcome).toBe("applied");
    expect(parked).toEqual([]);
  });
});

describe("invalid events are parked, counted, logged with their id and change nothing", () => {
  const cases: [string, () => Promise<unknown>][] = [
    ["another source", async () => ({ ...notification(PROJECT_A, []), source: "aws.ec2" })],
    [
      "an unknown detail-type",
      async () => eventBridgeEvent("EC2 Instance State-change Notification", { "instance-id": "i-1" }),
    ],
    [
      "an unknown key in the detail",
      async () => {
        const router = await core.seedRouter();
        return notification(PROJECT_A, [wireHelper(router.routerId, { chain: "x" })]);
      },
    ],
    [
      "a port out of range",
      async () => {
        const router = await core.seedRouter();
        return notification(PROJECT_A, [wireHelper(router.routerId, { port: 65_536 })]);
      },
    ],
    [
      "a notification without project_id",
      async () =>
        eventBridgeEvent("Conntrack Helper Notification", { event: "created", conntrack_helpers: [] }),
    ],
    ["an unknown router", async () => notification(PROJECT_A, [wireHelper(newId())])],
    [
      "a router of another project",
      async () => {
        const router = await core.seedRouter({ projectId: PROJECT_B });
        return notification(PROJECT_A, [wireHelper(router.routerId)]);
      },
    ],
    [
      "a duplicate protocol and port",
      async () => {
        const router = await core.seedRouter({ revision: 1, helpers: [storedHelper({ port: 21 })] });
        return notification(PROJECT_A, [wireHelper(router.routerId, { port: 21 })]);
      },
    ],
    [
      "a host that is not a queue name",
      async () =>
        eventBridgeEvent("Router Upserted", { router_id: newId(), project_id: PROJECT_A, host: "a b" }),
    ],
  ];

  it.each(cases)("parks an event with %s", async (_what, build) => {
    const event = await build();
    const { invoke, parked } = harness();
    const outcome = await core.expectNothingWritten(() => invoke(event));
    const id = (event as { id: string }).id;
    expect(outcome).toMatchObject({ outcome: "parked", id });
    expect(parked).toHaveLength(1);
    expect(core.logger.entries.at(-1)).toMatchObject({
      level: "warn",
      message: "event parked",
      fields: { eventId: id },
    });
  });

  it("parks something that is not an event at all", async () => {
    const { invoke, parked } = harness();
    const outcome = await core.expectNothingWritten(() => invoke("not an event"));
    expect(outcome).toMatchObject({ outcome: "parked", id: "unknown", code: "validation_failed" });
    expect(parked).toEqual([{ detailType: "unknown", code: "validation_failed" }]);
  });
});

describe("publishers are scoped per detail type, notifications act as a member of detail.project_id", () => {
  const from = (account: string) => ({ account });

  it("refuses a notification for project A that names project B's router (the helper claiming B)", async () => {
    // Before: the bus acted as `service`, so a helper naming B's project reached B's router.
    const routerB = await core.seedRouter({ projectId: PROJECT_B, bindings: qrouters("node-b") });
    const { invoke, parked } = harness();
    const event = notification(PROJECT_A, [{ ...wireHelper(routerB.routerId), project_id: PROJECT_B }]);
    const outcome = await core.expectNothingWritten(() => invoke(event));
    // The same answer as for a router that does not exist: nobody learns that B's router is there.
    const unknown = await core.expectNothingWritten(() =>
      invoke(notification(PROJECT_A, [{ ...wireHelper(newId()), project_id: PROJECT_B }])),
    );
    expect(outcome).toMatchObject({ outcome: "parked", code: "not_found" });
    expect(unknown).toMatchObject({ outcome: "parked", code: "not_found" });
    expect(parked).toEqual([
      { detailType: "Conntrack Helper Notification", code: "not_found" },
      { detailType: "Conntrack Helper Notification", code: "not_found" },
    ]);
    expect((await core.store.get(routerB.routerId))?.helpers).toEqual([]);
  });

  it("refuses the whole notification when one of its routers belongs to another project", async () => {
    const own = await core.seedRouter({ projectId: PROJECT_A });
    const foreign = await core.seedRouter({ projectId: PROJECT_B });
    const { invoke } = harness();
    const outcome = await core.expectNothingWritten(() =>
      invoke(
        notification(PROJECT_A, [
          wireHelper(own.routerId),
          { ...wireHelper(foreign.routerId), project_id: PROJECT_B },
        ]),
      ),
    );
    expect(outcome).toMatchObject({ outcome: "parked", code: "not_found" });
  });

  it("refuses a helper on the project's own router that names another project", async () => {
    const own = await core.seedRouter({ projectId: PROJECT_A });
    const { invoke } = harness();
    const outcome = await core.expectNothingWritten(() =>
      invoke(notification(PROJECT_A, [{ ...wireHelper(own.routerId), project_id: PROJECT_B }])),
    );
    expect(outcome).toMatchObject({ outcome: "parked", code: "forbidden" });
  });

  it("parks lifecycle events from a notification publisher's account: no router created, moved or deleted", async () => {
    const router = await core.seedRouter({ revision: 2, helpers: [storedHelper()] });
    const { invoke, parked } = harness();
    const events = [
      eventBridgeEvent(
        "Router Upserted",
        { router_id: newId(), project_id: PROJECT_B, host: "node-b" },
        from(NOTIFIER_ONLY),
      ),
      eventBridgeEvent(
        "Router Upserted",
        { router_id: router.routerId, project_id: PROJECT_B, host: "node-b" },
        from(NOTIFIER_ONLY),
      ),
      eventBridgeEvent("Router Deleted", { router_id: router.routerId }, from(NOTIFIER_ONLY)),
    ];
    for (const event of events) {
      const outcome = await core.expectNothingWritten(() => invoke(event));
      expect(outcome).toMatchObject({ outcome: "parked", id: event.id, code: "forbidden" });
      expect(core.logger.entries.at(-1)).toMatchObject({
        level: "warn",
        message: "event parked",
        fields: { eventId: event.id, code: "forbidden", reason: expect.stringContaining(NOTIFIER_ONLY) },
      });
    }
    expect(parked.map((p) => p.code)).toEqual(["forbidden", "forbidden", "forbidden"]);
    expect(await core.store.get(router.routerId)).toMatchObject({
      projectId: PROJECT_A,
      bindings: qrouters("node-a"),
      revision: 2,
    });
  });

  it("parks notifications from a lifecycle publisher's account and from unknown accounts", async () => {
    const router = await core.seedRouter({ projectId: PROJECT_A });
    const { invoke, parked } = harness();
    for (const account of [LIFECYCLE_ONLY, "999999999999"]) {
      const event = eventBridgeEvent(
        "Conntrack Helper Notification",
        { event: "created", conntrack_helpers: [wireHelper(router.routerId)], project_id: PROJECT_A },
        from(account),
      );
      const outcome = await core.expectNothingWritten(() => invoke(event));
      expect(outcome).toMatchObject({ outcome: "parked", code: "forbidden" });
    }
    const lifecycle = eventBridgeEvent(
      "Router Deleted",
      { router_id: router.routerId },
      from("999999999999"),
    );
    expect(await core.expectNothingWritten(() => invoke(lifecycle))).toMatchObject({ code: "forbidden" });
    expect(parked).toHaveLength(3);
  });

  it("applies each kind from its own publishers", async () => {
    const router = await core.seedRouter({ projectId: PROJECT_A });
    const { invoke, parked } = harness();
    const created = await invoke(
      eventBridgeEvent(
        "Conntrack Helper Notification",
        { event: "created", conntrack_helpers: [wireHelper(router.routerId)], project_id: PROJECT_A },
        from(NOTIFIER_ONLY),
      ),
    );
    expect(created).toMatchObject({ outcome: "applied" });
    const routerId = newId();
    await invoke(
      eventBridgeEvent(
        "Router Upserted",
        { router_id: routerId, project_id: PROJECT_B, host: "node-b" },
        from(LIFECYCLE_ONLY),
      ),
    );
    expect(await core.store.get(routerId)).toMatchObject({
      projectId: PROJECT_B,
      bindings: qrouters("node-b"),
    });
    expect(parked).toEqual([]);
    expect((await core.queued("node-a")).map((s) => s.router_id)).toEqual([router.routerId]);
  });

  it("without configured accounts accepts only the account the function runs in", async () => {
    // lambdaContext() runs in 000000000000 (as the local stack's functions and `npm run emit` do).
    const { invoke } = harness({}, undefined, null);
    const routerId = newId();
    const mine = eventBridgeEvent(
      "Router Upserted",
      { router_id: routerId, project_id: PROJECT_A, host: "node-a" },
      from("000000000000"),
    );
    expect(await invoke(mine)).toMatchObject({ outcome: "applied" });
    const theirs = eventBridgeEvent("Router Deleted", { router_id: routerId }, from(PUBLISHER));
    expect(await core.expectNothingWritten(() => invoke(theirs))).toMatchObject({ code: "forbidden" });
    expect(await core.store.get(routerId)).toBeDefined();
  });

  it("parks an envelope without a 12-digit account", async () => {
    const { invoke } = harness();
    for (const account of [undefined, "", "12345678901", "123456789012 ", "*"]) {
      const event: Record<string, unknown> = {
        ...eventBridgeEvent("Router Deleted", { router_id: newId() }),
      };
      if (account === undefined) delete event.account;
      else event.account = account;
      expect(await core.expectNothingWritten(() => invoke(event)), String(account)).toMatchObject({
        outcome: "parked",
        code: "validation_failed",
      });
    }
  });

  it("reads the allowed accounts from CTH_EVENTS_LIFECYCLE_ACCOUNTS and CTH_EVENTS_NOTIFICATION_ACCOUNTS", () => {
    expect(loadConfig({}).eventAccounts).toEqual({ lifecycle: "own", notification: "own" });
    expect(
      loadEventAccounts({
        CTH_EVENTS_LIFECYCLE_ACCOUNTS: "none",
        CTH_EVENTS_NOTIFICATION_ACCOUNTS: " 111122223333,444455556666 ",
      }),
    ).toEqual({ lifecycle: new Set(), notification: new Set(["111122223333", "444455556666"]) });
    for (const bad of ["*", "1111", "111122223333,", "arn:aws:iam::111122223333:root", "self"]) {
      expect(() => loadEventAccounts({ CTH_EVENTS_LIFECYCLE_ACCOUNTS: bad }), bad).toThrow(
        /CTH_EVENTS_LIFECYCLE_ACCOUNTS must be comma-separated 12-digit accounts/,
      );
    }
  });
});

describe("park queue", () => {
  it("puts a refused event and its reason on the park queue", async () => {
    const parkQueue = await core.emu.createStatusQueue(`cth-park-${newId().slice(0, 8)}`);
    const sink = sqsParkSink(core.emu.clients(core.config).sqs, parkQueue.url);
    const event = notification(PROJECT_A, [wireHelper(newId(), { port: 0 })]);
    const { invoke } = harness({}, sink);
    await invoke(event);
    const [message, ...rest] = await core.emu.drain(parkQueue.url);
    expect(rest).toEqual([]);
    const parkedBody = JSON.parse(message?.Body ?? "null");
    expect(parkedBody).toMatchObject({ kind: "parked-event", reason: { code: "validation_failed" }, event });
  });

  it("throws when the event cannot be parked, so EventBridge retries it", async () => {
    const { invoke } = harness({}, () => Promise.reject(new Error("park queue unreachable")));
    await expect(invoke(eventBridgeEvent("Router Deleted", { router_id: "nope" }))).rejects.toThrow(
      "park queue unreachable",
    );
  });
});

describe("transient failures", () => {
  it("throws so EventBridge retries when the queue is down", async () => {
    const router = await core.seedRouter();
    const { invoke, parked } = harness({ queue: { send: () => Promise.reject(new Error("down")) } });
    await expect(invoke(notification(PROJECT_A, [wireHelper(router.routerId)]))).rejects.toBeInstanceOf(
      ServiceUnavailableError,
    );
    expect(parked).toEqual([]);
  });
});

describe("metrics", () => {
  it("writes one CloudWatch embedded-metric line per parked event (Powertools Metrics on stdout)", () => {
    const lines: string[] = [];
    const write = vi.spyOn(process.stdout, "write").mockImplementation((chunk) => {
      lines.push(String(chunk));
      return true;
    });
    try {
      eventMetrics(functionMetrics("events")).parked("Router Upserted", "validation_failed");
    } finally {
      write.mockRestore();
    }
    expect(lines).toHaveLength(1);
    const entry = JSON.parse(lines[0]!);
    expect(entry._aws.CloudWatchMetrics[0].Namespace).toBe("ConntrackHelpers");
    expect(entry).toMatchObject({ ParkedEvents: 1, DetailType: "Router Upserted", Function: "events" });
    expect(entry._aws.CloudWatchMetrics[0].Metrics).toEqual([{ Name: "ParkedEvents", Unit: "Count" }]);
    expect(entry._aws.CloudWatchMetrics[0].Dimensions).toEqual([["Function", "DetailType"]]);
    expect(entry.Code).toBe("validation_failed");
  });
});
