/**
 * A rule plan (lib/rules.ts) -> `nft -f` input, and nft's JSON (an `--echo` of a transaction or a listing)
 * -> what the table holds; pure. Verified against nftables 1.0.6 on this kernel (DESIGN section 3):
 * - one table of family `inet` per router namespace holds IPv4 and IPv6 alike, owned by this project whole;
 * - helpers are `ct helper` objects, one per (kernel helper, protocol), `l3proto ip` for IPv4-only helpers;
 * - each helper id is one rule `[meta nfproto ipv4 ]tcp dport N ct helper set "OBJ" comment "cth:ID"` in a
 *   base chain on the prerouting hook at priority filter (after conntrack at -200, before confirmation);
 * - nft does not check that a rule's protocol matches its object's: the object is named after both.
 * Commands are written one per line (never the block form), so an error's line names the command at fault.
 * Rules never overlap (the plan leaves out a second helper on one family's port), so their order is
 * irrelevant: an edit appends and deletes by handle, and comparisons are of sets.
 */
import type { Family, HelperCatalog, Protocol } from "../../lib/catalog.ts";
import { compareRules, FAMILIES, type FoundRules, heldDigest, type RulePlan } from "../../lib/rules.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";

export const TABLE = "cth-helpers";
export const CHAIN = "prerouting";
const QUALIFIED = `inet ${TABLE}`;
const COMMENT_PREFIX = "cth:";
const CHAIN_SPEC = "{ type filter hook prerouting priority filter; policy accept; }";

/** `l3proto` of an object: `inet` for helpers of both families, `ip` for IPv4-only ones. */
export type L3proto = "inet" | "ip";

export interface HelperObject {
  readonly name: string;
  /** The kernel helper's name (nft's `type`). */
  readonly type: string;
  readonly protocol: Protocol;
  readonly l3proto: L3proto;
}

/** One helper rule as this backend writes it: restricted to one family when the plan has it in only one. */
export interface NftRule extends HelperRule {
  readonly only?: Family | undefined;
}

/** What the table should hold for a plan. */
export interface TableSpec {
  readonly objects: ReadonlyMap<string, HelperObject>;
  readonly rules: readonly NftRule[];
}

/** An object's name: helper names hold `.` (Q.931), which nft identifiers may not start or hold unquoted. */
export function objectName(helper: string, protocol: Protocol): string {
  return `${helper.toLowerCase().replace(/[^a-z0-9]/g, "")}-${protocol}`;
}

export function helperObject(helper: string, protocol: Protocol, catalog: HelperCatalog): HelperObject {
  const l3proto: L3proto = catalog.families(helper).includes("ipv6") ? "inet" : "ip";
  return { name: objectName(helper, protocol), type: helper, protocol, l3proto };
}

/** One rule per helper id the plan has in any family; `only` when it is in exactly one. */
export function tableSpec(plan: RulePlan, catalog: HelperCatalog): TableSpec {
  const byId = new Map<string, { rule: HelperRule; families: Family[] }>();
  for (const family of FAMILIES) {
    for (const rule of plan[family]?.rules ?? []) {
      const entry = byId.get(rule.id);
      if (entry) entry.families.push(family);
      else byId.set(rule.id, { rule, families: [family] });
    }
  }
  const rules: NftRule[] = [];
  const objects = new Map<string, HelperObject>();
  for (const { rule, families } of byId.values()) {
    const only = families.length === 1 ? families[0] : undefined;
    rules.push(only ? { ...rule, only } : rule);
    const object = helperObject(rule.helper, rule.protocol, catalog);
    objects.set(object.name, object);
  }
  rules.sort(compareRules);
  return { objects, rules };
}

const ruleKey = (rule: NftRule): string =>
  `${rule.id} ${rule.protocol} ${rule.port} ${rule.helper} ${rule.only ?? "inet"}`;

function objectLine(object: HelperObject): string {
  return (
    `add ct helper ${QUALIFIED} ${object.name} ` +
    `{ type "${object.type}" protocol ${object.protocol}; l3proto ${object.l3proto}; }`
  );
}

function ruleLine(rule: NftRule): string {
  const family = rule.only ? `meta nfproto ${rule.only} ` : "";
  return (
    `add rule ${QUALIFIED} ${CHAIN} ${family}${rule.protocol} dport ${rule.port} ` +
    `ct helper set "${objectName(rule.helper, rule.protocol)}" comment "${COMMENT_PREFIX}${rule.id}"`
  );
}

