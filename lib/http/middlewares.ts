/**
 * The middy chain every HTTP function uses, in this order:
 *   securityHeaders -> errorResponses -> requestContext -> bodyLimit -> jsonBody -> identity -> handler
 * Byte cap before any parse, identity only from authorizer claims, and one place that turns errors into
 * responses (5xx bodies never carry internals; the real error is logged).
 */
import { randomUUID } from "node:crypto";
import type { Logger } from "@aws-lambda-powertools/logger";
import type { MiddlewareObj, Request } from "@middy/core";
import httpSecurityHeaders from "@middy/http-security-headers";
import type { Context } from "aws-lambda";
import { FIELD_LIMITS } from "../config.ts";
import { type Identity, identityFromClaims } from "../domain/identity.ts";
import type { DomainLogger } from "../domain/services.ts";
import {
  type AppError,
  BadRequestError,
  InternalError,
  isAppError,
  PayloadTooLargeError,
  UnsupportedMediaTypeError,
} from "../errors.ts";
import { METRIC, type MetricCounter } from "../metrics.ts";
import {
  type ApiGatewayEvent,
  type ApiGatewayResult,
  correlationIdFrom,
  type HttpRequest,
  normalizeEvent,
} from "./api-event.ts";

export interface AppLogger extends DomainLogger {
  info(message: string, fields?: Record<string, unknown>): void;
}

/** Per-request state the middlewares fill in, carried on the Lambda context. */
export interface HttpState {
  request: HttpRequest;
  /** The decoded body text (after the byte cap). */
  bodyText?: string;
  /** The parsed JSON body, for methods that carry one. */
  body?: unknown;
  identity?: Identity;
}

export type HttpContext = Context & { cth?: HttpState };
type HttpRequestObj = Request<ApiGatewayEvent, ApiGatewayResult, Error, HttpContext>;
type HttpMiddleware = MiddlewareObj<ApiGatewayEvent, ApiGatewayResult, Error, HttpContext>;

export function stateOf(context: HttpContext): HttpState {
  if (!context.cth) throw new InternalError("request context middleware did not run");
  return context.cth;
}

/**
 * The headers @middy/http-security-headers computes (helmet's rules), narrowed to what a JSON API needs and
 * taken once, in lowercase: every other header of ours is lowercase (json(), the tests, the local gateway),
 * and middy writes Title-Case names. Applied per response by one Object.assign; middy has no `cache-control`.
 */
const SECURITY_HEADERS: Readonly<Record<string, string>> = (() => {
  const middleware = httpSecurityHeaders({
    // `false` drops one of middy's default directives (its type admits strings only; "" would keep sandbox).
    contentSecurityPolicy: {
      "default-src": "'none'",
      "frame-ancestors": "'none'",
      "base-uri": false,
      sandbox: false,
      "form-action": false,
      "report-to": false,
      "require-trusted-types-for": false,
      "upgrade-insecure-requests": false,
    } as Record<string, string | false> as Record<string, string>,
    contentTypeOptions: { action: "nosniff" },
    frameOptions: { action: "deny" },
    referrerPolicy: { policy: "no-referrer" },
    // No `preload`: that is a commitment of the operator's whole domain, not this API's to make.
    strictTransportSecurity: { maxAge: 63072000, includeSubDomains: true, preload: false },
    crossOriginEmbedderPolicy: false,
    crossOriginOpenerPolicy: false,
    crossOriginResourcePolicy: false,
    dnsPrefetchControl: false,
    downloadOptions: false,
    originAgentCluster: false,
    permissionsPolicy: false,
    permittedCrossDomainPolicies: false,
    reportTo: false,
    reportingEndpoints: false,
    xssProtection: false,
  });
  const probe = { response: { statusCode: 200, headers: {} as Record<string, string> } };
  (middleware.after as (request: unknown) => void)(probe);
  return Object.fromEntries([
    ["cache-control", "no-store"],
    ...Object.entries(probe.response.headers).map(([name, value]) => [name.toLowerCase(), value]),
  ]);
})();

export function securityHeaders(): HttpMiddleware {
  const apply = (request: HttpRequestObj) => {
    if (!request.response) return;
    const correlationId = request.context.cth?.request.correlationId;
    request.response.headers = {
      ...request.response.headers,
      ...SECURITY_HEADERS,
      ...(correlationId ? { "x-correlation-id": correlationId } : {}),
    };
  };
  return { name: "securityHeaders", after: apply, onError: apply };
}

export function json(
  statusCode: number,
  body: unknown,
  headers: Record<string, string> = {},
): ApiGatewayResult {
  return {
    statusCode,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
    body: body === undefined ? "" : JSON.stringify(body),
  };
}

const GENERIC_MESSAGES: Readonly<Record<number, string>> = {
  500: "internal error",
  503: "service temporarily unavailable; retry later",
};

