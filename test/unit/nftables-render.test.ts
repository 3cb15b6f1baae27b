/** The nftables renderer and read-back parser: pure, against nft 1.0.6's own JSON shapes. */
import { describe, expect, it } from "vitest";
import {
  ABSENT,
  helperAtLine,
  objectName,
  readView,
  renderCreate,
  renderEdit,
  renderRewrite,
  tableSpec,
  viewDigest,
  viewMatches,
} from "../../agent/nftables/render.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { planRules } from "../../lib/rules.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";
import { helperRule } from "../support/factories.ts";

const catalog = new HelperCatalog();
const none = { ipv4: new Set<string>(), ipv6: new Set<string>() };
const spec = (helpers: HelperRule[], families: ("ipv4" | "ipv6")[] = ["ipv4", "ipv6"]) =>
  tableSpec(planRules(helpers, families, catalog, none), catalog);

const ID = "11111111-1111-4111-8111-111111111111";
const table = { table: { family: "inet", name: "cth-helpers", handle: 1 } };
const chain = {
  chain: {
    family: "inet",
    table: "cth-helpers",
    name: "prerouting",
    handle: 1,
    type: "filter",
    hook: "prerouting",
    prio: 0,
    policy: "accept",
  },
};
const ftpObject = {
  "ct helper": {
    family: "inet",
    name: "ftp-tcp",
    table: "cth-helpers",
    handle: 2,
    type: "ftp",
    protocol: "tcp",
    l3proto: "inet",
  },
};
const dport = (port: number, protocol = "tcp") => ({
  match: { op: "==", left: { payload: { protocol, field: "dport" } }, right: port },
});
const ftpRule = (extra: Record<string, unknown> = {}) => ({
  rule: {
    family: "inet",
    table: "cth-helpers",
    chain: "prerouting",
    handle: 3,
    comment: `cth:${ID}`,
    expr: [dport(21), { "ct helper": "ftp-tcp" }],
    ...extra,
  },
});
const listing = (...entries: unknown[]) => JSON.stringify({ nftables: [{ metainfo: {} }, ...entries] });
const ftp: HelperRule = { id: ID, protocol: "tcp", port: 21, helper: "ftp" };

describe("rendering", () => {
  it("names objects after helper and protocol, without the dots nft identifiers cannot hold", () => {
    expect(objectName("Q.931", "tcp")).toBe("q931-tcp");
    expect(objectName("netbios-ns", "udp")).toBe("netbiosns-udp");
  });

  it("restricts IPv4-only helpers to IPv4 and gives their objects l3proto ip", () => {
    const irc = helperRule("irc", "tcp", 6667);
    const text = renderCreate(spec([irc]));
    expect(text).toContain('add ct helper inet cth-helpers irc-tcp { type "irc" protocol tcp; l3proto ip; }');
    expect(text).toContain(
      `add rule inet cth-helpers prerouting meta nfproto ipv4 tcp dport 6667 ct helper set "irc-tcp" comment "cth:${irc.id}"`,
    );
  });

  it("restricts every rule to IPv4 on a node that manages IPv4 only", () => {
    expect(renderCreate(spec([ftp], ["ipv4"]))).toContain("meta nfproto ipv4 tcp dport 21");
  });

  it("a table believed absent is created (fails if it is there); otherwise rewritten whole in one transaction", () => {
    expect(renderCreate(spec([ftp])).split("\n")[0]).toBe("create table inet cth-helpers");
    expect(
      renderRewrite(spec([ftp]))
        .split("\n")
        .slice(0, 3),
    ).toEqual(["add table inet cth-helpers", "delete table inet cth-helpers", "add table inet cth-helpers"]);
  });
});