function contents(spec: TableSpec): string[] {
  return [
    `add chain ${QUALIFIED} ${CHAIN} ${CHAIN_SPEC}`,
    ...[...spec.objects.values()].map(objectLine),
    ...spec.rules.map(ruleLine),
  ];
}

/** For a namespace believed to hold no table of ours: `create` fails (File exists) if that belief is wrong. */
export function renderCreate(spec: TableSpec): string {
  return [`create table ${QUALIFIED}`, ...contents(spec), ""].join("\n");
}

/** The table replaced whole, whatever it holds (`add` then `delete` so that a missing table is no error). */
export function renderRewrite(spec: TableSpec): string {
  return [
    `add table ${QUALIFIED}`,
    `delete table ${QUALIFIED}`,
    `add table ${QUALIFIED}`,
    ...contents(spec),
    "",
  ].join("\n");
}

/** Everything this backend owns in a namespace: the table. */
export function renderRelease(): string {
  return [`add table ${QUALIFIED}`, `delete table ${QUALIFIED}`, ""].join("\n");
}

/** What converging a known table takes. */
export type Edit =
  | { readonly kind: "none" }
  /** The table is not one this backend would have written (a foreign chain or rule): replace it whole. */
  | { readonly kind: "rewrite" }
  | {
      readonly kind: "write";
      readonly text: string;
      /** What the echo of `text` is read against (see readView). */
      readonly base: TableView;
      readonly deleted: { readonly rules: ReadonlySet<number>; readonly objects: ReadonlySet<string> };
    };

/**
 * The few commands that turn a known table into `spec`: objects added first, rules deleted by handle and
 * added, unused objects deleted last. Additions alone are cheap; any deletion costs the transaction an RCU
 * grace period in the kernel (about 12 ms here), so nothing is deleted that can stay.
 */
export function renderEdit(view: TableView, spec: TableSpec): Edit {
  const none = { rules: new Set<number>(), objects: new Set<string>() };
  if (!view.exists) {
    if (spec.rules.length === 0) return { kind: "none" };
    return { kind: "write", text: renderCreate(spec), base: ABSENT, deleted: none };
  }
  if (!view.wellFormed) return { kind: "rewrite" };
  if (spec.rules.length === 0) return { kind: "write", text: renderRelease(), base: ABSENT, deleted: none };
  const wanted = new Set(spec.rules.map(ruleKey));
  const present = new Set(view.rules.map(ruleKey));
  const lines: string[] = [];
  const deleted = { rules: new Set<number>(), objects: new Set<string>() };
  for (const object of spec.objects.values())
    if (!view.objects.has(object.name)) lines.push(objectLine(object));
  for (const rule of view.rules) {
    if (wanted.has(ruleKey(rule))) continue;
    lines.push(`delete rule ${QUALIFIED} ${CHAIN} handle ${rule.handle}`);
    deleted.rules.add(rule.handle);
  }
  for (const rule of spec.rules) if (!present.has(ruleKey(rule))) lines.push(ruleLine(rule));
  for (const name of view.objects.keys()) {
    if (spec.objects.has(name)) continue;
    lines.push(`delete ct helper ${QUALIFIED} ${name}`);
    deleted.objects.add(name);
  }
  if (lines.length === 0) return { kind: "none" };
  return { kind: "write", text: [...lines, ""].join("\n"), base: view, deleted };
}

/** A rule of ours as read back, with the handle an edit deletes it by. */
export interface ViewRule extends NftRule {
  readonly handle: number;
}

/** What the kernel holds in our table: parsed from a listing, or from what an `--echo` added. */
export interface TableView {
  readonly exists: boolean;
  /**
   * Exactly the kind of table this backend writes: our base chain as we declare it, only our rules (each
   * parsed, its object present with its helper's protocol and l3proto, ids unique, no family's
   * (protocol, port) twice), nothing else. An object no rule uses does nothing: it is tolerated here (the
   * digest is still of the rules) but not by viewMatches, so the next write removes it.
   */
  readonly wellFormed: boolean;
  readonly objects: ReadonlyMap<string, HelperObject & { readonly handle: number }>;
  readonly rules: readonly ViewRule[];
  /** Everything else found (JSON text), for logs and the non-canonical digest. */
  readonly foreign: readonly string[];
}

export const ABSENT: TableView = {
  exists: false,
  wellFormed: true,
  objects: new Map(),
  rules: [],
  foreign: [],
};