function errorBody(error: AppError): { code: string; message: string; details?: unknown } {
  if (!error.expose) return { code: error.code, message: GENERIC_MESSAGES[error.status] ?? "request failed" };
  const message = error.message.slice(0, FIELD_LIMITS.errorMessage);
  return error.details === undefined
    ? { code: error.code, message }
    : { code: error.code, message, details: error.details };
}

/** The one error-to-response mapping. Unknown errors are 500 with a generic body. Every error response is
 * counted as RejectedRequests by its code (the HTTP API's 5xx alarm sees the 5xx ones too). */
export function errorResponses(logger: AppLogger, metrics?: MetricCounter): HttpMiddleware {
  return {
    name: "errorResponses",
    onError: (request) => {
      const raw = request.error;
      const error = isAppError(raw) ? raw : new InternalError("unexpected error", undefined, { cause: raw });
      const correlationId = request.context.cth?.request.correlationId;
      if (error.status >= 500) {
        // correlation_id: the field name every log line of the invocation has (lib/production.ts correlate).
        logger.error("request failed", {
          correlation_id: correlationId,
          status: error.status,
          error:
            raw instanceof Error ? { name: raw.name, message: raw.message, stack: raw.stack } : String(raw),
          cause: raw instanceof Error && raw.cause instanceof Error ? raw.cause.message : undefined,
        });
      } else {
        logger.info("request rejected", {
          correlation_id: correlationId,
          status: error.status,
          code: error.code,
        });
      }
      metrics?.count(METRIC.rejectedRequests, { ErrorCode: error.code });
      request.response = json(
        error.status,
        { error: errorBody(error) },
        { ...(error.status === 503 ? { "retry-after": "1" } : {}), ...error.headers },
      );
    },
  };
}

/** `logger`: the correlation id goes into every later log line of the invocation (`correlation_id`). */
export function requestContext(logger?: Pick<Logger, "setCorrelationId">): HttpMiddleware {
  return {
    name: "requestContext",
    before: (request) => {
      const correlationId = correlationIdFrom(
        request.event.requestContext?.requestId ?? request.context.awsRequestId,
        randomUUID,
      );
      logger?.setCorrelationId(correlationId);
      request.context.cth = { request: normalizeEvent(request.event, correlationId) };
    },
  };
}

/** Exact decoded size of a base64 string, computed without decoding it. */
export function base64DecodedLength(text: string): number {
  const trimmed = text.replace(/\s/g, "");
  const padding = trimmed.endsWith("==") ? 2 : trimmed.endsWith("=") ? 1 : 0;
  return Math.floor((trimmed.length * 3) / 4) - padding;
}

/** 413 before anything parses the body; base64 bodies are measured decoded. */
export function bodyLimit(maxBytes: number): HttpMiddleware {
  return {
    name: "bodyLimit",
    before: (request) => {
      const state = stateOf(request.context);
      const raw = request.event.body;
      if (raw === undefined || raw === null || raw === "") return;
      const base64 = request.event.isBase64Encoded === true;
      const size = base64 ? base64DecodedLength(raw) : Buffer.byteLength(raw, "utf8");
      if (size > maxBytes) {
        throw new PayloadTooLargeError(`request body is ${size} bytes; the limit is ${maxBytes}`);
      }
      if (base64 && !/^[A-Za-z0-9+/]*={0,2}$/.test(raw.replace(/\s/g, ""))) {
        throw new BadRequestError("request body is not valid base64");
      }
      state.bodyText = base64 ? Buffer.from(raw, "base64").toString("utf8") : raw;
    },
  };
}

/** Parses JSON bodies of POST and PUT; other methods must not carry one. */
export function jsonBody(): HttpMiddleware {
  return {
    name: "jsonBody",
    before: (request) => {
      const state = stateOf(request.context);
      const { method, headers } = state.request;
      if (method !== "POST" && method !== "PUT") return;
      const contentType = (headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
      if (contentType !== "application/json") {
        throw new UnsupportedMediaTypeError("the request body must be application/json");
      }
      if (state.bodyText === undefined) throw new BadRequestError("a JSON request body is required");
      try {
        state.body = JSON.parse(state.bodyText) as unknown;
      } catch {
        throw new BadRequestError("the request body is not valid JSON");
      }
    },
  };
}

/** 401 unless the authorizer handed over usable claims (HTTP API v2 or REST v1 layout). */
export function identity(): HttpMiddleware {
  return {
    name: "identity",
    before: (request) => {
      const state = stateOf(request.context);
      state.identity = identityFromClaims(state.request.claims);
    },
  };
}

/** Adapts Powertools' Logger (structured JSON, one line per entry) to the small logging port. */
export function appLogger(logger: Logger): AppLogger {
  const emit =
    (level: "info" | "warn" | "error") =>
    (message: string, fields?: Record<string, unknown>): void => {
      if (fields) logger[level](message, fields);
      else logger[level](message);
    };
  return { info: emit("info"), warn: emit("warn"), error: emit("error") };
}
