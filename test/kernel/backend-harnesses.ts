/**
 * The four places the backend contract runs: each backend over its in-memory model and over the real kernel.
 * Each harness reads what is held without the backend under test and tampers the way an operator would.
 */
import { randomUUID } from "node:crypto";
import { MemoryIptables } from "../../agent/iptables/memory.ts";
import { ExecIptables } from "../../agent/iptables/port.ts";
import { ownedHelperIds, ownedLines } from "../../agent/iptables/render.ts";
import { MemoryNft } from "../../agent/nftables/memory.ts";
import { ExecNft } from "../../agent/nftables/port.ts";
import { readView, TABLE } from "../../agent/nftables/render.ts";
import type { Family } from "../../lib/catalog.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { iptablesBackend, nftablesBackend } from "../support/backends.ts";
import { NEUTRON_RAW } from "../support/factories.ts";
import { inNs, rawSave, Sandbox } from "../support/netns.ts";
import type { BackendHarness } from "./backend-contract.ts";

const catalog = new HelperCatalog();
const FAMILIES: readonly Family[] = ["ipv4", "ipv6"];

/** Our held ids per family from an nft JSON listing (undefined: no table). */
function nftHeld(listing: string | undefined): Record<Family, string[]> {
  const view = listing === undefined ? undefined : readView(listing, catalog);
  const of = (family: Family) =>
    (view?.rules ?? [])
      .filter((rule) => rule.only === undefined || rule.only === family)
      .map((rule) => rule.id)
      .sort();
  return { ipv4: of("ipv4"), ipv6: of("ipv6") };
}

function handleOf(listing: string | undefined, id: string): number {
  const rule = (listing === undefined ? [] : readView(listing, catalog).rules).find((r) => r.id === id);
  if (!rule) throw new Error(`no rule for ${id}`);
  return rule.handle;
}

/** `-D` for our rule of helper `id`, from a save. */
function deleteLine(save: string, id: string): string | undefined {
  const line = ownedLines(save).find((l) => l.includes(`cth:${id}`) && l.startsWith("-A "));
  return line ? `*raw\n-D ${line.slice(3)}\nCOMMIT\n` : undefined;
}

export function memoryIptablesHarness(): BackendHarness {
  const port = new MemoryIptables();
  const backend = iptablesBackend(port, { catalog });
  return {
    backend,
    async namespace() {
      const ns = `mem-${randomUUID().slice(0, 8)}`;
      await port.createNamespace(ns);
      return ns;
    },
    async held(ns) {
      return {
        ipv4: ownedHelperIds(await port.save(ns, "ipv4")).sort(),
        ipv6: ownedHelperIds(await port.save(ns, "ipv6")).sort(),
      };
    },
    async remove(ns, id) {
      for (const family of FAMILIES) {
        const text = deleteLine(await port.save(ns, family), id);
        if (text) await port.restore(ns, family, text);
      }
    },
    async addForeign(ns) {
      for (const family of FAMILIES) await port.restore(ns, family, NEUTRON_RAW);
      const before = await Promise.all(FAMILIES.map(async (f) => foreignLines(await port.save(ns, f))));
      return async () => {
        const after = await Promise.all(FAMILIES.map(async (f) => foreignLines(await port.save(ns, f))));
        return JSON.stringify(after) === JSON.stringify(before) && before[0]!.length > 0;
      };
    },
    lack(helper) {
      for (const family of FAMILIES) port.lacking[family].add(helper);
    },
    async cleanup() {},
  };
}

/** The lines of a save that are not ours, without comments and counters. */
const foreignLines = (save: string): string[] =>
  save
    .split("\n")
    .filter((line) => line.includes("neutron"))
    .sort();

class InspectableMemoryNft extends MemoryNft {
  /** Every table in `ns` but ours, as JSON (what "not ours" holds). */
  others(ns: string): string {
    return JSON.stringify(
      [...this.tables(ns)]
        .filter(([name]) => name !== TABLE)
        .map(([name, table]) => [name, [...table.objects], table.rules]),
    );
  }
}

const FOREIGN_NFT = [
  "add table inet neutron-test",
  "add chain inet neutron-test prerouting { type filter hook prerouting priority filter; policy accept; }",
  'add ct helper inet neutron-test ftp-tcp { type "ftp" protocol tcp; l3proto inet; }',
  'add rule inet neutron-test prerouting tcp dport 2121 ct helper set "ftp-tcp" comment "neutron"',
  "",
].join("\n");

