/**
 * A typed client of the HTTP API (the operator CLI uses it). Routes come from the one route table
 * (lib/http/routes.ts) and every response is parsed with the schemas in lib/schemas/api.ts, so a server
 * that drifts from the contract is an error naming the route, not a silently wrong table.
 */
import * as z from "zod/mini";
import { AppError, type FieldIssue } from "./errors.ts";
import { ROUTES, type RouteId, type RouteSpec } from "./http/routes.ts";
import * as api from "./schemas/api.ts";
import type { Notification, Schemas } from "./schemas/index.ts";

/** The API answered with an error: its status, and its code, message and details as it sent them. */
export class ApiError extends AppError {
  readonly status: number;
  readonly code: string;
  declare readonly details: readonly FieldIssue[];
  constructor(status: number, code: string, message: string, details: readonly FieldIssue[] = []) {
    super(message, details);
    this.status = status;
    this.code = code;
  }
}

/** The API answered something the contract does not allow (a status or a body); names the route. */
export class UnexpectedResponseError extends AppError {
  readonly status = 502;
  readonly code = "unexpected_response";
}

/** Nothing answered at the endpoint (refused, reset, DNS, timeout). */
export class UnreachableError extends AppError {
  readonly status = 503;
  readonly code = "unreachable";
}

export type RouterUpsertInput = z.input<Schemas["routerUpsert"]>;

export interface ListRoutersQuery {
  readonly projectId?: string | undefined;
  readonly host?: string | undefined;
  /** `true`: only routers some host has not confirmed (`in_sync=false`). */
  readonly outOfSync?: boolean | undefined;
  /** Page size, 1..100. */
  readonly limit?: number | undefined;
  readonly cursor?: string | undefined;
}

export interface ClientOptions {
  /** Endpoint without the `/v1/...` path, e.g. `http://127.0.0.1:3000`. */
  readonly url: string;
  readonly token?: string | undefined;
  readonly timeoutMs?: number | undefined;
  /** How often a 429 or 503 is retried, for requests safe to repeat (default 2). */
  readonly retries?: number | undefined;
}

/** A body and the headers a caller may need (ETag for If-Match). */
export interface Answer<T> {
  readonly status: number;
  readonly body: T;
  readonly etag: string | undefined;
}

/** API Gateway's own errors (401, 403, 404, 413, 429) carry only a message. */
const gatewayError = z.object({ message: z.string() });

const routeById = (id: RouteId): RouteSpec => {
  const route = ROUTES.find((candidate) => candidate.id === id);
  if (!route) throw new Error(`no route ${id} in lib/http/routes.ts`);
  return route;
};

function describe(route: RouteSpec): string {
  return `${route.method} ${route.path}`;
}

/** Answers that say "later": retried when the request may be repeated. */
const RETRIED_STATUSES: ReadonlySet<number> = new Set([429, 503]);
const MAX_RETRY_WAIT_MS = 5_000;

/**
 * GET and PUT (a whole desired state) may be repeated; a POST only with an Idempotency-Key (a repeat answers
 * the first result). DELETE is not: a repeat of one that took effect would answer 404.
 */
const repeatable = (route: RouteSpec, headers: Record<string, string>): boolean =>
  route.method === "GET" ||
  route.method === "PUT" ||
  (route.method === "POST" && "idempotency-key" in headers);

/** Retry-After in seconds if the server gave one, else a doubling backoff; never more than 5 s. */
function retryWait(response: Response, attempt: number): number {
  const seconds = Number(response.headers.get("retry-after") ?? Number.NaN);
  const wait = Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : 250 * 2 ** attempt;
  return Math.min(wait, MAX_RETRY_WAIT_MS);
}

function errorFrom(route: RouteSpec, status: number, text: string): AppError {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const ours = api.errorBody.safeParse(json);
  if (ours.success) {
    const { code, message, details } = ours.data.error;
    return new ApiError(status, code, message, details ?? []);
  }
  const gateway = gatewayError.safeParse(json);
  if (gateway.success) return new ApiError(status, `http_${status}`, gateway.data.message);
  return new UnexpectedResponseError(
    `${describe(route)} answered ${status} with a body that is not an error: ${text.slice(0, 200)}`,
  );
}

