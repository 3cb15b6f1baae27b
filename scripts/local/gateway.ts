/**
 * A small API Gateway (HTTP API, payload 2.0) for the local stack: throttling, route match, JWT authorizer,
 * event construction, invocation of the real handler, response mapping. The routes and their scopes come
 * from lib/http/routes.ts, the table serverless.yml, the handler's router and the OpenAPI document share.
 *
 * What the gateway answers itself it shapes as API Gateway does, `{"message":"..."}` with an
 * `apigw-requestid` header; what the function answers passes through untouched. Confirmed in AWS's
 * documentation: 401 `{"message":"Unauthorized"}` with `www-authenticate: Bearer scope="" error="invalid_token"
 * error_description="..."` and `apigw-requestid` (HTTP API JWT troubleshooting), 500
 * `{"message":"Internal Server Error"}` (HTTP API Lambda troubleshooting), the 10 MB payload quota and the
 * token-bucket throttling. Not confirmed there, taken from observed responses: the bodies of 403
 * ("Forbidden"), 404 ("Not Found"), 413 ("Request Entity Too Large") and 429 ("Too Many Requests"), the
 * insufficient_scope challenge on 403, and no challenge at all on a request without the Authorization header.
 */
import { randomBytes, randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { APIGatewayProxyEventV2WithJWTAuthorizer, Context } from "aws-lambda";
import { matchRoute, routeKey } from "../../lib/http/routes.ts";
import {
  apiGatewayClaims,
  type SigningKey,
  TokenRejectedError,
  tokenScopes,
  type VerifyOptions,
  verifyBearer,
} from "./auth.ts";

/** API Gateway's own payload limit (HTTP API quota); the function enforces the much smaller CTH_MAX_BODY_BYTES. */
export const GATEWAY_MAX_BODY_BYTES = 10 * 1024 * 1024;
/** The stage's default route throttling, as serverless.yml's httpThrottleRate and httpThrottleBurst. */
export const DEFAULT_THROTTLE = { rate: 50, burst: 100 } as const;
/** The HTTP function's timeout in serverless.yml; Lambda ends it there and API Gateway answers 500. */
const FUNCTION_TIMEOUT_MS = 10_000;
export const OPENAPI_PATH = "/v1/openapi.json";

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

export interface ResolvedRoute {
  readonly routeKey: string;
  readonly pathParameters: Record<string, string> | undefined;
  readonly scopes: readonly string[];
}

/**
 * The table's route for a request, path parameters decoded as API Gateway hands them over; undefined (404)
 * when no route matches or a parameter is not valid percent-encoding.
 */
export function resolveRoute(method: string, path: string): ResolvedRoute | undefined {
  const match = matchRoute(method, path);
  if (!match) return undefined;
  const pathParameters: Record<string, string> = {};
  try {
    for (const [name, value] of Object.entries(match.params))
      pathParameters[name] = decodeURIComponent(value);
  } catch {
    return undefined;
  }
  return {
    routeKey: routeKey(match.route),
    pathParameters: Object.keys(pathParameters).length > 0 ? pathParameters : undefined,
    scopes: match.route.scopes,
  };
}

/**
 * API Gateway's throttle: a token bucket per stage, `burst` tokens deep, refilled at `rate` per second; a
 * request that finds it empty is answered 429 and goes no further.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  constructor(
    private readonly rate: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = burst;
    this.last = now();
  }

  take(): boolean {
    const now = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
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
  match: ResolvedRoute,
  claims: Record<string, string>,
  now: Date = new Date(),
  scopes: readonly string[] | undefined = undefined,
  requestId: string = newRequestId(),
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
      requestId,
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

/** 11 random bytes in base64, the form of API Gateway request ids (apigw-requestid, requestContext.requestId). */
export const newRequestId = (): string => randomBytes(11).toString("base64");

/** An answer API Gateway makes itself: `{"message": ...}`, never the function's error shape. */
export function gatewayResponse(
  statusCode: number,
  message: string,
  extraHeaders: Record<string, string> = {},
): GatewayResponse {
  return {
    statusCode,
    headers: { "content-type": "application/json", ...extraHeaders },
    cookies: [],
    body: Buffer.from(JSON.stringify({ message })),
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
  /** The function's timeout (default serverless.yml's 10 s): a slower handler gets API Gateway's 500. */
  readonly timeoutMs?: number;
  /** Requests per second and bucket depth (default serverless.yml's 50 and 100). */
  readonly throttle?: { readonly rate: number; readonly burst: number };
  /** The OpenAPI document, served at GET /v1/openapi.json unless the route table routes that path itself. */
  readonly openapi?: () => Promise<unknown>;
  readonly functionName?: string;
  readonly log?: (line: Record<string, unknown>) => void;
}

export interface Gateway {
  readonly url: string;
  close(): Promise<void>;
}

/** The body, or undefined past `limit`; the rest is still read (and dropped) so the client gets the answer. */
async function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size <= limit) chunks.push(chunk as Buffer);
  }
  return size > limit ? undefined : Buffer.concat(chunks);
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

