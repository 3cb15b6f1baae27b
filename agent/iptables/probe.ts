/**
 * Start-up probe: which catalog helpers does the running kernel actually have? One transaction per family
 * holding a rule for every helper, run in a throwaway network namespace (it dies with the process, so
 * nothing can leak, even on SIGKILL); a failure names its line, that helper is marked missing and the rest
 * retried.
 */
import { randomUUID } from "node:crypto";
import type { Family, HelperCatalog } from "../../lib/catalog.ts";
import { FAMILIES } from "../../lib/rules.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";
import { type IptablesPort, RestoreError } from "./port.ts";
import { helperAtLine, isMissingHelperError, renderRestore } from "./render.ts";

export async function probeHelpers(
  iptables: IptablesPort,
  catalog: HelperCatalog,
  families: readonly Family[] = FAMILIES,
): Promise<Record<Family, Set<string>>> {
  const lacking: Record<Family, Set<string>> = { ipv4: new Set(), ipv6: new Set() };
  for (const family of families) {
    const candidates: HelperRule[] = [];
    let port = 1;
    for (const name of catalog.names()) {
      if (!catalog.families(name).includes(family)) continue;
      for (const protocol of catalog.spec(name)?.protocols ?? []) {
        candidates.push({ id: randomUUID(), protocol, port: port++, helper: name });
      }
    }
    for (let attempt = 0; attempt <= candidates.length; attempt++) {
      const rules = candidates.filter((rule) => !lacking[family].has(rule.helper));
      const text = renderRestore(rules, "");
      if (text === undefined) break;
      try {
        await iptables.probeRestore(family, text);
        break;
      } catch (error) {
        const hit = error instanceof RestoreError ? helperAtLine(text, error.stderr) : undefined;
        if (!hit || !(error instanceof RestoreError) || !isMissingHelperError(error.stderr)) {
          throw new Error(
            `${family} netfilter is not usable here (${error instanceof Error ? error.message : String(error)});` +
              (family === "ipv6" ? " run the agent with --families ipv4 on hosts without IPv6" : ""),
            { cause: error },
          );
        }
        lacking[family].add(hit.helper);
      }
    }
  }
  return lacking;
}