describe("reading back", () => {
  it("parses the kernel's listing into the helpers it holds, with handles", () => {
    const view = readView(listing(table, ftpObject, chain, ftpRule()), catalog);
    expect(view.wellFormed).toBe(true);
    expect(view.rules).toEqual([{ ...ftp, handle: 3 }]);
    expect(viewMatches(view, spec([ftp]))).toBe(true);
    expect(viewDigest(view, ["ipv4", "ipv6"], catalog)).toBe(helperSetDigest([ftp]));
  });

  it.each([
    ["a rule that is not in our form", ftpRule({ expr: [dport(21), { accept: null }] })],
    ["a rule without our comment", ftpRule({ comment: "hand-written" })],
    [
      "a rule whose object's protocol is not its own",
      ftpRule({ expr: [dport(21, "udp"), { "ct helper": "ftp-tcp" }] }),
    ],
    ["a rule naming an object that is not there", ftpRule({ expr: [dport(21), { "ct helper": "sip-udp" }] })],
  ])("%s makes the read-back non-canonical: its digest equals no helper set's", (_, rule) => {
    const view = readView(listing(table, ftpObject, chain, rule), catalog);
    expect(view.wellFormed).toBe(false);
    expect(viewMatches(view, spec([ftp]))).toBe(false);
    expect(viewDigest(view, ["ipv4", "ipv6"], catalog)).not.toBe(helperSetDigest([ftp]));
    expect(viewDigest(view, ["ipv4", "ipv6"], catalog)).not.toBe(helperSetDigest([]));
  });

  it("a dormant table (every chain unhooked) is not ours as-is: its digest is no helper set's", () => {
    const dormant = { table: { ...table.table, flags: "dormant" } };
    const view = readView(listing(dormant, ftpObject, chain, ftpRule()), catalog);
    expect(view.wellFormed).toBe(false);
    expect(viewMatches(view, spec([ftp]))).toBe(false);
    expect(viewDigest(view, ["ipv4", "ipv6"], catalog)).not.toBe(helperSetDigest([ftp]));
  });

  it("a foreign chain in our table is not ours: the next write replaces the table whole", () => {
    const extra = { chain: { ...chain.chain, name: "output", handle: 9, hook: "output" } };
    const view = readView(listing(table, ftpObject, chain, extra, ftpRule()), catalog);
    expect(view.wellFormed).toBe(false);
    expect(renderEdit(view, spec([ftp])).kind).toBe("rewrite");
  });

  it("two rules for one id, or one family's port twice, are non-canonical", () => {
    const twice = readView(listing(table, ftpObject, chain, ftpRule(), ftpRule({ handle: 4 })), catalog);
    expect(twice.wellFormed).toBe(false);
  });

  it("an IPv4-only helper not restricted to IPv4 is not what we write: its digest is no helper set's", () => {
    const irc = { ...ftpObject["ct helper"], name: "irc-tcp", type: "irc", l3proto: "ip" };
    const rule = ftpRule({ expr: [dport(6667), { "ct helper": "irc-tcp" }] });
    const view = readView(listing(table, { "ct helper": irc }, chain, rule), catalog);
    const held: HelperRule = { id: ID, protocol: "tcp", port: 6667, helper: "irc" };
    expect(viewDigest(view, ["ipv4", "ipv6"], catalog)).not.toBe(helperSetDigest([held]));
  });

  it("an unused object changes nothing the kernel does (digest of the rules) but is removed by the next edit", () => {
    const sip = {
      "ct helper": { ...ftpObject["ct helper"], name: "sip-udp", type: "sip", protocol: "udp", handle: 5 },
    };
    const view = readView(listing(table, ftpObject, sip, chain, ftpRule()), catalog);
    expect(viewDigest(view, ["ipv4", "ipv6"], catalog)).toBe(helperSetDigest([ftp]));
    expect(viewMatches(view, spec([ftp]))).toBe(false);
    const edit = renderEdit(view, spec([ftp]));
    expect(edit.kind === "write" && edit.text).toBe("delete ct helper inet cth-helpers sip-udp\n");
  });
});

describe("editing in place", () => {
  const view = readView(listing(table, ftpObject, chain, ftpRule()), catalog);

  it("nothing to write for a set already in place", () => {
    expect(renderEdit(view, spec([ftp])).kind).toBe("none");
  });

  it("adds a helper with its object and deletes by handle, never touching what stays", () => {
    const tftp = helperRule("tftp", "udp", 69);
    const edit = renderEdit(view, spec([tftp]));
    expect(edit.kind).toBe("write");
    if (edit.kind !== "write") return;
    expect(edit.text.split("\n")).toEqual([
      'add ct helper inet cth-helpers tftp-udp { type "tftp" protocol udp; l3proto inet; }',
      "delete rule inet cth-helpers prerouting handle 3",
      `add rule inet cth-helpers prerouting udp dport 69 ct helper set "tftp-udp" comment "cth:${tftp.id}"`,
      "delete ct helper inet cth-helpers ftp-tcp",
      "",
    ]);
    expect([...edit.deleted.rules]).toEqual([3]);
  });

  it("an echo that adds nothing and deletes a handle leaves the view without that rule", () => {
    const after = readView("", catalog, view, { rules: new Set([3]), objects: new Set(["ftp-tcp"]) });
    expect(after.rules).toEqual([]);
    expect(after.objects.size).toBe(0);
  });

  it("the empty set on a table that is gone needs no write", () => {
    expect(renderEdit(ABSENT, spec([])).kind).toBe("none");
  });
});

describe("errors", () => {
  it("maps a missing helper module back to the object's line", () => {
    const text = renderCreate(spec([ftp, helperRule("sip", "udp", 5060)]));
    const line = text.split("\n").findIndex((l) => l.includes('type "sip"')) + 1;
    const stderr = `/tmp/cth-nft-x/1.nft:${line}:1-80: Error: Could not process rule: No such file or directory\n`;
    expect(helperAtLine(text, stderr)).toBe("sip");
  });

  it("does not blame a helper for an error on another line, or for another error", () => {
    const text = renderCreate(spec([ftp]));
    expect(
      helperAtLine(text, "/tmp/x.nft:1:19-19: Error: Could not process rule: File exists\n"),
    ).toBeUndefined();
    expect(
      helperAtLine(text, "/tmp/x.nft:1:1-10: Error: Could not process rule: No such file or directory\n"),
    ).toBeUndefined();
  });
});