const quoted = (value: string) => value.replaceAll("\\", "\\\\").replaceAll('"', '\\"');

/**
 * Handles one request past the throttle and the payload limit, in API Gateway's order: route, then the
 * authorizer (token, then the route's scopes), then the function. Exported so tests drive it without sockets.
 */
export async function handleRequest(
  options: GatewayOptions,
  request: IncomingRequest,
  requestId: string = newRequestId(),
): Promise<GatewayResponse> {
  const response = await answer(options, request, requestId);
  // API Gateway stamps every response, its own and the function's.
  return { ...response, headers: { ...response.headers, "apigw-requestid": requestId } };
}

async function answer(
  options: GatewayOptions,
  request: IncomingRequest,
  requestId: string,
): Promise<GatewayResponse> {
  const path = new URL(request.url, "http://127.0.0.1").pathname;
  const match = resolveRoute(request.method, path);
  if (!match && options.openapi && request.method === "GET" && path === OPENAPI_PATH) {
    return {
      statusCode: 200,
      headers: { "content-type": "application/json" },
      cookies: [],
      body: Buffer.from(JSON.stringify(await options.openapi())),
    };
  }
  // The route is matched before the authorizer runs: an unknown route is 404 with or without a token.
  if (!match) return gatewayResponse(404, "Not Found");
  const header = request.headers.authorization;
  const authorization = Array.isArray(header) ? header[0] : header;
  // No identity source: API Gateway refuses before the authorizer runs, so there is no JWT challenge.
  if (!authorization) return gatewayResponse(401, "Unauthorized");
  const routeScopes = quoted(match.scopes.join(" "));
  let claims: Record<string, string>;
  let scopes: string[] | undefined;
  try {
    const payload = await verifyBearer(authorization, options.key, options.verify);
    claims = apiGatewayClaims(payload);
    scopes = tokenScopes(payload);
  } catch (error) {
    if (!(error instanceof TokenRejectedError)) throw error;
    return gatewayResponse(401, "Unauthorized", {
      "www-authenticate": `Bearer scope="${routeScopes}" error="invalid_token" error_description="${quoted(error.reason)}"`,
    });
  }
  // authorizationScopes: at least one of the route's, compared as whole tokens, else 403 before the function.
  if (match.scopes.length > 0 && !match.scopes.some((scope) => scopes?.includes(scope))) {
    return gatewayResponse(403, "Forbidden", {
      "www-authenticate": `Bearer scope="${routeScopes}" error="insufficient_scope" error_description="the token has none of the route's scopes"`,
    });
  }
  const event = buildHttpApiEvent(request, match, claims, new Date(), scopes, requestId);
  const timeoutMs = options.timeoutMs ?? FUNCTION_TIMEOUT_MS;
  try {
    const result = await withTimeout(
      options.handler(event, lambdaContext(options.functionName ?? "cth-local-http", timeoutMs)),
      timeoutMs,
    );
    // A timed-out or failed invocation is an integration error: API Gateway answers 500, never the details.
    if (result === TIMED_OUT) {
      options.log?.({ level: "error", msg: "http handler timed out", timeoutMs });
      return gatewayResponse(500, "Internal Server Error");
    }
    return mapResult(result);
  } catch (error) {
    options.log?.({ level: "error", msg: "http handler threw", error: String(error) });
    return gatewayResponse(500, "Internal Server Error");
  }
}

export async function startGateway(options: GatewayOptions): Promise<Gateway> {
  const host = options.host ?? "127.0.0.1";
  const { rate, burst } = options.throttle ?? DEFAULT_THROTTLE;
  const bucket = new TokenBucket(rate, burst);
  const server = http.createServer(async (req, res) => {
    const started = Date.now();
    const requestId = newRequestId();
    let response: GatewayResponse;
    const throttled = !bucket.take();
    const body = await readBody(req, GATEWAY_MAX_BODY_BYTES);
    if (throttled) {
      response = gatewayResponse(429, "Too Many Requests");
    } else if (body === undefined) {
      response = gatewayResponse(413, "Request Entity Too Large");
    } else {
      try {
        response = await handleRequest(
          options,
          {
            method: req.method ?? "GET",
            url: req.url ?? "/",
            headers: req.headers,
            body,
            sourceIp: req.socket.remoteAddress ?? "127.0.0.1",
          },
          requestId,
        );
      } catch (error) {
        options.log?.({ level: "error", msg: "gateway failure", error: String(error) });
        response = gatewayResponse(500, "Internal Server Error");
      }
    }
    const headers: http.OutgoingHttpHeaders = {
      ...response.headers,
      "apigw-requestid": requestId,
      "content-length": response.body.length,
    };
    if (response.cookies.length > 0) headers["set-cookie"] = response.cookies;
    res.writeHead(response.statusCode, headers);
    res.end(response.body);
    options.log?.({
      level: "info",
      msg: "http",
      method: req.method,
      path: req.url,
      status: response.statusCode,
      requestId,
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
