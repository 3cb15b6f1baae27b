/**
 * EventBridge (source `conntrack.helpers`): `Conntrack Helper Notification` (acts as a plain member of
 * detail.project_id: every router it names must be that project's), `Router Upserted`, `Router Deleted`
 * (admin powers). The envelope's `account` (set by EventBridge, not by the publisher) must be allowed for
 * the detail type, as the bus policy is (infra/publishers.cjs). An invalid or refused event is logged with
 * its id, counted and parked (the invocation succeeds, so EventBridge does not retry it forever) and changes
 * nothing; a valid event that fails for a transient reason throws, so EventBridge retries and then DLQs it.
 */

import { EventBridgeSchema } from "@aws-lambda-powertools/parser/schemas/eventbridge";
import middy, { type MiddlewareObj } from "@middy/core";
import type { Context } from "aws-lambda";
import * as z from "zod/mini";
import { type ParkSink, sqsParkSink } from "../lib/aws/park-sink.ts";
import { type AccountList, type Config, type EventAccounts, loadConfig } from "../lib/config.ts";
import type { Identity } from "../lib/domain/identity.ts";
import { type DomainDeps, deleteRouter, submitNotification, upsertRouter } from "../lib/domain/services.ts";
import { ForbiddenError, isAppError, NotFoundError, ValidationError } from "../lib/errors.ts";
import { correlationIdFrom } from "../lib/http/api-event.ts";
import type { AppLogger } from "../lib/http/middlewares.ts";
import { METRIC, type MetricCounter } from "../lib/metrics.ts";
import { correlate, domainWiring, lazyHandler, type Observability, observed } from "../lib/production.ts";
import { parseOrThrow, type Schemas, toFieldIssues } from "../lib/schemas/index.ts";

export const EVENT_SOURCE = "conntrack.helpers";
export const DETAIL_TYPES = ["Conntrack Helper Notification", "Router Upserted", "Router Deleted"] as const;

/** Counts parked events; in production the ParkedEvents metric (eventMetrics). */
export interface EventMetrics {
  parked(detailType: string, code: string): void;
}

export interface EventsDeps {
  readonly domain: DomainDeps;
  readonly schemas: Schemas;
  readonly logger: AppLogger;
  readonly metrics: EventMetrics;
  /** Optional durable parking (an SQS queue); the structured log line is the record otherwise. */
  readonly park?: ParkSink;
  /** Who may put each kind of event; absent: only the account the function runs in. */
  readonly accounts?: EventAccounts;
  /** Lambda context and correlation id in the logs, one metrics flush per event; absent in tests. */
  readonly observability?: Observability;
}

export type EventOutcome =
  | {
      readonly outcome: "applied";
      readonly id: string;
      readonly detail_type: string;
      readonly result?: unknown;
    }
  | { readonly outcome: "parked"; readonly id: string; readonly code: string };

/**
 * The envelope is AWS's, as Powertools' parser knows it (version, time, region, resources; not strict),
 * narrowed to what this function accepts; everything the dispatcher acts on is in `detail`, checked strictly.
 */
const envelope = EventBridgeSchema.extend({
  id: z.string().check(z.minLength(1), z.maxLength(128)),
  account: z.string().check(z.regex(/^\d{12}$/)),
  source: z.literal(EVENT_SOURCE),
  "detail-type": z.enum(DETAIL_TYPES),
});

/** Lifecycle events come only from lifecycle publishers (the bus policy and the account check below). */
const BUS_OPERATOR: Identity = { projectId: "eventbridge", roles: new Set(["admin"]) };

const OWN_ACCOUNTS: EventAccounts = { lifecycle: "own", notification: "own" };

/** The account in the function's own ARN (arn:aws:lambda:region:account:function:name). */
const ownAccountOf = (context: Context | undefined): string | undefined => {
  const account = context?.invokedFunctionArn?.split(":")[4];
  return account !== undefined && /^\d{12}$/.test(account) ? account : undefined;
};

function checkAccount(allowed: AccountList, account: string, detailType: string, context: Context): void {
  const ok = allowed === "own" ? account === ownAccountOf(context) : allowed.has(account);
  if (!ok) throw new ForbiddenError(`account ${account} may not put "${detailType}" events`);
}

type EventContext = Context & { cthEventId?: string };

const idOf = (event: unknown): string => {
  const id = typeof event === "object" && event !== null ? (event as { id?: unknown }).id : undefined;
  return typeof id === "string" ? id.slice(0, 128) : "unknown";
};
const detailTypeOf = (event: unknown): string => {
  const type =
    typeof event === "object" && event !== null
      ? (event as Record<string, unknown>)["detail-type"]
      : undefined;
  return typeof type === "string" && type.length > 0 ? type.slice(0, 64) : "unknown";
};

