/**
 * HTTP API (v2) and REST API (v1) handler for every route of lib/http/routes.ts (matched there, never here):
 * POST /v1/notifications, GET /v1/routers, GET /v1/routers/{id}{,/conntrack-helpers}, PUT and DELETE
 * /v1/routers/{id}. A thin middy chain around one domain call per route.
 */
import { randomBytes } from "node:crypto";
import {
  IdempotencyAlreadyInProgressError,
  IdempotencyConfig,
  IdempotencyValidationError,
  makeIdempotent,
} from "@aws-lambda-powertools/idempotency";
import { DynamoDBPersistenceLayer } from "@aws-lambda-powertools/idempotency/dynamodb";
import type { BasePersistenceLayer } from "@aws-lambda-powertools/idempotency/persistence";
import middy from "@middy/core";
import { type Config, FIELD_LIMITS, loadConfig } from "../lib/config.ts";
import type { Identity } from "../lib/domain/identity.ts";
import {
  type DomainDeps,
  deleteRouter,
  listRouters,
  readRouter,
  readTaggedRouterState,
  type SubmitResult,
  submitNotification,
  upsertRouter,
  type WriteConditions,
} from "../lib/domain/services.ts";
import {
  BadRequestError,
  ConflictError,
  isAppError,
  NotFoundError,
  ServiceUnavailableError,
  ValidationError,
} from "../lib/errors.ts";
import type { ApiGatewayEvent, ApiGatewayResult } from "../lib/http/api-event.ts";
import { type CursorCodec, type CursorFilters, cursorCodec, cursorKeyLoader } from "../lib/http/cursor.ts";
import {
  type AppLogger,
  bodyLimit,
  errorResponses,
  type HttpContext,
  identity,
  json,
  jsonBody,
  requestContext,
  securityHeaders,
  stateOf,
} from "../lib/http/middlewares.ts";
import { matchRoute, type RouteSpec } from "../lib/http/routes.ts";
import { domainWiring, lazyHandler, type Observability, observed } from "../lib/production.ts";
import { routerListQuery } from "../lib/schemas/api.ts";
import { parseNotificationBody, parseOrThrow, type Schemas } from "../lib/schemas/index.ts";
import { uuid } from "../lib/schemas/primitives.ts";

export interface HttpDeps {
  readonly domain: DomainDeps;
  readonly schemas: Schemas;
  readonly logger: AppLogger;
  /** Idempotency-Key support; undefined disables it (benchmarks on in-memory stores). */
  readonly idempotency: BasePersistenceLayer | undefined;
  /** How long a completed Idempotency-Key is remembered. */
  readonly idempotencyTtlSeconds?: number;
  /** The listing cursors' key (lib/http/cursor.ts); undefined: random to this process (tests, benchmarks). */
  readonly cursorKey?: () => Promise<Buffer>;
  /** Lambda context and correlation id in the logs, RejectedRequests metrics; absent in tests and benchmarks. */
  readonly observability?: Observability;
}

const IDEMPOTENCY_KEY = /^[A-Za-z0-9_.:-]+$/;

function idempotencyKeyOf(headers: Readonly<Record<string, string>>): string | undefined {
  const key = headers["idempotency-key"];
  if (key === undefined) return undefined;
  if (key.length === 0 || key.length > FIELD_LIMITS.idempotencyKey || !IDEMPOTENCY_KEY.test(key)) {
    throw new BadRequestError(
      `Idempotency-Key must be 1 to ${FIELD_LIMITS.idempotencyKey} characters of letters, digits and '_.:-'`,
    );
  }
  return key;
}

function routerIdFrom(raw: string): string {
  const decoded = (() => {
    try {
      return decodeURIComponent(raw);
    } catch {
      return raw;
    }
  })();
  const parsed = uuid.safeParse(decoded);
  if (!parsed.success) {
    throw new ValidationError("invalid router id", [
      { path: "router_id", message: "must be a lowercase UUID" },
    ]);
  }
  return parsed.data;
}

