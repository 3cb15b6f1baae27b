/**
 * All wire schemas, built once per (limits, catalog) pair. Every object is strict: unknown keys are errors.
 * The functions and the agent share these; nothing else may define a second copy.
 */
import * as z from "zod/mini";
import type { HelperCatalog } from "../catalog.ts";
import type { Limits } from "../config.ts";
import { type FieldIssue, ValidationError } from "../errors.ts";
import {
  correlationId,
  helperName,
  host,
  list,
  notificationEvent,
  port,
  projectId,
  protocol,
  revision,
  text,
  uuid,
} from "./primitives.ts";

export * as primitives from "./primitives.ts";

export type NotificationEvent = z.infer<typeof notificationEvent>;

/** The kind of namespace a router lives in on a host: Neutron's `qrouter-` or a DVR router's `snat-`. */
export const namespaceKind = z.enum(["qrouter", "snat"]);
export type NamespaceKind = z.infer<typeof namespaceKind>;

/** Messages, reports and agent state written before bindings name no kind: they all speak of qrouter. */
export const kindOrDefault = (kind: NamespaceKind | undefined): NamespaceKind => kind ?? "qrouter";

/** At most this many hosts per router (Neutron's max_l3_agents_per_router is commonly 2 or 3). */
export const MAX_BINDINGS = 8;

/** One host a router lives on and the kind of namespace it has there. */
export const binding = z.strictObject({ host, namespace: namespaceKind });

/**
 * A list check: `field` holds a different value in every item; a repeat is reported at its own path
 * (`<index>.<field>`), so the caller can see which one.
 */
function uniqueBy<K extends string>(field: K, repeated: (value: string) => string) {
  return (ctx: z.core.ParsePayload<readonly Record<K, string>[]>) => {
    const seen = new Set<string>();
    for (const [index, item] of ctx.value.entries()) {
      const value = item[field];
      if (seen.has(value)) {
        ctx.issues.push({ code: "custom", input: value, path: [index, field], message: repeated(value) });
      }
      seen.add(value);
    }
  };
}

/** 1..MAX_BINDINGS bindings with unique hosts; a repeated host is named by its path (`bindings.1.host`). */
export const bindings = list(binding, 1, MAX_BINDINGS).check(
  uniqueBy("host", (host) => `host "${host}" is bound more than once`),
);

type Ctx = z.core.ParsePayload;
type Binding = z.infer<typeof binding>;

/** The two ways to say where a router lives, before toBindings normalises them. */
const placementFields = { host: z.optional(host), bindings: z.optional(bindings) };

/**
 * Where a router lives: `bindings`, or the single-host form `host` (one qrouter binding). Normalised to
 * `bindings`; both or neither is an error on `bindings`.
 */
function toBindings<T extends { host?: string | undefined; bindings?: Binding[] | undefined }>(
  value: T,
  ctx: Ctx,
): Omit<T, "host" | "bindings"> & { bindings: Binding[] } {
  const { host: single, bindings: many, ...rest } = value;
  if ((single === undefined) === (many === undefined)) {
    ctx.issues.push({
      code: "custom",
      input: value,
      path: ["bindings"],
      message:
        single === undefined
          ? "required: the hosts the router lives on (or `host` for a single qrouter binding)"
          : "give either `bindings` or `host`, not both",
    });
    return z.NEVER;
  }
  return { ...rest, bindings: many ?? [{ host: single!, namespace: "qrouter" }] };
}

/** A helper as the dispatcher stores and ships it: canonical kernel helper name. */
export interface HelperRule {
  readonly id: string;
  readonly protocol: "tcp" | "udp";
  readonly port: number;
  readonly helper: string;
}

export interface HelperChange extends HelperRule {
  readonly router_id: string;
  readonly project_id?: string | undefined;
}

export interface Notification {
  readonly event: NotificationEvent;
  readonly conntrack_helpers: readonly HelperChange[];
}