/** The one place that decides between parking (caller's fault) and retrying (ours). */
function parkRefused(deps: EventsDeps): MiddlewareObj<unknown, EventOutcome, Error, EventContext> {
  return {
    name: "parkRefused",
    onError: async (request) => {
      const error = request.error;
      const id = idOf(request.event);
      if (!isAppError(error) || error.status >= 500) {
        deps.logger.error("event failed; EventBridge will retry", {
          eventId: id,
          error: error instanceof Error ? { name: error.name, message: error.message } : String(error),
        });
        return; // rethrown by middy
      }
      const detailType = detailTypeOf(request.event);
      deps.logger.warn("event parked", {
        eventId: id,
        detailType,
        code: error.code,
        // Not `message`: Powertools reserves that key for the line's own text and drops the field.
        reason: error.message,
        details: error.details,
      });
      deps.metrics.parked(detailType, error.code);
      // If parking itself fails, the error propagates: EventBridge retries and the DLQ catches the rest.
      await deps.park?.(request.event, { code: error.code, message: error.message });
      request.response = { outcome: "parked", id, code: error.code };
    },
  };
}

export function makeHandler(deps: EventsDeps) {
  const { domain, schemas } = deps;
  const accounts = deps.accounts ?? OWN_ACCOUNTS;
  const route = async (event: unknown, context: Context): Promise<EventOutcome> => {
    // Before the envelope is checked: a parked event's log lines carry its (sanitized) id too.
    const correlationId = correlationIdFrom(idOf(event), () => "eventbridge");
    correlate(deps.observability, correlationId);
    const parsed = envelope.safeParse(event);
    if (!parsed.success) throw new ValidationError("invalid EventBridge event", toFieldIssues(parsed.error));
    const valid = parsed.data;
    const id = valid.id;
    const detailType = valid["detail-type"];
    const kind = detailType === "Conntrack Helper Notification" ? "notification" : "lifecycle";
    checkAccount(accounts[kind], valid.account, detailType, context);
    switch (detailType) {
      case "Conntrack Helper Notification": {
        const detail = parseOrThrow(schemas.eventDetails[detailType], valid.detail, "notification detail");
        // A plain member, not `service`: a publisher of project A's notifications cannot reach B's routers
        // (404 as over HTTP), nor attach a helper naming another project (403).
        const caller: Identity = { projectId: detail.project_id, roles: new Set() };
        const notification = { event: detail.event, conntrack_helpers: detail.conntrack_helpers };
        const result = await submitNotification(domain, caller, notification, correlationId);
        return { outcome: "applied", id, detail_type: detailType, result };
      }
      case "Router Upserted": {
        const detail = parseOrThrow(schemas.eventDetails[detailType], valid.detail, "router detail");
        const { router_id, ...body } = detail;
        const result = await upsertRouter(domain, BUS_OPERATOR, router_id, body, correlationId);
        return { outcome: "applied", id, detail_type: detailType, result };
      }
      case "Router Deleted": {
        const detail = parseOrThrow(schemas.eventDetails[detailType], valid.detail, "router detail");
        try {
          await deleteRouter(domain, BUS_OPERATOR, detail.router_id, correlationId);
        } catch (error) {
          // Deletes are idempotent: a redelivered or late delete of a gone router is done, not refused.
          if (!(error instanceof NotFoundError)) throw error;
        }
        return { outcome: "applied", id, detail_type: detailType };
      }
    }
  };
  return middy<unknown, EventOutcome, Error, EventContext>()
    .use(observed(deps.observability))
    .use(parkRefused(deps))
    .handler(route);
}

/** ParkedEvents by DetailType (what the alarms select on); the error code rides along as `Code`. */
export function eventMetrics(counter: MetricCounter): EventMetrics {
  return {
    parked: (detailType, code) =>
      counter.count(METRIC.parkedEvents, { DetailType: detailType }, { Code: code }),
  };
}

/** Production wiring from the environment (lib/config.ts); built on first invocation, never at import. */
export function defaultDeps(config: Config = loadConfig()): EventsDeps {
  const { clients, ...wiring } = domainWiring("cth-events", "events", config);
  return {
    ...wiring,
    metrics: eventMetrics(wiring.observability.metrics),
    accounts: config.eventAccounts,
    ...(config.eventsParkQueueUrl ? { park: sqsParkSink(clients.sqs, config.eventsParkQueueUrl) } : {}),
  };
}

export const handler = lazyHandler(() => makeHandler(defaultDeps()));
