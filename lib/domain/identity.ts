/**
 * Caller identity from verified token claims. API Gateway hands claims over as strings: an HTTP API turns
 * an array claim into "[admin service]", a REST API may pass a real array or "admin,service". Roles are
 * compared as whole words only: "super-admin" never grants "admin".
 */
import { UnauthorizedError } from "../errors.ts";
import { projectId as projectIdSchema } from "../schemas/primitives.ts";

export type Role = "admin" | "service";

export interface Identity {
  readonly projectId: string;
  readonly roles: ReadonlySet<string>;
}

const ROLE_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;
const MAX_ROLES = 32;

const unauthorized = () => new UnauthorizedError("missing or malformed identity claims");

function parseRoles(raw: unknown): string[] {
  if (raw === undefined || raw === null || raw === "") return [];
  let items: unknown[];
  if (Array.isArray(raw)) {
    items = raw;
  } else if (typeof raw === "string") {
    const text = raw.trim();
    if (text.length > 2048) throw unauthorized();
    if (text.startsWith("[") && text.includes('"')) {
      // A JSON array encoded into the claim.
      try {
        const parsed: unknown = JSON.parse(text);
        if (!Array.isArray(parsed)) throw unauthorized();
        items = parsed;
      } catch {
        throw unauthorized();
      }
    } else {
      const inner = text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
      if (inner.includes("[") || inner.includes("]")) throw unauthorized();
      items = inner.split(/[\s,]+/).filter((part) => part.length > 0);
    }
  } else {
    throw unauthorized();
  }
  if (items.length > MAX_ROLES) throw unauthorized();
  return items.map((item) => {
    if (typeof item !== "string" || !ROLE_PATTERN.test(item)) throw unauthorized();
    return item;
  });
}

/** Builds the identity or throws UnauthorizedError (401); never guesses. */
export function identityFromClaims(claims: unknown): Identity {
  if (typeof claims !== "object" || claims === null || Array.isArray(claims)) throw unauthorized();
  const record = claims as Record<string, unknown>;
  const project = projectIdSchema.safeParse(record.project_id);
  if (!project.success) throw unauthorized();
  return { projectId: project.data, roles: new Set(parseRoles(record.roles)) };
}

export const isAdmin = (identity: Identity): boolean => identity.roles.has("admin");
export const isService = (identity: Identity): boolean => identity.roles.has("service");