type Json = Record<string, unknown>;
const isObject = (value: unknown): value is Json =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** The entries of nft's JSON output: `{"nftables":[{kind: body} | {verb: {kind: body}}]}`. */
function entries(text: string): Json[] {
  // An echo of a transaction that only deleted is empty: nft echoes additions only.
  if (text.trim() === "") return [];
  const parsed: unknown = JSON.parse(text);
  if (!isObject(parsed) || !Array.isArray(parsed.nftables))
    throw new Error("nft JSON without an nftables array");
  return parsed.nftables.filter(isObject);
}

const ours = (body: Json): boolean => body.family === "inet" && (body.table === TABLE || body.name === TABLE);

const PROTOCOLS: readonly string[] = ["tcp", "udp"];
const ID_RE = /^cth:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

/** `[nfproto match] dport match, ct helper` exactly as nft prints what ruleLine writes; else undefined. */
function parseExpr(
  expr: unknown,
): { only?: Family; protocol: Protocol; port: number; object: string } | undefined {
  if (!Array.isArray(expr)) return undefined;
  const parts = [...expr];
  let only: Family | undefined;
  const first = parts[0] as Json | undefined;
  const match = (part: unknown): Json | undefined =>
    isObject(part) && isObject(part.match) && part.match.op === "==" ? part.match : undefined;
  const nfproto = match(first);
  if (
    nfproto &&
    isObject(nfproto.left) &&
    isObject(nfproto.left.meta) &&
    nfproto.left.meta.key === "nfproto"
  ) {
    if (nfproto.right !== "ipv4" && nfproto.right !== "ipv6") return undefined;
    only = nfproto.right;
    parts.shift();
  }
  if (parts.length !== 2) return undefined;
  const dport = match(parts[0]);
  const payload =
    dport && isObject(dport.left) && isObject(dport.left.payload) ? dport.left.payload : undefined;
  if (payload?.field !== "dport" || !PROTOCOLS.includes(String(payload.protocol))) return undefined;
  const port = dport?.right;
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65_535) return undefined;
  const set = parts[1];
  if (!isObject(set) || typeof set["ct helper"] !== "string" || Object.keys(set).length !== 1)
    return undefined;
  return {
    ...(only ? { only } : {}),
    protocol: payload.protocol as Protocol,
    port,
    object: set["ct helper"],
  };
}

/**
 * Builds the view of our table from nft JSON: a listing, or the `--echo` of a transaction. nft echoes what a
 * transaction added and nothing it deleted, so an echo is read on top of `base`, what was known before it
 * (ABSENT for a listing and for a transaction that built the table), less the rule handles and object
 * names the transaction deleted.
 */
