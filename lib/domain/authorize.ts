/**
 * Ownership rules. Unknown and foreign routers raise the same routerNotFound: no one learns that a router
 * exists outside their project. `service` may act for any project, but never attach a helper to a router
 * of a project other than the one the helper names.
 */
import { ForbiddenError, routerNotFound } from "../errors.ts";
import type { RouterRecord } from "../ports.ts";
import type { HelperChange } from "../schemas/index.ts";
import { type Identity, isAdmin, isService } from "./identity.ts";

/** The router if `identity` may see and change it; routerNotFound otherwise. */
export function authorizeRouter(
  identity: Identity,
  routerId: string,
  record: RouterRecord | undefined,
): RouterRecord {
  if (!record) throw routerNotFound(routerId);
  if (isOperator(identity)) return record;
  if (record.projectId !== identity.projectId) throw routerNotFound(routerId);
  return record;
}

/**
 * A helper's project must be its router's owner. When the helper names none, a non-admin caller acts for
 * its own token's project, so a service cannot reach another project's router by omitting the field.
 */
export function authorizeHelperProject(
  identity: Identity,
  record: RouterRecord,
  change: HelperChange,
  index: number,
): void {
  const claimed = change.project_id ?? (isAdmin(identity) ? record.projectId : identity.projectId);
  if (claimed !== record.projectId) {
    throw new ForbiddenError(`helper ${change.id} does not belong to the project that owns its router`, [
      {
        path: `conntrack_helpers.${index}.project_id`,
        message: "must equal the project that owns the router",
      },
    ]);
  }
}

/** Operators (admin, service) act across projects and see node names; plain members see neither. */
export const isOperator = (identity: Identity): boolean => isAdmin(identity) || isService(identity);

export interface ListingFilters {
  readonly projectId?: string | undefined;
  readonly host?: string | undefined;
}

/**
 * The filters a listing may run with, or undefined for a listing that is empty whatever the table holds. A
 * member is held to its own project: another project's filter answers the empty page a project without
 * routers would, never an error that would say whether it exists. The host filter is refused to members,
 * who are never shown node names (it depends only on the caller's powers, so it reveals nothing).
 */
export function authorizeListing(identity: Identity, filters: ListingFilters): ListingFilters | undefined {
  if (isOperator(identity)) return filters;
  if (filters.host !== undefined) {
    throw new ForbiddenError("the host filter requires the cth:admin or cth:service scope", [
      { path: "host", message: "node names are shown to operators only" },
    ]);
  }
  if (filters.projectId !== undefined && filters.projectId !== identity.projectId) return undefined;
  return { projectId: identity.projectId };
}

export function requireAdmin(identity: Identity): void {
  if (!isAdmin(identity)) throw new ForbiddenError("this operation requires the cth:admin scope");
}
