/**
 * A rule plan (lib/rules.ts) -> iptables-restore input, and iptables-save read-backs -> what they hold; pure. Verified against iptables 1.8.9 (nf_tables):
 * - iptables-save prints a port match as `-p tcp -m tcp --dport 21` and always double-quotes a comment;
 * - in `--noflush` mode, declaring `:CHAIN - [0:0]` creates the chain or flushes it, inside the transaction;
 * - `-D` and `-X` inside the same transaction remove the jump and the (just flushed) chain.
 * One chain per family is owned by this project and changed in one transaction (edited in place when a few
 * rules change, else rewritten whole), so helper ids never become chain names (Neutron's 7-character prefix
 * collision) and every rule is written exactly as iptables-save prints it, so reading back and comparing
 * converges and an unchanged snapshot writes nothing.
 */
import type { Family, HelperCatalog, Protocol } from "../../lib/catalog.ts";
import { FAMILIES, type FoundRules, heldDigest } from "../../lib/rules.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";

export const TABLE = "raw";
/** <= 28 characters (iptables' chain-name limit); upper case so it cannot clash with Neutron's `neutron-*`. */
export const OWNED_CHAIN = "CTH-HELPERS";
export const HOOK_CHAIN = "PREROUTING";
export const JUMP_LINE = `-A ${HOOK_CHAIN} -j ${OWNED_CHAIN}`;
const CHAIN_LINE = `:${OWNED_CHAIN} - [0:0]`;
const COMMENT_PREFIX = "cth:";

/** One rule exactly as iptables-save prints it. */
export function ruleLine(rule: HelperRule): string {
  return (
    `-A ${OWNED_CHAIN} -p ${rule.protocol} -m ${rule.protocol} --dport ${rule.port}` +
    ` -m comment --comment "${COMMENT_PREFIX}${rule.id}" -j CT --helper ${rule.helper}`
  );
}

/** The lines iptables-save prints for what we own once `rules` are in place ([] when nothing is owned). */
export function expectedOwnedLines(rules: readonly HelperRule[]): string[] {
  if (rules.length === 0) return [];
  return [CHAIN_LINE, JUMP_LINE, ...rules.map(ruleLine)];
}

/** The `*raw` section of an iptables-save dump, without comments and counters. */
function rawSection(save: string): string[] {
  const lines: string[] = [];
  let inRaw = false;
  for (const line of save.split("\n")) {
    if (line.startsWith("*")) {
      inRaw = line === `*${TABLE}`;
      continue;
    }
    if (!inRaw || line.startsWith("#") || line === "") continue;
    if (line === "COMMIT") {
      inRaw = false;
      continue;
    }
    lines.push(line);
  }
  return lines;
}

/** What a save shows of ours: the chain declaration, jumps into it (from anywhere), its rules; in save order. */
export function ownedLines(save: string): string[] {
  const ours: string[] = [];
  const chainDecl: string[] = [];
  for (const line of rawSection(save)) {
    if (line.startsWith(`:${OWNED_CHAIN} `)) chainDecl.push(line);
    else if (line.startsWith(`-A ${OWNED_CHAIN} `) || line.endsWith(` -j ${OWNED_CHAIN}`)) ours.push(line);
  }
  const jumps = ours.filter((line) => !line.startsWith(`-A ${OWNED_CHAIN} `));
  const rules = ours.filter((line) => line.startsWith(`-A ${OWNED_CHAIN} `));
  return [...chainDecl, ...jumps, ...rules];
}

/** The helper ids our chain currently holds, in rule order (for reports and tests). */
export function ownedHelperIds(save: string): string[] {
  const ids: string[] = [];
  for (const line of ownedLines(save)) {
    const match = / --comment "cth:([0-9a-f-]{36})" /.exec(line);
    if (match?.[1]) ids.push(match[1]);
  }
  return ids;
}

/** One of our rules exactly as ruleLine writes it (and iptables-save prints it). */
const OWNED_RULE_RE = new RegExp(
  `^-A ${OWNED_CHAIN} -p (tcp|udp) -m \\1 --dport ([1-9]\\d{0,4}) -m comment --comment "${COMMENT_PREFIX}([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})" -j CT --helper ([A-Za-z0-9.-]{1,32})$`,
);

/** Parses the owned rules of an iptables-save read-back back into helpers. */
export function parseOwnedRules(save: string): FoundRules {
  const owned = ownedLines(save);
  const rules: HelperRule[] = [];
  const ids = new Set<string>();
  const ports = new Set<string>();
  let canonical = true;
  for (const line of owned) {
    if (!line.startsWith(OWNED_RULE_PREFIX)) continue;
    const match = OWNED_RULE_RE.exec(line);
    const [, protocol, port, id, helper] = match ?? [];
    if (!protocol || !port || !id || !helper || Number(port) > 65_535) {
      canonical = false;
      continue;
    }
    const rule: HelperRule = { id, protocol: protocol as Protocol, port: Number(port), helper };
    // A second rule on a (protocol, port) never takes effect: only the first one is what the kernel does.
    if (ids.has(id) || ports.has(`${protocol}/${port}`)) canonical = false;
    ids.add(id);
    ports.add(`${protocol}/${port}`);
    rules.push(rule);
  }
  if (!sameLines(owned, expectedOwnedLines(rules))) canonical = false;
  return { rules, canonical };
}

