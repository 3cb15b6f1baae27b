/**
 * The IptablesPort contract. Runs against the in-memory model (test/unit/agent-iptables-memory.test.ts)
 * and against the real adapter in real namespaces (test/kernel/agent-iptables-contract.test.ts), so the
 * model the unit tests lean on is held to what the kernel does.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeEach, expect, it } from "vitest";
import { NamespaceMissingError } from "../../agent/backend.ts";
import { type IptablesPort, RestoreError } from "../../agent/iptables/port.ts";
import {
  expectedOwnedLines,
  helperAtLine,
  isMissingHelperError,
  JUMP_LINE,
  ownedHelperIds,
  ownedLines,
  parseOwnedRules,
  readBackDigest,
  renderRestore,
  ruleLine,
} from "../../agent/iptables/render.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { planFamily } from "../../lib/rules.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";

const catalog = new HelperCatalog();

const rule = (helper: string, protocol: "tcp" | "udp", port: number): HelperRule => ({
  id: randomUUID(),
  protocol,
  port,
  helper,
});

/** Rules without the `# Generated/Completed` lines, which carry a timestamp. */
export const stable = (save: string): string =>
  save
    .split("\n")
    .filter((line) => !line.startsWith("#"))
    .join("\n");

export function iptablesPortContract(makePort: () => IptablesPort, prefix: string): void {
  const port = makePort();
  const created: string[] = [];
  let ns = "";

  beforeEach(async () => {
    ns = `${prefix}-${randomUUID().slice(0, 8)}`;
    created.push(ns);
    await port.createNamespace(ns);
  });

  afterAll(async () => {
    for (const name of created) await port.deleteNamespace(name);
  });

  const apply = async (rules: readonly HelperRule[], family: "ipv4" | "ipv6" = "ipv4") => {
    const text = renderRestore(rules, await port.save(ns, family));
    if (text !== undefined) await port.restore(ns, family, text);
    return text;
  };

  it("creates and deletes namespaces idempotently", async () => {
    const other = `${prefix}-${randomUUID().slice(0, 8)}`;
    created.push(other);
    expect(await port.namespaceExists(other)).toBe(false);
    await port.createNamespace(other);
    await port.createNamespace(other);
    expect(await port.namespaceExists(other)).toBe(true);
    await port.deleteNamespace(other);
    await port.deleteNamespace(other);
    expect(await port.namespaceExists(other)).toBe(false);
  });

  it("a fresh namespace shows the raw builtins and nothing of ours", async () => {
    for (const family of ["ipv4", "ipv6"] as const) {
      const save = await port.save(ns, family);
      expect(save).toContain("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
      expect(ownedLines(save)).toEqual([]);
    }
  });

  it("reads back exactly the rendered lines, in both families, and then renders nothing", async () => {
    const helpers = [
      rule("ftp", "tcp", 21),
      rule("tftp", "udp", 69),
      rule("irc", "tcp", 6667),
      rule("Q.931", "tcp", 1720),
    ];
    for (const family of ["ipv4", "ipv6"] as const) {
      const plan = planFamily(helpers, family, catalog);
      expect(await apply(plan.rules, family)).toBeDefined();
      const save = await port.save(ns, family);
      expect(ownedLines(save)).toEqual(expectedOwnedLines(plan.rules));
      expect(renderRestore(plan.rules, save)).toBeUndefined();
    }
    expect(ownedHelperIds(await port.save(ns, "ipv6"))).not.toContain(helpers[2]!.id);
    expect(ownedHelperIds(await port.save(ns, "ipv4"))).toContain(helpers[2]!.id);
  });

  it("a read-back parses back into the helpers written; its digest is the set's, and a hand edit changes it", async () => {
    const helpers = [
      rule("ftp", "tcp", 21),
      rule("snmp", "udp", 161),
      rule("RAS", "udp", 1719),
      rule("netbios-ns", "udp", 137),
    ];
    for (const family of ["ipv4", "ipv6"] as const)
      await apply(planFamily(helpers, family, catalog).rules, family);
    const saves = { ipv4: await port.save(ns, "ipv4"), ipv6: await port.save(ns, "ipv6") };
    const parsed = parseOwnedRules(saves.ipv4);
    expect(parsed.canonical).toBe(true);
    expect([...parsed.rules].sort((a, b) => (a.id < b.id ? -1 : 1))).toEqual(
      [...helpers].sort((a, b) => (a.id < b.id ? -1 : 1)),
    );
    expect(readBackDigest(saves, catalog)).toBe(helperSetDigest(helpers));
    // By hand: the dual-stack ftp rule deleted from ip6tables only. IPv4 still has it; the set is not held.
    await port.restore(
      ns,
      "ipv6",
      `*raw\n-D CTH-HELPERS ${ruleLine(helpers[0]!).slice("-A CTH-HELPERS ".length)}\nCOMMIT\n`,
    );
    const edited = { ...saves, ipv6: await port.save(ns, "ipv6") };
    expect(readBackDigest(edited, catalog)).not.toBe(helperSetDigest(helpers));
    expect(readBackDigest(edited, catalog)).toBe(helperSetDigest(helpers.slice(1)));
  });

  it("replaces the chain whole and keeps exactly one jump", async () => {
    await apply([rule("ftp", "tcp", 21), rule("sane", "tcp", 6566)]);
    const next = [rule("sip", "udp", 5060)];
    await apply(next);
    const save = await port.save(ns, "ipv4");
    expect(ownedLines(save)).toEqual(expectedOwnedLines(next));
    expect(save.split("\n").filter((line) => line === JUMP_LINE)).toHaveLength(1);
  });

  it("edits a large chain in place (deletes, then inserts at their positions) and reads back exactly", async () => {
    const many = Array.from({ length: 40 }, (_, i) => rule("ftp", "tcp", 2000 + i * 10));
    await apply(many);
    // One removed, one moved to another port, two new ones at the front, the middle and the end.
    const next = [
      rule("tftp", "udp", 69),
      ...many.filter((_, i) => i !== 3 && i !== 20),
      { ...many[20]!, port: 2205 },
      rule("sane", "tcp", 9999),
    ];
    const plan = planFamily(next, "ipv4", catalog);
    const text = renderRestore(plan.rules, await port.save(ns, "ipv4"))!;
    expect(text).not.toContain(":CTH-HELPERS");
    expect(text.split("\n").filter((line) => line.startsWith("-D ")).length).toBe(2);
    expect(text.split("\n").filter((line) => line.startsWith("-I ")).length).toBe(3);
    await port.restore(ns, "ipv4", text);
    const save = await port.save(ns, "ipv4");
    expect(ownedLines(save)).toEqual(expectedOwnedLines(plan.rules));
    expect(renderRestore(plan.rules, save)).toBeUndefined();
  });

  it("an edit against a stale view fails whole and changes nothing", async () => {
    const many = Array.from({ length: 10 }, (_, i) => rule("ftp", "tcp", 3000 + i));
    await apply(many);
    const view = await port.save(ns, "ipv4");
    // Someone removes a rule behind the agent's back; the edit computed from the old view deletes it again.
    await port.restore(ns, "ipv4", `*raw\n${ruleLine(many[4]!).replace(/^-A /, "-D ")}\nCOMMIT\n`);
    const before = stable(await port.save(ns, "ipv4"));
    // From the old view: delete rule 4 (already gone) and insert a new one, in one transaction.
    const edit = renderRestore([...many.slice(0, 4), ...many.slice(5), rule("sip", "tcp", 5060)], view)!;
    expect(edit).toContain("-D CTH-HELPERS");
    expect(edit).toContain("-I CTH-HELPERS");
    const error = await port.restore(ns, "ipv4", edit).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(RestoreError);
    expect(stable(await port.save(ns, "ipv4"))).toBe(before);
  });

  it("collapses duplicate jumps someone added by hand", async () => {
    const rules = [rule("ftp", "tcp", 21)];
    await apply(rules);
    await port.restore(ns, "ipv4", `*raw\n${JUMP_LINE}\n${JUMP_LINE}\nCOMMIT\n`);
    expect((await port.save(ns, "ipv4")).split("\n").filter((line) => line === JUMP_LINE)).toHaveLength(3);
    await apply(rules);
    expect(ownedLines(await port.save(ns, "ipv4"))).toEqual(expectedOwnedLines(rules));
  });

  it("an empty snapshot removes rules, jump and chain, and then renders nothing", async () => {
    const before = stable(await port.save(ns, "ipv4"));
    await apply([rule("ftp", "tcp", 21)]);
    await apply([]);
    const after = await port.save(ns, "ipv4");
    expect(ownedLines(after)).toEqual([]);
    expect(stable(after)).toBe(before);
    expect(renderRestore([], after)).toBeUndefined();
  });

  it("a rule naming a helper the kernel lacks fails the whole transaction, naming its line", async () => {
    const good = [rule("ftp", "tcp", 21)];
    await apply(good);
    const before = stable(await port.save(ns, "ipv4"));
    const bad = rule("ftp", "tcp", 2121);
    const text = renderRestore([...good, bad, rule("ftp", "tcp", 3000)], await port.save(ns, "ipv4"), {
      whole: true,
    })!.replace(
      "--helper ftp\n-A CTH-HELPERS -p tcp -m tcp --dport 3000",
      "--helper nosuchhelper\n-A CTH-HELPERS -p tcp -m tcp --dport 3000",
    );
    const error = await port.restore(ns, "ipv4", text).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(RestoreError);
    const stderr = (error as RestoreError).stderr;
    expect(isMissingHelperError(stderr)).toBe(true);
    expect(helperAtLine(text, stderr)).toEqual({ id: bad.id, helper: "nosuchhelper" });
    expect(stable(await port.save(ns, "ipv4"))).toBe(before);
  });

  it("deleting a rule that is not there fails and commits nothing", async () => {
    await apply([rule("ftp", "tcp", 21)]);
    const before = stable(await port.save(ns, "ipv4"));
    await expect(
      port.restore(ns, "ipv4", "*raw\n:CTH-HELPERS - [0:0]\n-D OUTPUT -j CTH-HELPERS\nCOMMIT\n"),
    ).rejects.toBeInstanceOf(RestoreError);
    expect(stable(await port.save(ns, "ipv4"))).toBe(before);
  });

  it("save and restore in a missing namespace raise NamespaceMissingError", async () => {
    const gone = `${prefix}-gone-${randomUUID().slice(0, 6)}`;
    await expect(port.save(gone, "ipv4")).rejects.toBeInstanceOf(NamespaceMissingError);
    await expect(port.restore(gone, "ipv6", "*raw\nCOMMIT\n")).rejects.toBeInstanceOf(NamespaceMissingError);
    expect(await port.namespaceExists(gone)).toBe(false);
  });

  it("probeRestore commits in a throwaway namespace: errors name their line, nothing shows anywhere", async () => {
    await apply([rule("ftp", "tcp", 21)]);
    const before = stable(await port.save(ns, "ipv4"));
    const good = renderRestore([rule("tftp", "udp", 69), rule("sip", "tcp", 5060)], "")!;
    await port.probeRestore("ipv4", good);
    await port.probeRestore("ipv6", good);
    const bad = rule("ftp", "tcp", 2121);
    const text = renderRestore([rule("ftp", "tcp", 21), bad], "")!.replace(
      /--helper ftp\nCOMMIT/,
      "--helper nosuchhelper\nCOMMIT",
    );
    const error = await port.probeRestore("ipv4", text).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(RestoreError);
    expect(helperAtLine(text, (error as RestoreError).stderr)).toEqual({
      id: bad.id,
      helper: "nosuchhelper",
    });
    expect(stable(await port.save(ns, "ipv4"))).toBe(before);
  });

  it("refuses unsafe namespace names before running anything", async () => {
    await expect(port.save("../etc", "ipv4")).rejects.toThrow(/unsafe namespace name/);
    await expect(port.namespaceExists("a b")).rejects.toThrow(/unsafe namespace name/);
  });
}
