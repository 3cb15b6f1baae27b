/**
 * The content digest of a helper set: what an agent's read-back found, and what the desired set is. Both
 * sides compute it the same way, so `in_sync` can mean "this content is in that kernel".
 *
 * Canonical form: one line per helper, `<id> <protocol> <port> <helper>` (helper in its canonical kernel
 * name), lines sorted by code point, each ending in "\n"; the digest is SHA-256 of its UTF-8 bytes as
 * lowercase hex. The empty set's digest is SHA-256 of the empty string.
 */
import { createHash } from "node:crypto";
import type { HelperRule } from "./schemas/index.ts";

export function canonicalHelperSet(helpers: readonly HelperRule[]): string {
  const lines = helpers.map(({ id, protocol, port, helper }) => `${id} ${protocol} ${port} ${helper}\n`);
  lines.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return lines.join("");
}

export function helperSetDigest(helpers: readonly HelperRule[]): string {
  return createHash("sha256").update(canonicalHelperSet(helpers), "utf8").digest("hex");
}
