/**
 * Entity tags for optimistic concurrency. One definition for every route: the ETag names a router's desired
 * state (project, bindings, helpers) at its revision, `"r<revision>-<16 hex of SHA-256>"`. GET of a router
 * and of its helpers, and PUT's answer, carry the same value, and If-Match on PUT, DELETE and a single-router
 * notification compares against it. Applied status is not part of it: an agent's report is no write a client
 * could conflict with, and a tag that changed with every report would fail every conditional write.
 */
import { createHash } from "node:crypto";
import { helperSetDigest } from "../digest.ts";
import { PreconditionFailedError } from "../errors.ts";
import type { RouterRecord } from "../ports.ts";

export function routerEtag(
  record: Pick<RouterRecord, "revision" | "projectId" | "bindings" | "helpers">,
): string {
  const content = JSON.stringify([
    record.projectId,
    record.bindings.map(({ host, namespace }) => [host, namespace]),
    helperSetDigest(record.helpers),
  ]);
  const digest = createHash("sha256").update(content, "utf8").digest("hex").slice(0, 16);
  return `"r${record.revision}-${digest}"`;
}

/**
 * Whether an If-Match value (RFC 9110 §13.1.1: `*` or a list of entity tags) admits `current` (undefined:
 * no such router). Strong comparison: a weak tag (`W/"..."`) never matches.
 */
export function ifMatchAdmits(ifMatch: string, current: string | undefined): boolean {
  if (current === undefined) return false;
  if (ifMatch.trim() === "*") return true;
  return ifMatch.split(",").some((tag) => tag.trim() === current);
}

/** Throws the 412 (carrying the current tag) unless `ifMatch` is absent or admits `record`. */
export function requireIfMatch(ifMatch: string | undefined, record: RouterRecord | undefined): void {
  if (ifMatch === undefined) return;
  const current = record ? routerEtag(record) : undefined;
  if (!ifMatchAdmits(ifMatch, current)) {
    throw new PreconditionFailedError(
      current === undefined
        ? "If-Match was given but the router does not exist"
        : "the router changed since the ETag in If-Match was read",
      current,
    );
  }
}
