/**
 * The OpenAPI 3.1 document of the HTTP API, built from the route table (lib/http/routes.ts) and the zod
 * schemas: nothing here restates a field. scripts/openapi.ts writes it to openapi.json (and the README's
 * route table); test/unit/openapi.test.ts fails when either is stale and sends every example to the real
 * handler. The local stack serves the committed file (scripts/local/stack.ts).
 */
import * as z from "zod/mini";
import { FIELD_LIMITS } from "../config.ts";
import { ADMIN_SCOPE, SERVICE_SCOPE } from "../domain/identity.ts";
import * as api from "../schemas/api.ts";
import type { Schemas } from "../schemas/index.ts";
import { uuid } from "../schemas/primitives.ts";
import { type RequestHeader, ROUTES, type RouteId, type RouteSpec, routeKey } from "./routes.ts";

type Json = Record<string, unknown>;

/** One request the document shows and the tests send to the real handler, with the answer it gets. */
export interface RouteExample {
  readonly summary: string;
  /** Whose token sends it: an admin for admin routes, a member of EXAMPLE_PROJECT otherwise, unless said. */
  readonly caller?: "admin" | "service" | "member";
  readonly routerId?: string;
  readonly query?: Readonly<Record<string, string>>;
  readonly headers?: Partial<Readonly<Record<RequestHeader, string>>>;
  readonly body?: unknown;
  readonly status: number;
  /** The response body; absent for an empty one (204). */
  readonly response?: unknown;
}

export interface RouteDoc {
  readonly description: string;
  /** Sent in this order, after the examples of the routes before it in ROUTES_IN_SESSION. */
  readonly examples: Readonly<Record<string, RouteExample>>;
}

export const EXAMPLE_ROUTER = "5eed0c1e-7a1b-4c2d-8e3f-0123456789ab";
export const EXAMPLE_PROJECT = "demo";
const UNKNOWN_ROUTER = "00000000-0000-4000-8000-000000000000";
const FTP = "f7c0a2b4-1d3e-4f50-8a6b-7c8d9e0f1a2b";
const TFTP = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const BINDINGS = [
  { host: "net-1", namespace: "qrouter" },
  { host: "net-2", namespace: "qrouter" },
] as const;
const PENDING_REPLICA = {
  namespace: "qrouter",
  applied_revision: 0,
  in_sync: false,
  applied_errors: [],
} as const;

/**
 * What each route means beyond its summary, and its examples. Typed by RouteId: a route without a doc does
 * not compile. The examples form one session on an empty store (the order of ROUTES_IN_SESSION).
 */
