/**
 * Caller identity from verified token claims. Powers come only from the OAuth `scope` claim, one
 * space-delimited string (RFC 6749 §3.3): `cth:admin` grants admin, `cth:service` grants service.
 *
 * Why not a `roles` array: API Gateway's HTTP API hands an array claim over as "[a b]", so `["x cth:admin"]`
 * and `["x","cth:admin"]` arrive as the same string and no parser can tell them apart. A string claim is
 * passed through unchanged, and it is what the routes' `authorizationScopes` check at the gateway. So:
 * `scope` must be a plain string of RFC 6749 scope tokens; an array, a bracketed (flattened) form, any
 * character outside the grammar or any other claim (`roles`, `scp`, `groups`) grants nothing. Scope
 * tokens are compared whole and case-sensitively.
 */
import { UnauthorizedError } from "../errors.ts";
import { projectId as projectIdSchema } from "../schemas/primitives.ts";

export type Role = "admin" | "service";

export const ADMIN_SCOPE = "cth:admin";
export const SERVICE_SCOPE = "cth:service";
const SCOPES: Readonly<Record<string, Role>> = { [ADMIN_SCOPE]: "admin", [SERVICE_SCOPE]: "service" };

export interface Identity {
  readonly projectId: string;
  /** The powers the token grants ("admin", "service"); empty for a plain project member. */
  readonly roles: ReadonlySet<string>;
  /** The token's `sub`, when it has a usable one (scopes idempotency records to their caller). */
  readonly subject?: string;
}

/** RFC 6749 §3.3 scope-token, minus "[" and "]" so that no flattened array ever parses. */
const SCOPE = /^[\x21\x23-\x5a\x5c\x5e-\x7e]+(?: [\x21\x23-\x5a\x5c\x5e-\x7e]+)*$/;
const MAX_SCOPE_CHARS = 4096;
/** Printable, no whitespace or controls; bounded so it can go into a key. */
const SUBJECT = /^[\x21-\x7e]{1,255}$/;

const unauthorized = () => new UnauthorizedError("missing or malformed identity claims");

const own = (record: Record<string, unknown>, name: string): unknown =>
  Object.hasOwn(record, name) ? record[name] : undefined;

/** The powers a `scope` claim grants; anything but a well-formed plain string grants none. */
export function powersFromScope(scope: unknown): Set<Role> {
  const powers = new Set<Role>();
  if (typeof scope !== "string" || scope.length > MAX_SCOPE_CHARS || !SCOPE.test(scope)) return powers;
  for (const token of scope.split(" ")) {
    const power = Object.hasOwn(SCOPES, token) ? SCOPES[token] : undefined;
    if (power) powers.add(power);
  }
  return powers;
}

/** Builds the identity or throws UnauthorizedError (401) when there is no usable project; never guesses. */
export function identityFromClaims(claims: unknown): Identity {
  if (typeof claims !== "object" || claims === null || Array.isArray(claims)) throw unauthorized();
  const record = claims as Record<string, unknown>;
  const project = projectIdSchema.safeParse(own(record, "project_id"));
  if (!project.success) throw unauthorized();
  const sub = own(record, "sub");
  return {
    projectId: project.data,
    roles: powersFromScope(own(record, "scope")),
    ...(typeof sub === "string" && SUBJECT.test(sub) ? { subject: sub } : {}),
  };
}

export const isAdmin = (identity: Identity): boolean => identity.roles.has("admin");
export const isService = (identity: Identity): boolean => identity.roles.has("service");

/** The scope string that grants `roles`, as an identity provider (or the local token script) emits it. */
export const scopeFor = (roles: Iterable<Role>): string =>
  [...new Set(roles)]
    .sort()
    .map((role) => (role === "admin" ? ADMIN_SCOPE : SERVICE_SCOPE))
    .join(" ");
