/**
 * openapi.json: fresh (equal to what lib/http/openapi.ts builds from the route table and the zod schemas),
 * valid OpenAPI 3.1 for an independent validator, every example true of the real handler (functions/http.ts
 * on the in-memory store and queue), serverless.yml's http events and the README's route table derived from it.
 */
// cspell:ignore seriousme
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { Validator } from "@seriousme/openapi-schema-validator";
import { beforeAll, describe, expect, it } from "vitest";
import { makeHandler } from "../../functions/http.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import type { ApiGatewayResult } from "../../lib/http/api-event.ts";
import {
  buildOpenApi,
  EXAMPLE_PROJECT,
  errorStatuses,
  README_MARKERS,
  ROUTE_DOCS,
  ROUTES_IN_SESSION,
  readmeRoutesTable,
  withReadmeTable,
} from "../../lib/http/openapi.ts";
import { ROUTES, type RouteSpec, routeKey } from "../../lib/http/routes.ts";
import * as api from "../../lib/schemas/api.ts";
import { buildSchemas } from "../../lib/schemas/index.ts";
import { defaultOpenApi } from "../../scripts/openapi.ts";
import { httpApiClaims, httpApiEvent, lambdaContext, RecordingLogger, withQuery } from "../support/events.ts";
import { fixedClock } from "../support/factories.ts";
import { MemoryCommandQueue, MemoryRoutersStore } from "../support/memory.ts";

const root = new URL("../../", import.meta.url);
const require = createRequire(import.meta.url);
const committed = readFileSync(new URL("openapi.json", root), "utf8");
const schemas = buildSchemas(DEFAULT_LIMITS, new HelperCatalog());
type Json = Record<string, unknown>;
type Operation = { security: { jwt: string[] }[]; responses: Record<string, Json> } & Json;
const doc = JSON.parse(committed) as { paths: Record<string, Record<string, Operation>> } & Json;
const operation = (route: RouteSpec) => doc.paths[route.path]![route.method.toLowerCase()]!;
/** The document's response for a status, through its component when it is a $ref. */
function documentedResponse(route: RouteSpec, status: number): { headers: Json } {
  const response = operation(route).responses[status] as { $ref?: string; headers: Json };
  if (response.$ref === undefined) return response;
  const components = doc.components as { responses: Record<string, { headers: Json }> };
  return components.responses[response.$ref.split("/").at(-1)!]!;
}
/** The zod schema of a status's body: the route's for a success, the one error shape otherwise. */
const responseSchema = (route: RouteSpec, status: number) =>
  status >= 400 ? api.errorBody : route.responses[status]!.body;

/** functions/http.ts on a fresh in-memory store and queue. */
function handlerOnMemory() {
  const logger = new RecordingLogger();
  return makeHandler({
    domain: {
      store: new MemoryRoutersStore(),
      queue: new MemoryCommandQueue(),
      clock: fixedClock(),
      limits: DEFAULT_LIMITS,
      log: logger,
    },
    schemas,
    logger,
    idempotency: undefined,
  });
}

describe("openapi.json", () => {
  it("is what the route table and the schemas build (else: run npm run -s openapi)", () => {
    // Compared as data: the committed file is Biome-formatted (scripts/openapi.ts).
    expect(doc, "openapi.json is stale: run npm run -s openapi").toEqual(defaultOpenApi());
  });

  it("is valid OpenAPI 3.1 for an independent validator", async () => {
    const validator = new Validator();
    const result = await validator.validate(structuredClone(doc));
    expect(result.errors).toBeUndefined();
    expect(result.valid).toBe(true);
    expect(validator.version).toBe("3.1");
    // The validator is not blind: a document with an operation missing its responses is refused.
    const broken = structuredClone(doc);
    broken.paths["/v1/notifications"]!.post!.parameters = [{ name: "x" }];
    expect((await new Validator().validate(broken)).valid).toBe(false);
  });

  it("has every route once, operationId = route id, its scopes and its error statuses", () => {
    const operations = Object.entries(doc.paths).flatMap(([path, ops]) =>
      Object.entries(ops).map(([method, op]) => ({ key: `${method.toUpperCase()} ${path}`, op })),
    );
    expect(operations.map(({ key }) => key).sort()).toEqual(ROUTES.map(routeKey).sort());
    for (const route of ROUTES) {
      const op = operation(route);
      expect(op.operationId).toBe(route.id);
      expect(op.security).toEqual([{ jwt: [...route.scopes] }]);
      const statuses = Object.keys(op.responses).map(Number);
      expect(statuses.filter((s) => s >= 400)).toEqual(errorStatuses(route));
      expect(statuses.filter((s) => s < 400)).toEqual(Object.keys(route.responses).map(Number));
    }
  });

  it("documents the POST body as either the native notification or Neutron's push payload", () => {
    const post = doc.paths["/v1/notifications"]!.post! as unknown as {
      requestBody: { content: { "application/json": { schema: unknown } } };
    };
    expect(post.requestBody.content["application/json"].schema).toEqual({
      oneOf: [{ $ref: "#/components/schemas/Notification" }, { $ref: "#/components/schemas/NeutronPush" }],
    });
  });

  it("bounds the Idempotency-Key exactly as the handler does", () => {
    const components = doc.components as { parameters: Record<string, { schema: { pattern: string } }> };
    const pattern = new RegExp(components.parameters["Idempotency-Key"]!.schema.pattern);
    expect(pattern.test("a".repeat(128))).toBe(true);
    for (const bad of ["", "a".repeat(129), "a b", "k/1"]) expect(pattern.test(bad), bad).toBe(false);
  });

  it("the README writer refuses a README without the markers", () => {
    expect(() => withReadmeTable("no markers here", "table")).toThrow(/markers/);
  });
});