export function readView(
  text: string,
  catalog: HelperCatalog,
  base: TableView = ABSENT,
  deleted: { readonly rules?: ReadonlySet<number>; readonly objects?: ReadonlySet<string> } = {},
): TableView {
  let exists = base.exists;
  let chainOk = base.exists && base.wellFormed;
  const objects = new Map(base.objects);
  for (const name of deleted.objects ?? []) objects.delete(name);
  const foreign = [...base.foreign];
  const added: { handle: number; comment: unknown; expr: unknown }[] = [];
  for (const entry of entries(text)) {
    const verb = Object.keys(entry)[0] ?? "";
    const inner = entry[verb];
    const wrapped = ["add", "create", "insert"].includes(verb) && isObject(inner);
    const kind = wrapped ? (Object.keys(inner as Json)[0] ?? "") : verb;
    const body = wrapped ? (inner as Json)[kind] : inner;
    if (!isObject(body) || kind === "metainfo" || !ours(body)) continue;
    if (kind === "table") {
      exists = true;
      // Flags (dormant unhooks every chain) or anything else we never write: the table is not ours as-is.
      if (Object.keys(body).some((key) => !["family", "name", "handle"].includes(key))) {
        foreign.push(JSON.stringify(entry));
      }
    } else if (kind === "chain") {
      const ok =
        body.name === CHAIN &&
        body.type === "filter" &&
        body.hook === "prerouting" &&
        body.prio === 0 &&
        body.policy === "accept" &&
        !chainOk;
      if (ok) chainOk = true;
      else foreign.push(JSON.stringify(entry));
    } else if (kind === "ct helper") {
      const { name, type, protocol, l3proto, handle } = body;
      if (typeof name === "string" && typeof type === "string" && typeof handle === "number") {
        objects.set(name, {
          name,
          type,
          protocol: protocol as Protocol,
          l3proto: l3proto as L3proto,
          handle,
        });
      } else foreign.push(JSON.stringify(entry));
    } else if (kind === "rule" && body.chain === CHAIN && typeof body.handle === "number") {
      added.push({ handle: body.handle, comment: body.comment, expr: body.expr });
    } else foreign.push(JSON.stringify(entry));
  }
  if (!exists) return ABSENT;
  let wellFormed = chainOk && foreign.length === 0;
  // What was known stays as it was read (and judged) then; only the added rules are parsed.
  const rules: ViewRule[] = base.rules.filter((rule) => !deleted.rules?.has(rule.handle));
  const ids = new Set(rules.map((rule) => rule.id));
  const ports = new Set(rules.flatMap(familyPorts));
  for (const entry of added) {
    const id = typeof entry.comment === "string" ? ID_RE.exec(entry.comment)?.[1] : undefined;
    const parsed = parseExpr(entry.expr);
    const object = parsed ? objects.get(parsed.object) : undefined;
    if (!id || !parsed || !object) {
      wellFormed = false;
      foreign.push(JSON.stringify({ rule: entry }));
      continue;
    }
    const rule: ViewRule = {
      id,
      protocol: parsed.protocol,
      port: parsed.port,
      helper: object.type,
      handle: entry.handle,
      ...(parsed.only ? { only: parsed.only } : {}),
    };
    const expected = catalog.spec(object.type)
      ? helperObject(object.type, parsed.protocol, catalog)
      : undefined;
    const objectOk =
      expected?.name === object.name &&
      object.protocol === parsed.protocol &&
      object.l3proto === expected.l3proto;
    // A second rule for an id, or on a family's (protocol, port), is not what the renderer writes.
    const clash = ids.has(id) || familyPorts(rule).some((key) => ports.has(key));
    if (!objectOk || clash) wellFormed = false;
    ids.add(id);
    for (const key of familyPorts(rule)) ports.add(key);
    rules.push(rule);
  }
  return { exists, wellFormed, objects, rules, foreign };
}

/** The (family, protocol, port) slots a rule takes. */
const familyPorts = (rule: NftRule): string[] =>
  (rule.only ? [rule.only] : FAMILIES).map((family) => `${family} ${rule.protocol}/${rule.port}`);

/** Whether the view is exactly what `spec` renders (nothing to write). */
export function viewMatches(view: TableView, spec: TableSpec): boolean {
  if (!view.exists) return spec.rules.length === 0;
  if (!view.wellFormed || view.rules.length !== spec.rules.length || spec.rules.length === 0) return false;
  if (view.objects.size !== spec.objects.size) return false;
  const present = new Set(view.rules.map(ruleKey));
  return spec.rules.every((rule) => present.has(ruleKey(rule)));
}

/** The content digest (lib/rules.ts heldDigest) of what the view holds, per family this node manages. */
export function viewDigest(view: TableView, families: readonly Family[], catalog: HelperCatalog): string {
  const found: Partial<Record<Family, FoundRules>> = {};
  for (const family of families) {
    found[family] = {
      rules: view.rules
        .filter((rule) => rule.only === undefined || rule.only === family)
        .map(({ id, protocol, port, helper }) => ({ id, protocol, port, helper })),
      canonical: view.wellFormed,
    };
  }
  return heldDigest(found, catalog, () =>
    [...view.rules.map((rule) => `${rule.handle} ${ruleKey(rule)}`), ...view.foreign].join("\n"),
  );
}

/** The helper ids the view holds (tests and logs). */
export function viewHelperIds(view: TableView): string[] {
  return view.rules.map((rule) => rule.id).sort();
}

/**
 * Maps an nft error (`FILE:LINE:COL: Error: Could not process rule: No such file or directory`) back to the
 * object command on that line, so a helper the kernel lacks can be left out and the others applied.
 */
export function helperAtLine(text: string, stderr: string): string | undefined {
  if (!/No such file or directory/.test(stderr)) return undefined;
  for (const match of stderr.matchAll(/:(\d+):\d+-\d+: Error:/g)) {
    const line = text.split("\n")[Number(match[1]) - 1] ?? "";
    const object = /^add ct helper inet \S+ \S+ \{ type "([A-Za-z0-9.-]+)" /.exec(line);
    if (object?.[1]) return object[1];
  }
  return undefined;
}