/** The longest If-Match this API reads: a handful of its own tags. */
const MAX_IF_MATCH_CHARS = 1024;

function conditionsOf(headers: Readonly<Record<string, string>>): WriteConditions {
  const ifMatch = headers["if-match"];
  if (ifMatch === undefined) return {};
  if (ifMatch.trim() === "" || ifMatch.length > MAX_IF_MATCH_CHARS) {
    throw new BadRequestError(`If-Match must be "*" or 1 to ${MAX_IF_MATCH_CHARS} characters of entity tags`);
  }
  return { ifMatch };
}

/** A parameter the route does not declare is refused, not ignored: a misspelt filter would list everything. */
function requireDeclaredQuery(route: RouteSpec, query: Readonly<Record<string, string>>): void {
  const declared = new Set(Object.keys(route.query?.schema.shape ?? {}));
  const unknown = Object.keys(query).filter((name) => !declared.has(name));
  if (unknown.length > 0) {
    throw new ValidationError(
      "invalid query",
      unknown.slice(0, 10).map((name) => ({
        path: name.slice(0, 64),
        message: "is not a query parameter of this route",
      })),
    );
  }
}

const DEFAULT_PAGE_SIZE = 50;

interface IdempotentInput {
  /** Hashed: the caller (project, powers, subject), route and key. */
  readonly key: string;
  /** Hashed for validation: the same key with another body is refused. */
  readonly payload: unknown;
  /** Not hashed: the work itself. */
  readonly run: () => Promise<SubmitResult>;
}

/**
 * A stored answer is replayed only to a caller with the same authority as the one it was computed for: the
 * same project, the same powers and the same subject (dev tokens of an admin and a member of one project
 * share `sub`). Anyone else runs the request afresh and so gets exactly the answer it would get without
 * the key. JSON keeps the parts unambiguous whatever characters a subject holds.
 */
function idempotencyScope(caller: Identity, route: string, key: string): string {
  return JSON.stringify([caller.projectId, [...caller.roles].sort(), caller.subject ?? null, route, key]);
}