/** The content digest (lib/rules.ts heldDigest) of one save per family this node manages. */
export function readBackDigest(saves: Partial<Record<Family, string>>, catalog: HelperCatalog): string {
  const managed = FAMILIES.filter((family) => saves[family] !== undefined);
  const found: Partial<Record<Family, FoundRules>> = {};
  for (const family of managed) found[family] = parseOwnedRules(saves[family] ?? "");
  return heldDigest(found, catalog, () =>
    managed.map((family) => `${family}\n${ownedLines(saves[family] ?? "").join("\n")}\n`).join(""),
  );
}

export function sameLines(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((line, index) => line === b[index]);
}

export interface RenderOptions {
  /** Replace the chain whole even where a few deletes and inserts would do (after a surprise). */
  readonly whole?: boolean | undefined;
}

const OWNED_RULE_PREFIX = `-A ${OWNED_CHAIN} `;

/**
 * The few `-D` and `-I <position>` lines that turn the chain's current rules into the expected ones, when
 * the rules both keep stand in the same order and the edit is smaller than the chain: one helper changed on
 * a router of 500 then costs two rule operations instead of 500 deletes and 500 adds. Undefined otherwise.
 * Deletes go first (by exact rule text), then inserts in ascending final position, so each insert's position
 * counts only rules already in their final place.
 */
function editLines(current: readonly string[], expected: readonly string[]): string[] | undefined {
  const want = new Set(expected);
  const have = new Set(current);
  if (want.size !== expected.length || have.size !== current.length) return undefined;
  const kept = current.filter((line) => want.has(line));
  let matched = 0;
  for (const line of expected) if (line === kept[matched]) matched++;
  if (matched !== kept.length) return undefined;
  const edits: string[] = [];
  for (const line of current)
    if (!want.has(line)) edits.push(`-D ${OWNED_CHAIN} ${line.slice(OWNED_RULE_PREFIX.length)}`);
  expected.forEach((line, index) => {
    if (!have.has(line)) edits.push(`-I ${OWNED_CHAIN} ${index + 1} ${line.slice(OWNED_RULE_PREFIX.length)}`);
  });
  // Nothing to edit in the rules (what differs is elsewhere, e.g. a foreign jump): leave it to the rewrite.
  return edits.length > 0 && edits.length < expected.length ? edits : undefined;
}

/**
 * The iptables-restore input (for `--noflush`) that turns `currentSave` into `rules`, or undefined when the
 * save already shows exactly that (nothing to write). Either way one transaction: a small edit of the chain
 * in place, or the chain declared (which flushes it) and written whole. Jumps into our chain other than the
 * one canonical PREROUTING jump are removed only when they have that exact form; anything else someone
 * hand-wrote is left for the read-back comparison to report.
 */
export function renderRestore(
  rules: readonly HelperRule[],
  currentSave: string,
  options: RenderOptions = {},
): string | undefined {
  const current = ownedLines(currentSave);
  const expected = expectedOwnedLines(rules);
  if (sameLines(current, expected)) return undefined;
  const chainExists = current.some((line) => line.startsWith(`:${OWNED_CHAIN} `));
  const jumps = current.filter((line) => line === JUMP_LINE).length;
  const strayJumps = current.filter((line) => line === `-A OUTPUT -j ${OWNED_CHAIN}`).length;
  const out = [`*${TABLE}`];
  for (let i = 0; i < strayJumps; i++) out.push(`-D OUTPUT -j ${OWNED_CHAIN}`);
  if (rules.length === 0) {
    for (let i = 0; i < jumps; i++) out.push(`-D ${HOOK_CHAIN} -j ${OWNED_CHAIN}`);
    if (chainExists) out.push(CHAIN_LINE, `-X ${OWNED_CHAIN}`);
  } else {
    const edits =
      !options.whole && chainExists && jumps === 1 && strayJumps === 0
        ? editLines(
            current.filter((line) => line.startsWith(OWNED_RULE_PREFIX)),
            rules.map(ruleLine),
          )
        : undefined;
    if (edits) out.push(...edits);
    else {
      // Declaring the chain flushes it (noflush mode), so the rules below replace it whole.
      out.push(CHAIN_LINE);
      if (jumps === 0) out.push(JUMP_LINE);
      for (let i = 1; i < jumps; i++) out.push(`-D ${HOOK_CHAIN} -j ${OWNED_CHAIN}`);
      out.push(...rules.map(ruleLine));
    }
  }
  out.push("COMMIT", "");
  return out.join("\n");
}

/**
 * Maps an iptables-restore error (`line N: ...`) back to the helper whose rule sits on that line, so a
 * helper the kernel lacks can be left out and the others applied.
 */
export function helperAtLine(
  restoreText: string,
  stderr: string,
): { helper: string; id: string } | undefined {
  const match = /line (\d+)/.exec(stderr);
  if (!match) return undefined;
  const line = restoreText.split("\n")[Number(match[1]) - 1];
  if (line === undefined) return undefined;
  // Appended rules only: an in-place `-I` also fails with "No chain/target/match" when the chain itself is
  // gone (a namespace recreated behind the agent's back), which must not brand a working helper as missing.
  // The caller then re-reads the table and rewrites the chain whole, whose `-A` lines classify correctly.
  const rule = /^-A \S+ .* --comment "cth:([0-9a-f-]{36})" -j CT --helper ([A-Za-z0-9.-]+)$/.exec(line);
  return rule?.[1] && rule[2] ? { id: rule[1], helper: rule[2] } : undefined;
}

/** Whether an iptables-restore failure says the kernel does not know something (a helper module). */
export function isMissingHelperError(stderr: string): boolean {
  return /No such file or directory|Unknown helper|No chain\/target\/match by that name/i.test(stderr);
}
