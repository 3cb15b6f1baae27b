/**
 * A small API Gateway (HTTP API, payload 2.0) for the local stack: route match, JWT authorizer, event
 * construction, invocation of the real handler, response mapping. serverless-offline would do the routing,
 * but it does not verify JWT signatures, and the authorizer is the one trust boundary that must be real here.
 */
import { randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { APIGatewayProxyEventV2WithJWTAuthorizer, Context } from "aws-lambda";
import { ADMIN_SCOPE } from "../../lib/domain/identity.ts";
import {
  type AppError,
  ForbiddenError,
  InternalError,
  NotFoundError,
  PayloadTooLargeError,
  ServiceUnavailableError,
} from "../../lib/errors.ts";
import {
  apiGatewayClaims,
  type SigningKey,
  TokenRejectedError,
  tokenScopes,
  type VerifyOptions,
  verifyBearer,
} from "./auth.ts";

interface Route {
  readonly method: string;
  readonly path: string;
  /** The route's authorizationScopes: a token needs at least one of them, or the gateway answers 403. */
  readonly scopes: readonly string[];
}

/** The routes serverless.yml declares, with their scopes (test/deploy/template.test.ts keeps the two in step). */
export const ROUTES: readonly Route[] = [
  { method: "POST", path: "/v1/notifications", scopes: [] },
  { method: "GET", path: "/v1/routers/{router_id}/conntrack-helpers", scopes: [] },
  { method: "PUT", path: "/v1/routers/{router_id}", scopes: [ADMIN_SCOPE] },
  { method: "DELETE", path: "/v1/routers/{router_id}", scopes: [ADMIN_SCOPE] },
];

/** API Gateway's own payload limit; the function enforces the much smaller CTH_MAX_BODY_BYTES itself. */
export const GATEWAY_MAX_BODY_BYTES = 10 * 1024 * 1024;

export type HttpResult =
  | string
  | {
      statusCode?: number;
      headers?: Record<string, string | number | boolean>;
      body?: string;
      isBase64Encoded?: boolean;
      cookies?: string[];
    }
  | Record<string, unknown>;

export type HttpHandler = (
  event: APIGatewayProxyEventV2WithJWTAuthorizer,
  context: Context,
) => Promise<HttpResult>;

export interface RouteMatch {
  readonly routeKey: string;
  readonly pathParameters: Record<string, string> | undefined;
  readonly scopes: readonly string[];
}

/** Matches like API Gateway: exact method and path, `{name}` binds one non-empty segment. */
export function matchRoute(method: string, path: string): RouteMatch | undefined {
  const segments = path.split("/");
  for (const route of ROUTES) {
    if (route.method !== method) continue;
    const pattern = route.path.split("/");
    if (pattern.length !== segments.length) continue;
    const params: Record<string, string> = {};
    let ok = true;
    for (const [i, part] of pattern.entries()) {
      const actual = segments[i]!;
      if (part.startsWith("{") && part.endsWith("}")) {
        if (actual === "") {
          ok = false;
          break;
        }
        try {
          params[part.slice(1, -1)] = decodeURIComponent(actual);
        } catch {
          ok = false;
          break;
        }
      } else if (part !== actual) {
        ok = false;
        break;
      }
    }
    if (ok) {
      return {
        routeKey: `${route.method} ${route.path}`,
        pathParameters: Object.keys(params).length > 0 ? params : undefined,
        scopes: route.scopes,
      };
    }
  }
  return undefined;
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const pad = (n: number) => String(n).padStart(2, "0");

/** "17/Jun/2024:15:49:29 +0000", API Gateway's requestContext.time. */
export function apiGatewayTime(date: Date): string {
  return `${pad(date.getUTCDate())}/${MONTHS[date.getUTCMonth()]}/${date.getUTCFullYear()}:${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())} +0000`;
}

const TEXTUAL = /^(application\/(json|[\w.+-]*\+json|x-www-form-urlencoded|xml)|text\/)/i;

export interface IncomingRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
  readonly sourceIp: string;
}

/** Builds the event exactly in the shape of test/fixtures/aws-events/apigw-http-jwt.json. */
export function buildHttpApiEvent(
  request: IncomingRequest,
  match: RouteMatch,
  claims: Record<string, string>,
  now: Date = new Date(),
  scopes: readonly string[] | undefined = undefined,
): APIGatewayProxyEventV2WithJWTAuthorizer {
  const url = new URL(request.url, "http://127.0.0.1");
  const headers: Record<string, string> = {};
  const cookies: string[] = [];
  for (const [name, value] of Object.entries(request.headers)) {
    if (value === undefined) continue;
    if (name === "cookie") {
      cookies.push(...String(value).split(/;\s*/).filter(Boolean));
      continue;
    }
    headers[name] = Array.isArray(value) ? value.join(",") : value;
  }
  const query: Record<string, string> = {};
  for (const [name, value] of url.searchParams)
    query[name] = name in query ? `${query[name]},${value}` : value;
  const contentType = headers["content-type"] ?? "";
  const textual = request.body.length === 0 || TEXTUAL.test(contentType);
  const event: APIGatewayProxyEventV2WithJWTAuthorizer = {
    version: "2.0",
    routeKey: match.routeKey,
    rawPath: url.pathname,
    rawQueryString: url.search.startsWith("?") ? url.search.slice(1) : url.search,
    headers,
    requestContext: {
      accountId: "000000000000",
      apiId: "local",
      // As recorded from a real HTTP API: only `jwt`, and `scopes: null` when the token has no scope claim.
      authorizer: {
        jwt: { claims, scopes: scopes ? [...scopes] : null },
      } as unknown as APIGatewayProxyEventV2WithJWTAuthorizer["requestContext"]["authorizer"],
      domainName: headers.host ?? "127.0.0.1",
      domainPrefix: (headers.host ?? "127").split(".")[0]!,
      http: {
        method: request.method,
        path: url.pathname,
        protocol: "HTTP/1.1",
        sourceIp: request.sourceIp,
        userAgent: headers["user-agent"] ?? "",
      },
      requestId: randomUUID(),
      routeKey: match.routeKey,
      stage: "$default",
      time: apiGatewayTime(now),
      timeEpoch: now.getTime(),
    },
    isBase64Encoded: !textual,
  };
  if (cookies.length > 0) event.cookies = cookies;
  if (Object.keys(query).length > 0) event.queryStringParameters = query;
  if (match.pathParameters) event.pathParameters = match.pathParameters;
  if (request.body.length > 0)
    event.body = textual ? request.body.toString("utf8") : request.body.toString("base64");
  return event;
}

export interface GatewayResponse {
  readonly statusCode: number;
  readonly headers: Record<string, string>;
  readonly cookies: string[];
  readonly body: Buffer;
}

/** Maps a payload-2.0 result as API Gateway does, including the "inferred" format for bare values. */
export function mapResult(result: HttpResult | undefined): GatewayResponse {
  if (result !== null && typeof result === "object" && typeof result.statusCode === "number") {
    const structured = result as Exclude<HttpResult, string> & { statusCode: number };
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(structured.headers ?? {}))
      headers[name.toLowerCase()] = String(value);
    const raw = typeof structured.body === "string" ? structured.body : "";
    return {
      statusCode: structured.statusCode,
      headers,
      cookies: Array.isArray(structured.cookies) ? structured.cookies.map(String) : [],
      body: structured.isBase64Encoded ? Buffer.from(raw, "base64") : Buffer.from(raw, "utf8"),
    };
  }
  const body = typeof result === "string" ? result : JSON.stringify(result ?? null);
  return {
    statusCode: 200,
    headers: { "content-type": "application/json" },
    cookies: [],
    body: Buffer.from(body, "utf8"),
  };
}

