/**
 * The desired rule set, backend-neutral and pure: which helpers a router namespace gets in each address
 * family, in which order, and the content digest of what a read-back found. Firewall syntax (iptables text,
 * nftables objects) lives with each backend under agent/.
 */
import { createHash } from "node:crypto";
import type { Family, HelperCatalog, Protocol } from "./catalog.ts";
import { helperSetDigest } from "./digest.ts";
import type { ApplyError, HelperRule } from "./schemas/index.ts";

export const FAMILIES: readonly Family[] = ["ipv4", "ipv6"];

// Re-checked here (the last stop before a backend renders rule text), independent of the schema.
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HELPER_RE = /^[A-Za-z0-9.-]{1,32}$/;

/** A helper that no backend may render (a bug upstream: the schema lets none of these through). */
export class RuleSetError extends Error {
  override readonly name = "RuleSetError";
}

/** Which helpers go into a family, and why the others were left out. */
export interface FamilyPlan {
  readonly family: Family;
  readonly rules: readonly HelperRule[];
  readonly errors: readonly ApplyError[];
}

export interface PlanOptions {
  /** Helper names the running kernel lacks in this family (probe or classified apply error). */
  readonly unavailable?: ReadonlySet<string> | undefined;
}

function assertRenderable(rule: HelperRule, catalog: HelperCatalog): void {
  const protocols: readonly Protocol[] = ["tcp", "udp"];
  if (!UUID_RE.test(rule.id)) throw new RuleSetError("helper id is not a lowercase UUID");
  if (!protocols.includes(rule.protocol)) throw new RuleSetError(`bad protocol for helper ${rule.id}`);
  if (!Number.isInteger(rule.port) || rule.port < 1 || rule.port > 65_535) {
    throw new RuleSetError(`bad port for helper ${rule.id}`);
  }
  if (!HELPER_RE.test(rule.helper) || catalog.resolve(rule.helper, rule.protocol) !== rule.helper) {
    throw new RuleSetError(`helper ${rule.id} names a helper the catalog does not allow`);
  }
}

/** Stable order: protocol, then port, then id (code points, never locale-dependent). */
export function compareRules(a: HelperRule, b: HelperRule): number {
  if (a.protocol !== b.protocol) return a.protocol < b.protocol ? -1 : 1;
  if (a.port !== b.port) return a.port - b.port;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/**
 * Selects one family's rules: helpers the family does not support are simply absent (IPv4-only helpers in
 * IPv6 are not an error), a second helper on the same (protocol, port) is left out because the kernel would
 * only ever use the first, and helpers the kernel lacks are left out with a per-helper error.
 */
export function planFamily(
  helpers: readonly HelperRule[],
  family: Family,
  catalog: HelperCatalog,
  options: PlanOptions = {},
): FamilyPlan {
  const sorted = [...helpers].sort(compareRules);
  const rules: HelperRule[] = [];
  const errors: ApplyError[] = [];
  const taken = new Map<string, string>();
  const seenIds = new Set<string>();
  for (const rule of sorted) {
    assertRenderable(rule, catalog);
    if (seenIds.has(rule.id)) throw new RuleSetError(`helper id ${rule.id} appears twice`);
    seenIds.add(rule.id);
    if (!catalog.families(rule.helper).includes(family)) continue;
    if (options.unavailable?.has(rule.helper)) {
      errors.push({
        helper_id: rule.id,
        code: "helper_unavailable",
        message: `${family}: the running kernel lacks conntrack helper ${rule.helper}`,
      });
      continue;
    }
    const key = `${rule.protocol}/${rule.port}`;
    const owner = taken.get(key);
    if (owner !== undefined) {
      errors.push({
        helper_id: rule.id,
        code: "port_conflict",
        message: `${family}: ${key} already carries helper ${owner}`,
      });
      continue;
    }
    taken.set(key, rule.id);
    rules.push(rule);
  }
  return { family, rules, errors };
}

/** A router namespace's plan: one FamilyPlan per family the node manages. */
export type RulePlan = Partial<Record<Family, FamilyPlan>>;

export function planRules(
  helpers: readonly HelperRule[],
  families: readonly Family[],
  catalog: HelperCatalog,
  unavailable: Readonly<Record<Family, ReadonlySet<string>>>,
): RulePlan {
  const plan: RulePlan = {};
  for (const family of families) {
    plan[family] = planFamily(helpers, family, catalog, { unavailable: unavailable[family] });
  }
  return plan;
}

/** Rule counts per family (0 for a family the node does not manage), as reports carry them. */
export function ruleCounts(plan: RulePlan): Record<Family, number> {
  return { ipv4: plan.ipv4?.rules.length ?? 0, ipv6: plan.ipv6?.rules.length ?? 0 };
}

/** Every family's errors, in family order. */
export function planErrors(plan: RulePlan): ApplyError[] {
  return FAMILIES.flatMap((family) => plan[family]?.errors ?? []);
}

/** What one family's read-back holds of ours, whichever backend read it. */
export interface FoundRules {
  /** Our helper rules in read-back order, each parsed back into (id, protocol, port, helper). */
  readonly rules: readonly HelperRule[];
  /**
   * The owned objects are exactly what the backend writes for `rules` (ids and (protocol, port) pairs
   * unique, nothing hand-written, nothing missing). Otherwise something else is in effect and `rules` alone
   * does not say what the kernel does.
   */
  readonly canonical: boolean;
}

const ruleKey = (rule: HelperRule) => `${rule.id} ${rule.protocol} ${rule.port} ${rule.helper}`;

/**
 * The content digest (lib/digest.ts) of what the read-back of a router namespace found, one FoundRules per
 * family the node manages. A helper counts as held when it is in every managed family its helper belongs to
 * (IPv4-only helpers only in ipv4), with the same protocol, port and helper in each (one family alone is not
 * "held": the status side then sees the set differ). When anything is not canonical (see FoundRules, a
 * helper in a family it does not belong to, one id with two meanings), the digest is of `evidence()` (the
 * backend's own text of what it found), marked so that it cannot equal any helper set's digest.
 */
export function heldDigest(
  found: Partial<Record<Family, FoundRules>>,
  catalog: HelperCatalog,
  evidence: () => string,
): string {
  const managed = FAMILIES.filter((family) => found[family] !== undefined);
  let canonical = managed.every((family) => found[family]?.canonical);
  const byId = new Map<string, { rule: HelperRule; families: Set<Family> }>();
  for (const family of managed) {
    for (const rule of found[family]?.rules ?? []) {
      const entry = byId.get(rule.id);
      if (!entry) byId.set(rule.id, { rule, families: new Set([family]) });
      else if (ruleKey(entry.rule) !== ruleKey(rule)) canonical = false;
      else entry.families.add(family);
    }
  }
  const held: HelperRule[] = [];
  for (const { rule, families } of byId.values()) {
    const belongs = catalog.families(rule.helper);
    if ([...families].some((family) => !belongs.includes(family))) canonical = false;
    if (belongs.every((family) => !managed.includes(family) || families.has(family))) held.push(rule);
  }
  if (!canonical) {
    return createHash("sha256").update(`non-canonical read-back\n${evidence()}`, "utf8").digest("hex");
  }
  return helperSetDigest(held);
}