export const ROUTE_DOCS: Readonly<Record<RouteId, RouteDoc>> = {
  putRouter: {
    description:
      "`bindings` (1..8 unique hosts, `qrouter` or `snat`) or the single-host form `host` (one `qrouter` " +
      "binding). `201` registered, `200` changed; `host` in the answer is the first binding's.",
    examples: {
      register: {
        summary: "register an HA router on two network nodes",
        routerId: EXAMPLE_ROUTER,
        body: { project_id: EXAMPLE_PROJECT, bindings: BINDINGS },
        status: 201,
        response: {
          router_id: EXAMPLE_ROUTER,
          project_id: EXAMPLE_PROJECT,
          host: "net-1",
          bindings: BINDINGS,
          revision: 0,
        },
      },
      stale: {
        summary: "a change whose If-Match names a state the router is no longer in",
        routerId: EXAMPLE_ROUTER,
        headers: { "If-Match": '"r0-0000000000000000"' },
        body: { project_id: EXAMPLE_PROJECT, host: "net-1" },
        status: 412,
        response: {
          error: {
            code: "precondition_failed",
            message: "the router changed since the ETag in If-Match was read",
          },
        },
      },
    },
  },
  submitNotification: {
    description:
      "`created` inserts (an identical re-create is a no-op, the same id with other fields is 409); " +
      "`updated` needs the helper to exist (else 404); `deleted` removes it if present (idempotent). A " +
      "second helper on the same (protocol, port) of a router is 409. Applied whole or " +
      "not at all across every router it names. A retry with the same `Idempotency-Key` (same caller, same " +
      "body) replays the first answer.",
    examples: {
      native: {
        summary: "attach the ftp helper to TCP port 21 (native body)",
        headers: { "Idempotency-Key": "neutron-req-6f1c" },
        body: {
          event: "created",
          conntrack_helpers: [
            { id: FTP, router_id: EXAMPLE_ROUTER, protocol: "tcp", port: 21, helper: "ftp" },
          ],
        },
        status: 202,
        response: { routers: [{ router_id: EXAMPLE_ROUTER, revision: 1 }] },
      },
      neutron: {
        summary: "attach tftp to UDP port 69 (Neutron's push payload)",
        body: {
          event_type: "created",
          resource_list: [
            {
              "versioned_object.name": "ConntrackHelper",
              "versioned_object.namespace": "versionedobjects",
              "versioned_object.version": "1.0",
              "versioned_object.data": {
                id: TFTP,
                router_id: EXAMPLE_ROUTER,
                protocol: "udp",
                port: 69,
                helper: "tftp",
                project_id: EXAMPLE_PROJECT,
              },
            },
          ],
        },
        status: 202,
        response: { routers: [{ router_id: EXAMPLE_ROUTER, revision: 2 }] },
      },
      unknownHelper: {
        summary: "a helper the catalog does not have: 422, each bad field by its path",
        body: {
          event: "created",
          conntrack_helpers: [
            { id: TFTP, router_id: EXAMPLE_ROUTER, protocol: "tcp", port: 8080, helper: "http" },
          ],
        },
        status: 422,
        response: {
          error: {
            code: "validation_failed",
            message: "invalid notification",
            details: [
              {
                path: "conntrack_helpers.0.helper",
                message:
                  'helper "http" is not available for tcp (allowed: ftp, tftp, sip, sane, amanda, RAS, Q.931, ' +
                  "irc, pptp, netbios-ns, snmp)",
              },
            ],
          },
        },
      },
    },
  },
  getRouterHelpers: {
    description:
      "`replicas` has one entry per binding, `draining` the hosts still to confirm a removal; " +
      "`applied_revision`, `applied_errors` and `applied_at` are the replica furthest behind's.",
    examples: {
      pending: {
        summary: "two helpers, not yet applied by either host (a member does not see host names)",
        routerId: EXAMPLE_ROUTER,
        status: 200,
        response: {
          router_id: EXAMPLE_ROUTER,
          revision: 2,
          applied_revision: 0,
          in_sync: false,
          helpers: [
            { id: FTP, protocol: "tcp", port: 21, helper: "ftp" },
            { id: TFTP, protocol: "udp", port: 69, helper: "tftp" },
          ],
          applied_errors: [],
          replicas: [PENDING_REPLICA, PENDING_REPLICA],
          draining: [],
        },
      },
    },
  },
  getRouter: {
    description: "Unknown and foreign routers get the same 404.",
    examples: {
      router: {
        summary: "the HA router, as an operator (admin) reads it",
        caller: "admin",
        routerId: EXAMPLE_ROUTER,
        status: 200,
        response: {
          router_id: EXAMPLE_ROUTER,
          project_id: EXAMPLE_PROJECT,
          host: "net-1",
          bindings: BINDINGS,
          revision: 2,
          in_sync: false,
        },
      },
    },
  },
  listRouters: {
    description:
      "Pages are ordered by router id; `next_cursor` is null on the last page. A member lists only its " +
      "own project's routers.",
    examples: {
      outOfSync: {
        summary: "an operator (admin) lists the routers some host has not confirmed",
        caller: "admin",
        query: { in_sync: "false", limit: "10" },
        status: 200,
        response: {
          routers: [
            {
              router_id: EXAMPLE_ROUTER,
              project_id: EXAMPLE_PROJECT,
              host: "net-1",
              bindings: BINDINGS,
              revision: 2,
              in_sync: false,
            },
          ],
          next_cursor: null,
        },
      },
    },
  },
  deleteRouter: {
    description:
      "Removes the router and, through an empty snapshot sent after the deletion committed, its rules. A " +
      "retried DELETE before every host confirmed that snapshot re-sends it (`204`); after that it is a 404.",
    examples: {
      remove: { summary: "delete the HA router", routerId: EXAMPLE_ROUTER, status: 204 },
      gone: {
        summary: "a router that does not exist (another project's gets the same answer)",
        routerId: UNKNOWN_ROUTER,
        status: 404,
        response: { error: { code: "not_found", message: `router ${UNKNOWN_ROUTER} not found` } },
      },
    },
  },
};

