/**
 * Start-up probe: which catalog helpers does the running kernel actually have? One transaction per family
 * in a scratch namespace holding a rule for every helper; a failure names its line, that helper is marked
 * missing and the rest retried. The scratch namespace is always removed.
 */
import { randomUUID } from "node:crypto";
import type { Family, HelperCatalog } from "../lib/catalog.ts";
import { FAMILIES, helperAtLine, isMissingHelperError, renderRestore } from "../lib/render.ts";
import type { HelperRule } from "../lib/schemas/index.ts";
import { type IptablesPort, RestoreError } from "./iptables.ts";

const PROBE_NS_RE = /^cth-probe-(\d+)-[0-9a-f]{8}$/;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Removes scratch namespaces left by probes whose agent died mid-probe (their PID is gone). */
export async function removeStaleProbes(iptables: IptablesPort): Promise<string[]> {
  const removed: string[] = [];
  for (const ns of await iptables.listNamespaces()) {
    const match = PROBE_NS_RE.exec(ns);
    if (!match || alive(Number(match[1]))) continue;
    await iptables.deleteNamespace(ns);
    removed.push(ns);
  }
  return removed;
}

export async function probeHelpers(
  iptables: IptablesPort,
  catalog: HelperCatalog,
  scratchNs = `cth-probe-${process.pid}-${randomUUID().slice(0, 8)}`,
  families: readonly Family[] = FAMILIES,
): Promise<Record<Family, Set<string>>> {
  const lacking: Record<Family, Set<string>> = { ipv4: new Set(), ipv6: new Set() };
  await removeStaleProbes(iptables);
  await iptables.createNamespace(scratchNs);
  try {
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
          await iptables.restore(scratchNs, family, text);
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
  } finally {
    await iptables.deleteNamespace(scratchNs);
  }
  return lacking;
}