export function makeHandler(deps: HttpDeps) {
  const { domain, schemas, logger } = deps;
  const loadCursorKey = deps.cursorKey ?? (async () => randomBytes(32));
  let codec: Promise<CursorCodec> | undefined;
  const cursors = () => {
    codec ??= loadCursorKey()
      .then(cursorCodec)
      .catch((error: unknown) => {
        codec = undefined; // a failed key load is retried by the next listing
        throw new ServiceUnavailableError("listing is unavailable; retry later", undefined, { cause: error });
      });
    return codec;
  };
  const idempotencyConfig = new IdempotencyConfig({
    eventKeyJmesPath: "key",
    payloadValidationJmesPath: "payload",
    expiresAfterSeconds: deps.idempotencyTtlSeconds ?? 24 * 3600,
  });
  const idempotent = deps.idempotency
    ? makeIdempotent(async (input: IdempotentInput) => input.run(), {
        persistenceStore: deps.idempotency,
        keyPrefix: "cth-http",
        config: idempotencyConfig,
      })
    : undefined;

  async function submit(
    caller: Identity,
    body: unknown,
    headers: Readonly<Record<string, string>>,
    cid: string,
    context: HttpContext,
  ) {
    const key = idempotencyKeyOf(headers);
    const conditions = conditionsOf(headers);
    const notification = parseNotificationBody(schemas, body);
    const run = () => submitNotification(domain, caller, notification, cid, conditions);
    if (!idempotent || key === undefined) return run();
    // An invocation that dies mid-request must not lock its key for the whole TTL: the in-progress
    // record then expires with the invocation's own deadline.
    if (typeof context.getRemainingTimeInMillis === "function")
      idempotencyConfig.registerLambdaContext(context);
    try {
      return await idempotent({
        key: idempotencyScope(caller, "POST /v1/notifications", key),
        // The same key with another If-Match is another request (409), not a replay.
        payload: [body, conditions.ifMatch ?? null],
        run,
      });
    } catch (error) {
      if (error instanceof IdempotencyValidationError) {
        throw new ConflictError("this Idempotency-Key was already used with a different request body");
      }
      if (error instanceof IdempotencyAlreadyInProgressError) {
        throw new ConflictError("a request with this Idempotency-Key is still in progress; retry shortly");
      }
      if (isAppError(error) || !(error instanceof Error) || !error.name.startsWith("Idempotency"))
        throw error;
      // Powertools may wrap our own error; surface it (e.g. the 503 that says a retry is safe).
      if (isAppError(error.cause)) throw error.cause;
      // Otherwise the idempotency table itself failed: nothing ran, the caller may retry.
      throw new ServiceUnavailableError(
        "idempotency records are unavailable; retry with the same Idempotency-Key",
        undefined,
        { cause: error },
      );
    }
  }

  async function list(caller: Identity, query: Readonly<Record<string, string>>) {
    const parsed = parseOrThrow(routerListQuery, query, "query");
    const filters: CursorFilters = {
      projectId: parsed.project_id,
      host: parsed.host,
      outOfSyncOnly: parsed.in_sync === "false",
    };
    const codec = await cursors();
    const after = parsed.cursor === undefined ? undefined : codec.open(parsed.cursor, caller, filters);
    const page = await listRouters(domain, caller, {
      ...filters,
      limit: parsed.limit ?? DEFAULT_PAGE_SIZE,
      after,
    });
    return {
      routers: page.routers,
      next_cursor: page.next === undefined ? null : codec.seal(page.next, caller, filters),
    };
  }

  const route = async (_event: ApiGatewayEvent, context: HttpContext): Promise<ApiGatewayResult> => {
    const state = stateOf(context);
    const { method, path, headers, correlationId, query } = state.request;
    const caller = state.identity!;
    const match = matchRoute(method, path);
    if (!match) throw new NotFoundError(`no route for ${method} ${path.slice(0, 200)}`);
    requireDeclaredQuery(match.route, query);
    const routerId = () => routerIdFrom(match.params.router_id ?? "");
    switch (match.route.id) {
      case "submitNotification":
        return json(202, await submit(caller, state.body, headers, correlationId, context));
      case "getRouterHelpers": {
        const { body, etag } = await readTaggedRouterState(domain, caller, routerId());
        return json(200, body, { etag });
      }
      case "getRouter": {
        const { body, etag } = await readRouter(domain, caller, routerId());
        return json(200, body, { etag });
      }
      case "listRouters":
        return json(200, await list(caller, query));
      case "putRouter": {
        const id = routerId();
        const body = parseOrThrow(schemas.routerUpsert, state.body, "router");
        const result = await upsertRouter(domain, caller, id, body, correlationId, conditionsOf(headers));
        return json(result.created ? 201 : 200, result.router, { etag: result.etag });
      }
      case "deleteRouter":
        await deleteRouter(domain, caller, routerId(), correlationId, conditionsOf(headers));
        return { statusCode: 204, headers: {}, body: "" };
    }
  };

  return middy<ApiGatewayEvent, ApiGatewayResult, Error, HttpContext>()
    .use(observed(deps.observability))
    .use(securityHeaders())
    .use(errorResponses(logger, deps.observability?.metrics))
    .use(requestContext(deps.observability?.logger))
    .use(bodyLimit(domain.limits.maxBodyBytes))
    .use(jsonBody())
    .use(identity())
    .handler(route);
}

/** Production wiring from the environment (lib/config.ts); called on first invocation, never at import. */
export function defaultDeps(config: Config = loadConfig()): HttpDeps {
  const { clients, ...wiring } = domainWiring("cth-http", "http", config);
  return {
    ...wiring,
    cursorKey: cursorKeyLoader(config.signingKey, clients.ssm),
    idempotency: new DynamoDBPersistenceLayer({
      tableName: config.idempotencyTable,
      awsSdkV3Client: clients.dynamoRaw,
    }),
  };
}

export const handler = lazyHandler(() => makeHandler(defaultDeps()));