describe("the examples", () => {
  it("every route has at least one, and the session sends every route", () => {
    expect([...ROUTES_IN_SESSION].sort()).toEqual(ROUTES.map((r) => r.id).sort());
    for (const route of ROUTES) expect(Object.keys(ROUTE_DOCS[route.id].examples).length).toBeGreaterThan(0);
  });

  it("request bodies parse with the route's body schema; response bodies with its response schema", () => {
    for (const route of ROUTES) {
      for (const [name, example] of Object.entries(ROUTE_DOCS[route.id].examples)) {
        const label = `${route.id}/${name}`;
        // A body the schema refuses is an example of exactly that refusal, and nothing else.
        if (route.body)
          expect(route.body(schemas).safeParse(example.body).success, label).toBe(example.status !== 422);
        else expect(example.body, label).toBeUndefined();
        expect(Object.keys(operation(route).responses), label).toContain(String(example.status));
        const schema = responseSchema(route, example.status);
        if (schema) expect(schema.safeParse(example.response).error, label).toBeUndefined();
        else expect(example.response, label).toBeUndefined();
      }
    }
  });

  describe("sent to the real handler, in session order", () => {
    const results = new Map<string, ApiGatewayResult>();

    beforeAll(async () => {
      const handler = handlerOnMemory();
      for (const id of ROUTES_IN_SESSION) {
        const route = ROUTES.find((r) => r.id === id)!;
        for (const [name, example] of Object.entries(ROUTE_DOCS[id].examples)) {
          const path = route.path.replace("{router_id}", example.routerId ?? "");
          const call = httpApiEvent({
            method: route.method,
            path,
            body: example.body,
            headers: { ...example.headers },
            claims: httpApiClaims(
              EXAMPLE_PROJECT,
              [example.caller ?? (route.scopes.length > 0 ? "admin" : "member")].filter(
                (r) => r !== "member",
              ),
            ),
          });
          const event = example.query ? withQuery(call, example.query) : call;
          results.set(`${id}/${name}`, await handler(event, lambdaContext()));
        }
      }
    });

    for (const route of ROUTES) {
      for (const [name, example] of Object.entries(ROUTE_DOCS[route.id].examples)) {
        it(`${route.id}/${name}: ${example.summary}`, () => {
          const actual = results.get(`${route.id}/${name}`)!;
          expect(actual.statusCode, actual.body).toBe(example.status);
          const headers = Object.fromEntries(
            Object.entries(actual.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]),
          );
          for (const header of Object.keys(documentedResponse(route, example.status).headers))
            expect(headers[header.toLowerCase()], header).toBeTruthy();
          const schema = responseSchema(route, example.status);
          if (!schema) {
            expect(actual.body).toBe("");
            return;
          }
          const body = JSON.parse(actual.body ?? "") as unknown;
          // strictObject schemas: a key the document does not name fails here.
          expect(schema.safeParse(body).error).toBeUndefined();
          expect(body).toEqual(example.response);
        });
      }
    }
  });
});