export function memoryNftHarness(): BackendHarness {
  const port = new InspectableMemoryNft();
  const backend = nftablesBackend(port, { catalog });
  return {
    backend,
    async namespace() {
      const ns = `mem-${randomUUID().slice(0, 8)}`;
      await port.createNamespace(ns);
      return ns;
    },
    async held(ns) {
      return nftHeld(await port.list(ns));
    },
    async remove(ns, id) {
      await port.tamper(
        ns,
        `delete rule inet ${TABLE} prerouting handle ${handleOf(await port.list(ns), id)}\n`,
      );
    },
    async addForeign(ns) {
      await port.tamper(ns, FOREIGN_NFT);
      const before = port.others(ns);
      return async () => port.others(ns) === before && before.includes("neutron");
    },
    lack(helper) {
      port.lacking.add(helper);
    },
    async cleanup() {},
  };
}

/** The real adapter, but this pretend kernel lacks the helpers in `missing` (their rules name no module). */
class KernelIptablesWithout extends ExecIptables {
  readonly missing = new Set<string>();
  private rewrite(text: string): string {
    let out = text;
    for (const helper of this.missing)
      out = out.replaceAll(`--helper ${helper}\n`, "--helper nosuchhelper\n");
    return out;
  }
  override restore(ns: string, family: Family, text: string): Promise<void> {
    return super.restore(ns, family, this.rewrite(text));
  }
  override probeRestore(family: Family, text: string): Promise<void> {
    return super.probeRestore(family, this.rewrite(text));
  }
}

class KernelNftWithout extends ExecNft {
  readonly missing = new Set<string>();
  private rewrite(text: string): string {
    let out = text;
    for (const helper of this.missing) out = out.replaceAll(`{ type "${helper}" `, '{ type "nosuchhelper" ');
    return out;
  }
  override apply(ns: string, text: string): Promise<string> {
    return super.apply(ns, this.rewrite(text));
  }
  override probeApply(text: string): Promise<void> {
    return super.probeApply(this.rewrite(text));
  }
}

export function kernelIptablesHarness(): BackendHarness {
  const sandbox = new Sandbox();
  const port = new KernelIptablesWithout();
  const backend = iptablesBackend(port, { catalog });
  return {
    backend,
    namespace: () => sandbox.namespace("cthbc"),
    async held(ns) {
      return {
        ipv4: ownedHelperIds(await rawSave(ns, "ipv4")).sort(),
        ipv6: ownedHelperIds(await rawSave(ns, "ipv6")).sort(),
      };
    },
    async remove(ns, id) {
      for (const family of FAMILIES) {
        const text = deleteLine(await rawSave(ns, family), id);
        if (text)
          await inNs(ns, [family === "ipv4" ? "iptables-restore" : "ip6tables-restore", "--noflush"], text);
      }
    },
    async addForeign(ns) {
      for (const tool of ["iptables-restore", "ip6tables-restore"])
        await inNs(ns, [tool, "--noflush"], NEUTRON_RAW);
      const read = async () => Promise.all(FAMILIES.map(async (f) => foreignLines(await rawSave(ns, f))));
      const before = await read();
      return async () => JSON.stringify(await read()) === JSON.stringify(before) && before[0]!.length > 0;
    },
    lack(helper) {
      port.missing.add(helper);
    },
    async cleanup() {
      backend.close();
      await sandbox.cleanup();
    },
  };
}

export function kernelNftHarness(): BackendHarness {
  const sandbox = new Sandbox();
  const port = new KernelNftWithout();
  const backend = nftablesBackend(port, { catalog });
  const listing = async (ns: string) => {
    try {
      return (await inNs(ns, ["nft", "-j", "list", "table", "inet", TABLE])).stdout;
    } catch {
      return undefined;
    }
  };
  return {
    backend,
    namespace: () => sandbox.namespace("cthbn"),
    async held(ns) {
      return nftHeld(await listing(ns));
    },
    async remove(ns, id) {
      await inNs(ns, [
        "nft",
        "delete",
        "rule",
        "inet",
        TABLE,
        "prerouting",
        "handle",
        String(handleOf(await listing(ns), id)),
      ]);
    },
    async addForeign(ns) {
      // Neutron's own iptables chain and a table of someone else's, side by side with ours.
      for (const tool of ["iptables-restore", "ip6tables-restore"])
        await inNs(ns, [tool, "--noflush"], NEUTRON_RAW);
      await inNs(ns, ["nft", "-f", "/dev/stdin"], FOREIGN_NFT);
      const read = async () => {
        const { stdout } = await inNs(ns, ["nft", "list", "table", "inet", "neutron-test"]);
        return JSON.stringify([
          stdout,
          ...(await Promise.all(FAMILIES.map(async (f) => foreignLines(await rawSave(ns, f))))),
        ]);
      };
      const before = await read();
      return async () =>
        (await read()) === before && before.includes("neutron-l3-agent") && before.includes("2121");
    },
    lack(helper) {
      port.missing.add(helper);
    },
    async cleanup() {
      backend.close();
      await sandbox.cleanup();
    },
  };
}