/** The order the examples are sent in: a router must exist before it is read or deleted. */
export const ROUTES_IN_SESSION: readonly RouteId[] = [
  "putRouter",
  "submitNotification",
  "getRouterHelpers",
  "getRouter",
  "listRouters",
  "deleteRouter",
];

const toJsonSchema = (schema: z.ZodMiniType, io: "input" | "output"): Json => {
  const { $schema: _, ...rest } = z.toJSONSchema(schema, {
    target: "draft-2020-12",
    io,
    unrepresentable: "any",
  }) as Json;
  return rest;
};

const pascal = (name: string): string => name[0]!.toUpperCase() + name.slice(1);

const ERROR_REF = { $ref: "#/components/schemas/ErrorBody" };
const GATEWAY_REF = { $ref: "#/components/schemas/GatewayMessage" };
const header = (name: string) => ({ $ref: `#/components/headers/${name}` });

/** Why each error status can answer; which routes it applies to is decided by errorStatuses. */
const ERRORS: Readonly<Record<number, string>> = {
  400: "malformed JSON, a bad Idempotency-Key or a bad query parameter",
  401: "no valid bearer token (the gateway's JWT authorizer, or the handler)",
  403: "the token lacks a required scope or the caller may not touch this project",
  404: "no such router (unknown and foreign routers are the same 404), or no such helper",
  409: "a conflicting change, or an Idempotency-Key reused with another body or still in progress",
  412: "If-Match does not admit the router's current state; the answer carries the current ETag",
  413: "the body is larger than the deployment's maxBodyBytes",
  415: "the body is not application/json",
  422: "a field failed validation: `details` lists each path",
  429: "throttled by the gateway (its own body)",
  503: "a dependency is unavailable or a write kept losing races; nothing half-done, retrying is safe",
};

/** The error statuses a route can answer, derived from what it takes. */
export function errorStatuses(route: RouteSpec): number[] {
  const hasBody = route.body !== undefined;
  const takesRouter = route.path.includes("{router_id}");
  const statuses = [401, 403, 429, 503];
  if (hasBody || route.query || route.headers?.includes("Idempotency-Key")) statuses.push(400);
  if (takesRouter || route.method === "POST") statuses.push(404);
  if (route.method === "POST") statuses.push(409);
  if (route.headers?.includes("If-Match")) statuses.push(412);
  if (hasBody) statuses.push(413, 415);
  if (hasBody || takesRouter || route.query) statuses.push(422);
  return statuses.sort((a, b) => a - b);
}

function errorResponse(status: number): Json {
  const schema = status === 429 ? GATEWAY_REF : status === 401 || status === 403 ? undefined : ERROR_REF;
  return {
    description: ERRORS[status],
    headers: {
      "X-Correlation-Id": header("X-Correlation-Id"),
      ...(status === 503 ? { "Retry-After": header("Retry-After") } : {}),
      ...(status === 412 ? { ETag: header("ETag") } : {}),
    },
    content: {
      "application/json": { schema: schema ?? { oneOf: [ERROR_REF, GATEWAY_REF] } },
    },
  };
}

function withExamples(response: Json, examples: Json): Json {
  const content = response.content as Record<string, Json>;
  return { ...response, content: { "application/json": { ...content["application/json"], examples } } };
}

export interface OpenApiOptions {
  /** Wire schemas for the limits and catalog the document describes (buildSchemas). */
  readonly schemas: Schemas;
  /** package.json's version. */
  readonly version: string;
}

