/**
 * The one route table of the HTTP API. The handler's router (functions/http.ts), the local gateway
 * (scripts/local/gateway.ts), the OpenAPI document (openapi.json, generated) and, through that document,
 * serverless.yml's httpApi events all come from here.
 */
import * as z from "zod/mini";
import { ADMIN_SCOPE } from "../domain/identity.ts";
import * as api from "../schemas/api.ts";
import type { Schemas } from "../schemas/index.ts";

export type RouteId =
  | "submitNotification"
  | "getRouterHelpers"
  | "getRouter"
  | "listRouters"
  | "putRouter"
  | "deleteRouter";

export type RequestHeader = "Idempotency-Key" | "If-Match";
export type ResponseHeader = "ETag" | "Retry-After" | "X-Correlation-Id";

export interface RouteResponse {
  readonly description: string;
  /** The body's schema; undefined for an empty body (204). */
  readonly body?: z.ZodMiniType;
  readonly headers?: readonly ResponseHeader[];
}

export interface RouteQuery {
  readonly schema: z.ZodMiniObject;
  readonly descriptions: Readonly<Record<string, string>>;
}

/** A route's query: every parameter the schema declares has a description (checked when compiled). */
function query<S extends z.ZodMiniObject>(
  schema: S,
  descriptions: { readonly [K in keyof S["shape"] & string]: string },
): RouteQuery {
  return { schema, descriptions };
}

export interface RouteSpec {
  readonly id: RouteId;
  readonly method: "GET" | "POST" | "PUT" | "DELETE";
  /** OpenAPI path template: `{router_id}` is the only parameter. */
  readonly path: string;
  readonly summary: string;
  /** authorizationScopes at the gateway: a token needs one of them (empty: any valid token). */
  readonly scopes: readonly string[];
  /** The request body, built from the deployment's limits and catalog. */
  readonly body?: (schemas: Schemas) => z.ZodMiniType;
  /** Query parameters (all optional strings on the wire): the handler's parser and the document's types. */
  readonly query?: RouteQuery;
  readonly headers?: readonly RequestHeader[];
  /** Success responses by status; error responses are added for every route by the document builder. */
  readonly responses: Readonly<Record<number, RouteResponse>>;
}

export const ROUTES: readonly RouteSpec[] = [
  {
    id: "submitNotification",
    method: "POST",
    path: "/v1/notifications",
    summary: "Submit a conntrack helper notification (native or Neutron's push payload)",
    scopes: [],
    // Documented as oneOf; the handler tells them apart by `event_type` (parseNotificationBody), for clearer errors.
    body: (schemas) => z.union([schemas.notification, schemas.neutronPush]),
    headers: ["Idempotency-Key", "If-Match"],
    responses: { 202: { description: "committed and queued", body: api.submitResult } },
  },
  {
    id: "getRouterHelpers",
    method: "GET",
    path: "/v1/routers/{router_id}/conntrack-helpers",
    summary: "A router's desired helpers and what each of its hosts applied",
    scopes: [],
    responses: {
      200: { description: "desired and applied state", body: api.routerState, headers: ["ETag"] },
    },
  },
  {
    id: "getRouter",
    method: "GET",
    path: "/v1/routers/{router_id}",
    summary: "A router: project, bindings, revision and in_sync",
    scopes: [],
    responses: { 200: { description: "the router", body: api.routerView, headers: ["ETag"] } },
  },
  {
    id: "listRouters",
    method: "GET",
    path: "/v1/routers",
    summary: "List routers, filtered by project, host and sync state, a page at a time",
    scopes: [],
    query: query(api.routerListQuery, {
      project_id:
        "only this project's routers (operators); a member sees only its own, and another project's id lists nothing",
      host: "only routers bound to this node (operators only: 403 for a member)",
      in_sync: "`false` (the only value): only routers some host has not confirmed",
      limit: "1..100, default 50",
      cursor:
        "next_cursor of the previous page: opaque, valid only for the same caller and filters (400 otherwise)",
    }),
    responses: { 200: { description: "one page", body: api.routerList } },
  },
  {
    id: "putRouter",
    method: "PUT",
    path: "/v1/routers/{router_id}",
    summary: "Register a router or change its project and bindings (admin)",
    scopes: [ADMIN_SCOPE],
    body: (schemas) => schemas.routerUpsert,
    headers: ["If-Match"],
    responses: {
      200: { description: "changed (or unchanged)", body: api.routerView, headers: ["ETag"] },
      201: { description: "registered", body: api.routerView, headers: ["ETag"] },
    },
  },
  {
    id: "deleteRouter",
    method: "DELETE",
    path: "/v1/routers/{router_id}",
    summary: "Delete a router; its hosts are sent the empty set until each confirms (admin)",
    scopes: [ADMIN_SCOPE],
    headers: ["If-Match"],
    responses: { 204: { description: "deleted" } },
  },
];

/** `GET /v1/routers/{router_id}` -> `GET /v1/routers/{router_id}`: API Gateway's route key. */
export const routeKey = (route: Pick<RouteSpec, "method" | "path">): string =>
  `${route.method} ${route.path}`;

export interface RouteMatch {
  readonly route: RouteSpec;
  /** Raw (still percent-encoded) path parameters. */
  readonly params: Readonly<Record<string, string>>;
}

/** The route for a method and path, as API Gateway matches it (exact segments, `{name}` one segment). */
export function matchRoute(method: string, path: string): RouteMatch | undefined {
  const segments = path.split("/");
  for (const route of ROUTES) {
    if (route.method !== method) continue;
    const pattern = route.path.split("/");
    if (pattern.length !== segments.length) continue;
    const params: Record<string, string> = {};
    const matched = pattern.every((part, index) => {
      const segment = segments[index]!;
      if (part.startsWith("{") && part.endsWith("}")) {
        params[part.slice(1, -1)] = segment;
        return segment.length > 0;
      }
      return part === segment;
    });
    if (matched) return { route, params };
  }
  return undefined;
}