/** The project's one error shape, for the failures that happen before the function runs. */
export function errorResponse(error: AppError, extraHeaders: Record<string, string> = {}): GatewayResponse {
  const message = error.expose ? error.message : "internal error";
  return {
    statusCode: error.status,
    headers: { "content-type": "application/json", ...extraHeaders },
    cookies: [],
    body: Buffer.from(JSON.stringify({ error: { code: error.code, message } })),
  };
}

export function lambdaContext(functionName: string, timeoutMs: number): Context {
  const deadline = Date.now() + timeoutMs;
  const requestId = randomUUID();
  return {
    callbackWaitsForEmptyEventLoop: false,
    functionName,
    functionVersion: "$LATEST",
    invokedFunctionArn: `arn:aws:lambda:us-east-1:000000000000:function:${functionName}`,
    memoryLimitInMB: "512",
    awsRequestId: requestId,
    logGroupName: `/aws/lambda/${functionName}`,
    logStreamName: `local/${requestId}`,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    done: () => undefined,
    fail: () => undefined,
    succeed: () => undefined,
  };
}

export interface GatewayOptions {
  readonly handler: HttpHandler;
  readonly key: SigningKey;
  readonly verify?: VerifyOptions;
  readonly host?: string;
  readonly port: number;
  /** The function's timeout: a slower handler gets 503, as API Gateway answers a timed-out integration. */
  readonly timeoutMs?: number;
  readonly functionName?: string;
  readonly log?: (line: Record<string, unknown>) => void;
}