/** The OpenAPI 3.1 document for `schemas`; pure, so the committed openapi.json can be compared with it. */
export function buildOpenApi({ schemas, version }: OpenApiOptions): Json {
  const components: Record<string, Json> = {};
  const names = new Map<z.ZodMiniType, string>();
  for (const [name, schema] of Object.entries({ ...api, ...schemas }))
    if (schema instanceof z.ZodMiniType) names.set(schema, pascal(name));

  /** A named schema becomes a component and a $ref; a union becomes oneOf its (named) options. */
  const ref = (schema: z.ZodMiniType, io: "input" | "output"): Json => {
    if (schema instanceof z.ZodMiniUnion)
      return { oneOf: (schema.def.options as z.ZodMiniType[]).map((option) => ref(option, io)) };
    const name = names.get(schema);
    if (name === undefined) return toJsonSchema(schema, io);
    components[name] ??= toJsonSchema(schema, io);
    return { $ref: `#/components/schemas/${name}` };
  };
  components.ErrorBody = toJsonSchema(api.errorBody, "output");

  const paths: Record<string, Record<string, Json>> = {};
  for (const route of ROUTES) {
    const doc = ROUTE_DOCS[route.id];
    const examples = Object.entries(doc.examples);
    const exampleValues = (pick: (example: RouteExample) => unknown, when = (_: RouteExample) => true) =>
      Object.fromEntries(
        examples
          .filter(([, example]) => pick(example) !== undefined && when(example))
          .map(([name, example]) => [name, { summary: example.summary, value: pick(example) }]),
      );
    const parameters: Json[] = [];
    if (route.path.includes("{router_id}")) {
      parameters.push({ $ref: "#/components/parameters/RouterId" });
    }
    for (const [name, schema] of Object.entries(route.query?.schema.shape ?? {})) {
      parameters.push({
        name,
        in: "query",
        required: false,
        description: route.query!.descriptions[name],
        schema: toJsonSchema(schema as z.ZodMiniType, "input"),
      });
    }
    for (const name of route.headers ?? []) parameters.push({ $ref: `#/components/parameters/${name}` });

    const responses: Record<string, Json> = {};
    for (const [status, response] of Object.entries(route.responses)) {
      const examplesHere = exampleValues(
        (example) => example.response,
        (example) => String(example.status) === status,
      );
      responses[status] = {
        description: response.description,
        headers: Object.fromEntries(
          ["X-Correlation-Id", ...(response.headers ?? [])].map((name) => [name, header(name)]),
        ),
        ...(response.body
          ? {
              content: {
                "application/json": {
                  schema: ref(response.body, "output"),
                  ...(Object.keys(examplesHere).length > 0 ? { examples: examplesHere } : {}),
                },
              },
            }
          : {}),
      };
    }
    for (const status of errorStatuses(route)) {
      const examplesHere = exampleValues(
        (example) => example.response,
        (example) => example.status === status,
      );
      // A status with examples of its own is written out; the others share the component.
      responses[status] =
        Object.keys(examplesHere).length === 0
          ? { $ref: `#/components/responses/E${status}` }
          : withExamples(errorResponse(status), examplesHere);
    }

    const operation: Json = {
      operationId: route.id,
      summary: route.summary,
      description: doc.description,
      security: [{ jwt: [...route.scopes] }],
      ...(parameters.length > 0 ? { parameters } : {}),
      ...(route.body
        ? {
            requestBody: {
              required: true,
              content: {
                "application/json": {
                  schema: ref(route.body(schemas), "input"),
                  // Only the accepted ones: a refused request is shown by its answer.
                  examples: exampleValues(
                    (example) => example.body,
                    (example) => example.status < 400,
                  ),
                },
              },
            },
          }
        : {}),
      responses,
    };
    paths[route.path] ??= {};
    paths[route.path]![route.method.toLowerCase()] = operation;
  }

  components.GatewayMessage = {
    type: "object",
    description: "API Gateway's own answer (authorizer refusals, throttling)",
    properties: { message: { type: "string" } },
    required: ["message"],
  };
  return {
    openapi: "3.1.0",
    info: {
      title: "conntrack-helper-dispatcher",
      version,
      description:
        "Validates conntrack helper notifications and dispatches them to the network nodes' agents. " +
        "Every route needs a bearer JWT; errors have one shape (ErrorBody).",
    },
    servers: [
      {
        url: "https://{api_id}.execute-api.{region}.amazonaws.com",
        description: "the deployed HTTP API (serverless.yml)",
        variables: { api_id: { default: "api-id" }, region: { default: "eu-west-1" } },
      },
      { url: "http://127.0.0.1:3000", description: "the local stack (npm start)" },
    ],
    security: [{ jwt: [] }],
    paths,
    components: {
      securitySchemes: {
        jwt: {
          type: "http",
          scheme: "bearer",
          bearerFormat: "JWT",
          description:
            `The caller's project is the \`project_id\` claim. Scopes (in \`scope\`): \`${ADMIN_SCOPE}\` ` +
            `registers and deletes routers and acts on any project; \`${SERVICE_SCOPE}\` submits and reads ` +
            "for any project (a control plane). Without either, a token acts on its own project only.",
        },
      },
      schemas: Object.fromEntries(Object.entries(components).sort(([a], [b]) => a.localeCompare(b))),
      parameters: {
        RouterId: {
          name: "router_id",
          in: "path",
          required: true,
          description: "the router's id, a lowercase UUID",
          schema: toJsonSchema(uuid, "input"),
          example: EXAMPLE_ROUTER,
        },
        "Idempotency-Key": {
          name: "Idempotency-Key",
          in: "header",
          required: false,
          description:
            "The same caller retrying with the same key and body gets the first answer and changes nothing",
          schema: { type: "string", pattern: `^[A-Za-z0-9_.:-]{1,${FIELD_LIMITS.idempotencyKey}}$` },
        },
        "If-Match": {
          name: "If-Match",
          in: "header",
          required: false,
          description:
            "`*` or a list of ETags as last read (strong comparison): the change is refused with 412, which " +
            "carries the current ETag, if the router moved since. On POST only for a single-router notification",
          schema: { type: "string" },
        },
      },
      headers: {
        ETag: {
          description:
            'The router\'s desired state (project, bindings, helpers) at its revision, `"r<revision>-<16 hex>"`; ' +
            "applied status is not part of it",
          schema: { type: "string", pattern: '^"r[0-9]+-[0-9a-f]{16}"$' },
        },
        "Retry-After": { description: "seconds to wait before retrying", schema: { type: "string" } },
        "X-Correlation-Id": {
          description: "the request's correlation id (also in the logs and the queued snapshots)",
          schema: { type: "string" },
        },
      },
      responses: Object.fromEntries(
        Object.keys(ERRORS).map((status) => [`E${status}`, errorResponse(Number(status))]),
      ),
    },
  };
}