export function createClient(options: ClientOptions) {
  const base = options.url.replace(/\/+$/, "");

  async function call<S extends z.ZodMiniType | undefined>(
    id: RouteId,
    schema: S,
    request: {
      routerId?: string;
      query?: Record<string, string | undefined>;
      body?: unknown;
      headers?: Record<string, string>;
    } = {},
  ): Promise<Answer<S extends z.ZodMiniType ? z.infer<S> : undefined>> {
    const route = routeById(id);
    const path = route.path.replace("{router_id}", encodeURIComponent(request.routerId ?? ""));
    const url = new URL(`${base}${path}`);
    for (const [name, value] of Object.entries(request.query ?? {})) {
      if (value !== undefined) url.searchParams.set(name, value);
    }
    const headers: Record<string, string> = { accept: "application/json", ...request.headers };
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    if (request.body !== undefined) headers["content-type"] = "application/json";
    const retries = repeatable(route, headers) ? (options.retries ?? 2) : 0;
    let response: Response;
    let text: string;
    for (let attempt = 0; ; attempt++) {
      try {
        response = await fetch(url, {
          method: route.method,
          headers,
          ...(request.body === undefined ? {} : { body: JSON.stringify(request.body) }),
          signal: AbortSignal.timeout(options.timeoutMs ?? 30_000),
        });
        text = await response.text();
      } catch (error) {
        const cause = error instanceof Error ? (error.cause ?? error) : error;
        const reason = cause instanceof Error ? cause.message : String(cause);
        throw new UnreachableError(`cannot reach ${base} (${describe(route)}): ${reason}`, undefined, {
          cause: error,
        });
      }
      if (!RETRIED_STATUSES.has(response.status) || attempt >= retries) break;
      await new Promise((done) => setTimeout(done, retryWait(response, attempt)));
    }
    if (!response.ok) throw errorFrom(route, response.status, text);
    if (!(response.status in route.responses)) {
      throw new UnexpectedResponseError(`${describe(route)} answered an undocumented ${response.status}`);
    }
    const etag = response.headers.get("etag") ?? undefined;
    if (schema === undefined) {
      return { status: response.status, body: undefined as never, etag };
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new UnexpectedResponseError(`${describe(route)} answered ${response.status} with no JSON body`);
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      const issues = parsed.error.issues.map((issue) => ({
        path: issue.path.join("."),
        message: issue.message,
      }));
      throw new UnexpectedResponseError(
        `${describe(route)} answered a body that does not match its schema`,
        issues,
      );
    }
    return { status: response.status, body: parsed.data as never, etag };
  }

  const listPage = (query: ListRoutersQuery = {}) =>
    call("listRouters", api.routerList, {
      query: {
        project_id: query.projectId,
        host: query.host,
        in_sync: query.outOfSync ? "false" : undefined,
        limit: query.limit === undefined ? undefined : String(query.limit),
        cursor: query.cursor,
      },
    });

  return {
    listRouters: listPage,

    /** Every router matching the query: follows next_cursor to the end (a repeated cursor is an error). */
    async *allRouters(query: Omit<ListRoutersQuery, "cursor"> = {}): AsyncGenerator<api.RouterViewBody> {
      const seen = new Set<string>();
      let cursor: string | undefined;
      do {
        const page = await listPage({ ...query, cursor });
        yield* page.body.routers;
        cursor = page.body.next_cursor ?? undefined;
        if (cursor !== undefined && seen.has(cursor)) {
          throw new UnexpectedResponseError(`GET /v1/routers gave the cursor ${cursor} twice`);
        }
        if (cursor !== undefined) seen.add(cursor);
      } while (cursor !== undefined);
    },

    getRouter: (routerId: string) => call("getRouter", api.routerView, { routerId }),

    putRouter: (routerId: string, body: RouterUpsertInput) =>
      call("putRouter", api.routerView, { routerId, body }),

    deleteRouter: (routerId: string) => call("deleteRouter", undefined, { routerId }),

    getRouterHelpers: (routerId: string) => call("getRouterHelpers", api.routerState, { routerId }),

    /** The Idempotency-Key makes a retry of the same submission answer the first result, not a second one. */
    submitNotification: (notification: Notification, idempotencyKey: string) =>
      call("submitNotification", api.submitResult, {
        body: notification,
        headers: { "idempotency-key": idempotencyKey },
      }),
  };
}

export type Client = ReturnType<typeof createClient>;