export function buildSchemas(limits: Limits, catalog: HelperCatalog) {
  /** Resolves aliases (h323) and rejects helpers the catalog lacks or that do not speak the protocol. */
  const withCatalog = <T extends { protocol: "tcp" | "udp"; helper: string }>(value: T, ctx: Ctx) => {
    const canonical = catalog.resolve(value.helper, value.protocol);
    if (canonical === undefined) {
      ctx.issues.push({
        code: "custom",
        input: value.helper,
        path: ["helper"],
        message: `helper "${value.helper}" is not available for ${value.protocol} (allowed: ${catalog.names().join(", ")})`,
      });
      return z.NEVER;
    }
    return { ...value, helper: canonical };
  };

  /** The fields of a helper change, natively and inside Neutron's `versioned_object.data`. */
  const helperChangeFields = z.strictObject({
    id: uuid,
    router_id: uuid,
    protocol,
    port,
    helper: helperName,
    project_id: z.optional(projectId),
  });

  const helperChange = z.pipe(helperChangeFields, z.transform(withCatalog));

  const helperList = list(helperChange, 1, limits.maxHelpersPerNotification);

  const notification = z.strictObject({
    event: notificationEvent,
    conntrack_helpers: helperList,
  });

  /** Neutron's push payload: `ConntrackHelper.obj_to_primitive()` items under `resource_list`. */
  const neutronObject = z.strictObject({
    "versioned_object.name": z.literal("ConntrackHelper"),
    "versioned_object.namespace": z.literal("versionedobjects"),
    "versioned_object.version": z.string().check(z.maxLength(16), z.regex(/^\d+\.\d+$/)),
    "versioned_object.data": helperChangeFields,
    "versioned_object.changes": z.optional(list(text(0, 32), 0, 16)),
  });

  const neutronPush = z.pipe(
    z.strictObject({
      event_type: notificationEvent,
      resource_list: list(neutronObject, 1, limits.maxHelpersPerNotification),
    }),
    z.transform((push, ctx) => {
      const helpers: HelperChange[] = [];
      for (const [index, item] of push.resource_list.entries()) {
        const data = item["versioned_object.data"];
        const canonical = catalog.resolve(data.helper, data.protocol);
        if (canonical === undefined) {
          ctx.issues.push({
            code: "custom",
            input: data.helper,
            path: ["resource_list", index, "versioned_object.data", "helper"],
            message: `helper "${data.helper}" is not available for ${data.protocol}`,
          });
          continue;
        }
        helpers.push({ ...data, helper: canonical });
      }
      return { event: push.event_type, conntrack_helpers: helpers } satisfies Notification;
    }),
  );

  const routerUpsert = z.pipe(
    z.strictObject({ project_id: projectId, ...placementFields }),
    z.transform(toBindings),
  );

  const eventDetails = {
    "Conntrack Helper Notification": z.strictObject({
      event: notificationEvent,
      conntrack_helpers: helperList,
      project_id: projectId,
    }),
    "Router Upserted": z.pipe(
      z.strictObject({ router_id: uuid, project_id: projectId, ...placementFields }),
      z.transform(toBindings),
    ),
    "Router Deleted": z.strictObject({ router_id: uuid }),
  } as const;

  const queuedHelper = z.pipe(
    z.strictObject({ id: uuid, protocol, port, helper: helperName }),
    z.transform((value, ctx) => {
      // The queue is a trust boundary: only names the catalog already holds in canonical form pass.
      if (catalog.resolve(value.helper, value.protocol) !== value.helper) {
        ctx.issues.push({
          code: "custom",
          input: value.helper,
          path: ["helper"],
          message: `helper "${value.helper}" is not allowed`,
        });
        return z.NEVER;
      }
      return value;
    }),
  );

  const routerSync = z.strictObject({
    v: z.literal(1),
    kind: z.literal("router-sync"),
    router_id: uuid,
    revision,
    /** Where the router lives on the receiving host; absent (messages queued before bindings) means qrouter. */
    namespace: z.optional(namespaceKind),
    // A repeated id is refused here, not by the renderer: a message that can never apply is parked at once
    // instead of burning every retry on its way to the DLQ.
    helpers: list(queuedHelper, 0, limits.maxHelpersPerRouter).check(
      uniqueBy("id", (id) => `helper id ${id} appears more than once`),
    ),
    correlation_id: correlationId,
    issued_at: z.iso.datetime(),
  });

  const applyError = z.strictObject({
    helper_id: z.optional(uuid),
    code: text(1, 64),
    message: text(0, 512),
  });

  // The sending host is never read from a report: it comes from the queue the report arrived on (one
  // status queue per node, writable only by that node). A `host` in the body must agree with it.
  const appliedReport = z.strictObject({
    v: z.literal(1),
    kind: z.literal("applied"),
    router_id: uuid,
    revision,
    host: z.optional(host),
    namespace: z.optional(namespaceKind),
    /** helperSetDigest (lib/digest.ts) of the helper set the agent's read-back found. */
    digest: z.string().check(z.regex(/^[0-9a-f]{64}$/, "must be 64 lowercase hex digits")),
    rules: z.strictObject({ ipv4: z.int().check(z.gte(0)), ipv6: z.int().check(z.gte(0)) }),
    errors: list(applyError, 0, limits.maxHelpersPerRouter + 8),
  });

  const resyncRequest = z.strictObject({
    v: z.literal(1),
    kind: z.literal("resync-request"),
    host: z.optional(host),
  });

  const statusMessage = z.discriminatedUnion("kind", [appliedReport, resyncRequest]);

  return {
    helperChange,
    notification,
    neutronPush,
    routerUpsert,
    eventDetails,
    routerSync,
    appliedReport,
    resyncRequest,
    statusMessage,
  };
}

export type Schemas = ReturnType<typeof buildSchemas>;
export type RouterSyncMessage = z.infer<Schemas["routerSync"]>;
export type AppliedReport = z.infer<Schemas["appliedReport"]>;
export type ResyncRequest = z.infer<Schemas["resyncRequest"]>;
export type StatusMessage = z.infer<Schemas["statusMessage"]>;
export type RouterUpsert = z.infer<Schemas["routerUpsert"]>;
export type ApplyError = z.infer<Schemas["appliedReport"]>["errors"][number];

/** Converts zod issues into field paths the caller can act on. */
export function toFieldIssues(error: z.core.$ZodError): FieldIssue[] {
  return error.issues.slice(0, 50).map((issue) => ({
    path: issue.path.map(String).join("."),
    message: issue.message,
  }));
}

/** Parses or throws a ValidationError that keeps field paths. */
export function parseOrThrow<S extends z.ZodMiniType>(schema: S, input: unknown, what: string): z.output<S> {
  const result = schema.safeParse(input);
  if (!result.success) throw new ValidationError(`invalid ${what}`, toFieldIssues(result.error));
  return result.data;
}

/** The POST body: Neutron's push payload when it carries `event_type`, the native notification otherwise. */
export function parseNotificationBody(schemas: Schemas, input: unknown): Notification {
  const isNeutron = typeof input === "object" && input !== null && Object.hasOwn(input, "event_type");
  return isNeutron
    ? parseOrThrow(schemas.neutronPush, input, "Neutron notification")
    : parseOrThrow(schemas.notification, input, "notification");
}