describe("query parameters: typed as the handler parses them", () => {
  const listing = ROUTES.find((route) => route.id === "listRouters")!;
  const parameters = (operation(listing).parameters as Json[]).filter((p) => p.in === "query") as {
    name: string;
    schema: { type: string; enum?: string[]; pattern?: string; maxLength?: number };
  }[];
  const handler = handlerOnMemory();
  const list = (query: Record<string, string>) => {
    const call = httpApiEvent({
      method: "GET",
      path: "/v1/routers",
      claims: httpApiClaims(EXAMPLE_PROJECT, ["admin"]),
    });
    return handler(withQuery(call, query), lambdaContext());
  };

  it("documents exactly the parameters the handler declares, each with a constraint beyond 'a string'", () => {
    expect(parameters.map((p) => p.name)).toEqual(Object.keys(api.routerListQuery.shape));
    for (const { name, schema } of parameters) {
      expect(schema.type, name).toBe("string");
      expect(schema.enum ?? schema.pattern ?? schema.maxLength, name).toBeDefined();
    }
  });

  it("a value the document refuses is a 422 from the handler naming that parameter", async () => {
    for (const { name, schema } of parameters) {
      // Built from the documented constraint alone (a pattern "~" must not match: checked).
      const value = schema.enum
        ? `${schema.enum[0]}x`
        : schema.pattern
          ? "~"
          : "a".repeat(schema.maxLength! + 1);
      if (schema.pattern) expect(new RegExp(schema.pattern).test(value), name).toBe(false);
      const result = await list({ [name]: value });
      expect(result.statusCode, `${name}=${value}: ${result.body}`).toBe(422);
      const body = JSON.parse(result.body ?? "") as { error: { details: { path: string }[] } };
      expect(body.error.details.map((issue) => issue.path)).toEqual([name]);
    }
  });
});

describe("derived from the document", () => {
  it("serverless.yml's http events: one per operation, its method, path and scopes (infra/routes.cjs)", () => {
    const serverless = readFileSync(new URL("serverless.yml", root), "utf8");
    // biome-ignore lint/suspicious/noTemplateCurlyInString: serverless variable syntax
    expect(serverless).toContain("events: ${file(infra/routes.cjs):httpEvents}");
    const resolver = require("../../infra/routes.cjs") as (() => { httpEvents: unknown }) & {
      httpEvents(doc: unknown): unknown;
    };
    const events = resolver().httpEvents as {
      httpApi: { method: string; path: string; authorizer: { name: string; scopes?: string[] } };
    }[];
    expect(events).toHaveLength(ROUTES.length);
    expect(
      Object.fromEntries(
        events.map(({ httpApi }) => [`${httpApi.method} ${httpApi.path}`, httpApi.authorizer]),
      ),
    ).toEqual(
      Object.fromEntries(
        ROUTES.map((r) => [
          routeKey(r),
          { name: "jwt", ...(r.scopes.length > 0 ? { scopes: r.scopes } : {}) },
        ]),
      ),
    );
  });

  it("infra/routes.cjs refuses an operation that does not require exactly the jwt scheme", () => {
    const { httpEvents } = require("../../infra/routes.cjs") as { httpEvents(doc: unknown): unknown };
    for (const security of [undefined, [], [{ other: [] }], [{ jwt: [] }, { jwt: ["x"] }]]) {
      expect(
        () => httpEvents({ paths: { "/v1/x": { get: { security } } } }),
        JSON.stringify(security),
      ).toThrow(/exactly the jwt scheme/);
    }
  });

  it("the README's HTTP API table is the document's (else: run npm run -s openapi)", () => {
    const readme = readFileSync(new URL("README.md", root), "utf8");
    const [open, close] = README_MARKERS;
    expect(readme.split(open)).toHaveLength(2);
    expect(readme, "README.md's HTTP API table is stale: run npm run -s openapi").toBe(
      withReadmeTable(readme, readmeRoutesTable(doc)),
    );
    expect(readme.slice(readme.indexOf(open), readme.indexOf(close))).toContain(
      "`PUT /v1/routers/{router_id}`",
    );
  });

  it("a document built for other limits says so (the builder reads the schemas it is given)", () => {
    const narrow = buildSchemas(
      { ...DEFAULT_LIMITS, maxHelpersPerNotification: 3 },
      new HelperCatalog(["ftp"]),
    );
    const built = buildOpenApi({ schemas: narrow, version: "0.0.0" }) as {
      components: { schemas: Record<string, { properties: Record<string, { maxItems?: number }> }> };
    };
    expect(built.components.schemas.Notification!.properties.conntrack_helpers!.maxItems).toBe(3);
  });
});