const README_COLUMNS = "| method and path | scope | what | success | errors |\n|---|---|---|---|---|";

/** The README's HTTP API table, from the document (between `<!-- openapi:routes -->` markers). */
export function readmeRoutesTable(doc: Json): string {
  const rows: string[] = [];
  const paths = doc.paths as Record<string, Record<string, Json>>;
  for (const route of ROUTES) {
    const operation = paths[route.path]![route.method.toLowerCase()]!;
    const statuses = Object.keys(operation.responses as Json);
    const security = operation.security as { jwt: string[] }[];
    const scope =
      security[0]!.jwt.map((s) => `\`${s}\``).join(", ") || `owner, \`${SERVICE_SCOPE}\`, \`${ADMIN_SCOPE}\``;
    const cell = (text: string) => text.replaceAll("|", "\\|");
    rows.push(
      `| \`${routeKey(route)}\` | ${scope} | ${cell(`${route.summary}. ${String(operation.description)}`)} | ` +
        `${statuses.filter((s) => Number(s) < 400).join(", ")} | ${statuses.filter((s) => Number(s) >= 400).join(", ")} |`,
    );
  }
  return `${README_COLUMNS}\n${rows.join("\n")}`;
}

export const README_MARKERS = ["<!-- openapi:routes -->", "<!-- /openapi:routes -->"] as const;

/** `readme` with the text between the markers replaced by `table`; throws if the markers are missing. */
export function withReadmeTable(readme: string, table: string): string {
  const [open, close] = README_MARKERS;
  const start = readme.indexOf(open);
  const end = readme.indexOf(close);
  if (start < 0 || end < start) throw new Error(`README.md lacks the ${open} ... ${close} markers`);
  return `${readme.slice(0, start + open.length)}\n${table}\n${readme.slice(end)}`;
}
