/**
 * Response bodies and the listing's query of the HTTP API, as zod schemas: the handler parses the query with
 * them, the OpenAPI document, the typed client (CLI) and the tests read them; the handlers' outputs are checked
 * against them in the tests.
 */
import * as z from "zod/mini";
import { binding } from "./index.ts";
import { host, port, projectId, protocol, revision, uuid } from "./primitives.ts";

/**
 * The longest cursor a listing accepts: far above any store position (a DynamoDB key of two short strings),
 * far below a gateway's URL limit.
 */
export const MAX_CURSOR_CHARS = 2048;

/** GET /v1/routers's query; v2 joins a repeated parameter with commas, which none of these accept. */
export const routerListQuery = z.object({
  project_id: z.optional(projectId),
  host: z.optional(host),
  in_sync: z.optional(
    z.enum(["false"], { error: 'only "false" (routers some host has not confirmed) is a filter' }),
  ),
  limit: z.optional(
    z.pipe(
      z.string().check(z.regex(/^\d{1,3}$/, "must be an integer from 1 to 100")),
      z.pipe(
        z.transform(Number),
        z.int().check(z.gte(1, "must be at least 1"), z.lte(100, "must be at most 100")),
      ),
    ),
  ),
  cursor: z.optional(z.string().check(z.maxLength(MAX_CURSOR_CHARS))),
});

export const errorBody = z.strictObject({
  error: z.strictObject({
    code: z.string(),
    message: z.string(),
    details: z.optional(z.array(z.strictObject({ path: z.string(), message: z.string() }))),
  }),
});

export const submitResult = z.strictObject({
  routers: z.array(z.strictObject({ router_id: uuid, revision })),
});

export const appliedError = z.strictObject({
  helper_id: z.optional(uuid),
  code: z.string(),
  message: z.string(),
});

export const helperView = z.strictObject({ id: uuid, protocol, port, helper: z.string() });

/** GET /v1/routers/{router_id}/conntrack-helpers */
export const routerState = z.strictObject({
  router_id: uuid,
  host: z.optional(host),
  revision,
  applied_revision: revision,
  in_sync: z.boolean(),
  helpers: z.array(helperView),
  applied_errors: z.array(appliedError),
  applied_at: z.optional(z.string()),
  replicas: z.array(
    z.strictObject({
      host: z.optional(host),
      namespace: binding.shape.namespace,
      applied_revision: revision,
      in_sync: z.boolean(),
      applied_at: z.optional(z.string()),
      applied_errors: z.array(appliedError),
    }),
  ),
  draining: z.array(z.strictObject({ host: z.optional(host), revision })),
});

/**
 * A router as PUT answers it and GET /v1/routers{,/{router_id}} list it. Node names (`host`, each binding's
 * `host`) are shown to operators (cth:admin, cth:service) only; `in_sync` is on reads only.
 */
export const routerView = z.strictObject({
  router_id: uuid,
  project_id: projectId,
  host: z.optional(host),
  bindings: z.array(z.strictObject({ host: z.optional(host), namespace: binding.shape.namespace })),
  revision,
  in_sync: z.optional(z.boolean()),
});

export const routerList = z.strictObject({
  routers: z.array(routerView),
  next_cursor: z.nullable(z.string()),
});

export type ErrorBody = z.infer<typeof errorBody>;
export type SubmitResultBody = z.infer<typeof submitResult>;
export type RouterStateBody = z.infer<typeof routerState>;
export type RouterViewBody = z.infer<typeof routerView>;
export type RouterListBody = z.infer<typeof routerList>;
