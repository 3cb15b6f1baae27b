/**
 * Lambda events built from the recorded fixtures (test/fixtures/aws-events): the real envelopes with this
 * project's bodies and claims put inside.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Context } from "aws-lambda";
import type { ApiGatewayEvent } from "../../lib/http/api-event.ts";

const fixture = (name: string): Record<string, unknown> =>
  JSON.parse(readFileSync(new URL(`../fixtures/aws-events/${name}`, import.meta.url), "utf8")) as Record<
    string,
    unknown
  >;

/** The fixtures are edited in place after a deep copy; their nested shape is checked by the handlers. */
// biome-ignore lint/suspicious/noExplicitAny: fixture JSON is edited field by field
type Editable = Record<string, any>;

const HTTP_API = fixture("apigw-http-jwt.json");
const REST_API = fixture("apigw-rest-jwt.json");
const EVENT_BRIDGE = fixture("eventbridge-envelope.json");

export type Claims = Record<string, unknown> | undefined;

export interface HttpCall {
  readonly method: string;
  readonly path: string;
  /** An object is sent as JSON; a string is sent as is. */
  readonly body?: unknown;
  readonly headers?: Record<string, string>;
  /** undefined: no authorizer claims at all. */
  readonly claims?: Claims;
  readonly base64?: boolean;
}

/**
 * Claims as API Gateway's HTTP API hands them over: every value a string (arrays as "[a b]"). Powers
 * ("admin", "service") go into the `scope` string as `cth:admin`, `cth:service` (lib/domain/identity.ts).
 */
export function httpApiClaims(projectId: string, roles: readonly string[] = []): Record<string, string> {
  return {
    sub: randomUUID(),
    iss: "https://keystone.example/v3",
    project_id: projectId,
    ...(roles.length > 0 ? { scope: roles.map((role) => `cth:${role}`).join(" ") } : {}),
  };
}

function bodyOf(call: HttpCall): string | null {
  if (call.body === undefined) return null;
  const text = typeof call.body === "string" ? call.body : JSON.stringify(call.body);
  return call.base64 ? Buffer.from(text, "utf8").toString("base64") : text;
}

const contentType = (call: HttpCall): Record<string, string> =>
  call.body === undefined ? {} : { "content-type": "application/json" };

/** API Gateway HTTP API, payload format 2.0, JWT authorizer. */
export function httpApiEvent(call: HttpCall): ApiGatewayEvent {
  const event = structuredClone(HTTP_API) as Editable;
  event.routeKey = "$default";
  event.rawPath = call.path;
  event.headers = { ...event.headers, ...contentType(call), ...call.headers };
  delete event.headers["content-length"];
  event.body = bodyOf(call);
  event.isBase64Encoded = call.base64 === true;
  event.requestContext.http = { ...event.requestContext.http, method: call.method, path: call.path };
  event.requestContext.routeKey = "$default";
  event.requestContext.requestId = `${randomUUID().slice(0, 14)}=`;
  if (call.claims === undefined) delete event.requestContext.authorizer;
  else event.requestContext.authorizer = { jwt: { claims: call.claims, scopes: null } };
  return event as ApiGatewayEvent;
}

/** An event with a query string, as each payload version carries one. */
export function withQuery(event: ApiGatewayEvent, query: Readonly<Record<string, string>>): ApiGatewayEvent {
  return {
    ...event,
    queryStringParameters: Object.keys(query).length > 0 ? { ...query } : null,
    ...(event.rawPath !== undefined ? { rawQueryString: new URLSearchParams(query).toString() } : {}),
  } as ApiGatewayEvent;
}

/** API Gateway REST API, payload format 1.0, Cognito/JWT authorizer (claims under authorizer.claims). */
export function restApiEvent(call: HttpCall): ApiGatewayEvent {
  const event = structuredClone(REST_API) as Editable;
  const headers: Record<string, string> = {
    ...event.headers,
    ...(call.body === undefined ? {} : { "Content-Type": "application/json" }),
    ...call.headers,
  };
  event.resource = call.path.replace(/^\/v1\/routers\/[^/]+/, "/v1/routers/{router_id}");
  event.path = call.path;
  event.httpMethod = call.method;
  event.headers = headers;
  event.multiValueHeaders = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, [v]]));
  event.body = bodyOf(call);
  event.isBase64Encoded = call.base64 === true;
  event.requestContext.httpMethod = call.method;
  event.requestContext.resourcePath = event.resource;
  event.requestContext.path = `/prod${call.path}`;
  event.requestContext.requestId = randomUUID();
  if (call.claims === undefined) delete event.requestContext.authorizer;
  else event.requestContext.authorizer = { claims: call.claims };
  return event as ApiGatewayEvent;
}

export interface EventBridgeEvent {
  readonly version: string;
  readonly id: string;
  readonly "detail-type": string;
  readonly source: string;
  readonly account: string;
  readonly time: string;
  readonly region: string;
  readonly resources: string[];
  readonly detail: unknown;
}

export function eventBridgeEvent(
  detailType: string,
  detail: unknown,
  overrides: Partial<EventBridgeEvent> = {},
): EventBridgeEvent {
  const envelope = structuredClone(EVENT_BRIDGE) as unknown as EventBridgeEvent;
  return {
    ...envelope,
    id: randomUUID(),
    source: "conntrack.helpers",
    "detail-type": detailType,
    resources: [],
    detail,
    ...overrides,
  };
}

export function lambdaContext(): Context {
  return {
    callbackWaitsForEmptyEventLoop: false,
    functionName: "cth-test",
    functionVersion: "$LATEST",
    invokedFunctionArn: "arn:aws:lambda:us-east-1:000000000000:function:cth-test",
    memoryLimitInMB: "256",
    awsRequestId: randomUUID(),
    logGroupName: "/aws/lambda/cth-test",
    logStreamName: "test",
    getRemainingTimeInMillis: () => 30_000,
    done: () => undefined,
    fail: () => undefined,
    succeed: () => undefined,
  };
}

/** A logger that keeps what it was told, for assertions on logs and parked events. */
export class RecordingLogger {
  readonly entries: { level: string; message: string; fields?: Record<string, unknown> | undefined }[] = [];
  info(message: string, fields?: Record<string, unknown>): void {
    this.entries.push({ level: "info", message, fields });
  }
  warn(message: string, fields?: Record<string, unknown>): void {
    this.entries.push({ level: "warn", message, fields });
  }
  error(message: string, fields?: Record<string, unknown>): void {
    this.entries.push({ level: "error", message, fields });
  }
}
