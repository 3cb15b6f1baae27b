/**
 * API Gateway events, REST (payload 1.0) and HTTP API (payload 2.0), reduced to what the dispatcher uses.
 * Structural types on purpose: lib/ does not depend on Lambda's type packages.
 */
export interface ApiGatewayEvent {
  readonly version?: string;
  /** v2 */
  readonly routeKey?: string;
  readonly rawPath?: string;
  /** v1 */
  readonly resource?: string;
  readonly path?: string;
  readonly httpMethod?: string;
  readonly headers?: Readonly<Record<string, string | undefined>> | null;
  readonly body?: string | null;
  /** Both payload versions; v2 joins a repeated name's values with commas. */
  readonly queryStringParameters?: Readonly<Record<string, string | undefined>> | null;
  readonly isBase64Encoded?: boolean;
  readonly requestContext?: {
    readonly requestId?: string;
    readonly stage?: string;
    readonly http?: { readonly method?: string; readonly path?: string };
    readonly authorizer?: {
      /** v2 JWT authorizer */
      readonly jwt?: { readonly claims?: unknown };
      /** v1 Cognito / JWT authorizer */
      readonly claims?: unknown;
    } | null;
  };
}

export interface ApiGatewayResult {
  statusCode: number;
  headers: Record<string, string>;
  body: string;
}

/** One request, whatever the payload version. */
export interface HttpRequest {
  readonly method: string;
  readonly path: string;
  /** Lower-cased names. */
  readonly headers: Readonly<Record<string, string>>;
  readonly claims: unknown;
  readonly correlationId: string;
  /** Query parameters as the gateway decoded them. */
  readonly query: Readonly<Record<string, string>>;
}

export function normalizeEvent(event: ApiGatewayEvent, correlationId: string): HttpRequest {
  const method = (event.requestContext?.http?.method ?? event.httpMethod ?? "").toUpperCase();
  let path = event.rawPath ?? event.requestContext?.http?.path ?? event.path ?? "";
  // An HTTP API on a named stage puts the stage in rawPath ("/prod/v1/..."); REST's `path` never has it.
  const stage = event.requestContext?.stage;
  if (event.rawPath !== undefined && stage && stage !== "$default" && path.startsWith(`/${stage}/`)) {
    path = path.slice(stage.length + 1);
  }
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(event.headers ?? {})) {
    if (typeof value === "string") headers[name.toLowerCase()] = value;
  }
  const authorizer = event.requestContext?.authorizer;
  const claims = authorizer?.jwt?.claims ?? authorizer?.claims;
  // fromEntries defines own properties: a parameter named __proto__ stays a parameter (and is refused).
  const query = Object.fromEntries(
    Object.entries(event.queryStringParameters ?? {}).filter(
      (entry): entry is [string, string] => typeof entry[1] === "string",
    ),
  );
  return { method, path, headers, claims, correlationId, query };
}

/** Request ids become snapshot correlation ids, whose alphabet is narrow (HTTP API ids end in "="). */
export function correlationIdFrom(requestId: string | undefined, fallback: () => string): string {
  const cleaned = (requestId ?? "").replace(/[^A-Za-z0-9_.:-]/g, "-").slice(0, 128);
  return cleaned.length > 0 ? cleaned : fallback();
}