export interface Gateway {
  readonly url: string;
  close(): Promise<void>;
}

async function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
const TIMED_OUT = Symbol("timed out");

/** Handles one request end to end; exported so tests can drive it without sockets too. */
export async function handleRequest(
  options: GatewayOptions,
  request: IncomingRequest,
): Promise<GatewayResponse> {
  const path = new URL(request.url, "http://127.0.0.1").pathname;
  const match = matchRoute(request.method, path);
  // API Gateway matches the route before it runs the authorizer: an unknown route is 404 with or without a token.
  if (!match) return errorResponse(new NotFoundError(`no route for ${request.method} ${path}`));
  let claims: Record<string, string>;
  let scopes: string[] | undefined;
  try {
    const header = request.headers.authorization;
    const payload = await verifyBearer(
      Array.isArray(header) ? header[0] : header,
      options.key,
      options.verify,
    );
    claims = apiGatewayClaims(payload);
    scopes = tokenScopes(payload);
  } catch (error) {
    if (error instanceof TokenRejectedError) {
      return errorResponse(error, {
        "www-authenticate": `Bearer error="invalid_token" error_description="${error.reason}"`,
      });
    }
    throw error;
  }
  // As API Gateway checks a route's authorizationScopes: at least one of them, whole tokens, else 403 and
  // the function never runs.
  if (match.scopes.length > 0 && !match.scopes.some((scope) => scopes?.includes(scope))) {
    const required = match.scopes.join(" ");
    return errorResponse(new ForbiddenError(`this route requires the scope ${required}`), {
      "www-authenticate": `Bearer scope="${required}" error="insufficient_scope" error_description="the token has none of the route's scopes"`,
    });
  }
  const event = buildHttpApiEvent(request, match, claims, new Date(), scopes);
  const timeoutMs = options.timeoutMs ?? 10_000;
  try {
    const result = await withTimeout(
      options.handler(event, lambdaContext(options.functionName ?? "cth-local-http", timeoutMs)),
      timeoutMs,
    );
    if (result === TIMED_OUT) {
      return errorResponse(new ServiceUnavailableError("the function timed out"));
    }
    return mapResult(result);
  } catch (error) {
    options.log?.({ level: "error", msg: "http handler threw", error: String(error) });
    return errorResponse(new InternalError("handler failed"));
  }
}

export async function startGateway(options: GatewayOptions): Promise<Gateway> {
  const host = options.host ?? "127.0.0.1";
  const server = http.createServer(async (req, res) => {
    const started = Date.now();
    let response: GatewayResponse;
    const body = await readBody(req, GATEWAY_MAX_BODY_BYTES);
    if (body === undefined) {
      response = errorResponse(new PayloadTooLargeError("request body exceeds the gateway limit"));
    } else {
      try {
        response = await handleRequest(options, {
          method: req.method ?? "GET",
          url: req.url ?? "/",
          headers: req.headers,
          body,
          sourceIp: req.socket.remoteAddress ?? "127.0.0.1",
        });
      } catch (error) {
        options.log?.({ level: "error", msg: "gateway failure", error: String(error) });
        response = errorResponse(new InternalError("gateway failure"));
      }
    }
    const headers: http.OutgoingHttpHeaders = { ...response.headers, "content-length": response.body.length };
    if (response.cookies.length > 0) headers["set-cookie"] = response.cookies;
    res.writeHead(response.statusCode, headers);
    res.end(response.body);
    options.log?.({
      level: "info",
      msg: "http",
      method: req.method,
      path: req.url,
      status: response.statusCode,
      ms: Date.now() - started,
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${host}:${port}`,
    close: async () => {
      server.closeIdleConnections();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Give in-flight requests a moment, then cut what is left (a curl stuck on keep-alive must not block exit).
      const timer = setTimeout(() => server.closeAllConnections(), 2_000);
      await closed;
      clearTimeout(timer);
    },
  };
}
