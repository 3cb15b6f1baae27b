/**
 * The one stateful in-memory NftPort: a model of each namespace's nftables tables that interprets the
 * command forms this backend writes (one command per line; render.ts) the way nftables 1.0.6 does,
 * all-or-nothing per transaction, and answers `--echo` and listings in nft's JSON. The same contract spec
 * runs against it (unit) and against the real adapter in a namespace (kernel suite). It refuses anything
 * else, so a renderer bug cannot hide behind it.
 */
import { KERNEL_HELPERS } from "../../lib/catalog.ts";
import { assertNamespaceName, NamespaceMissingError } from "../backend.ts";
import { NftError, type NftPort } from "./port.ts";
import { CHAIN, TABLE } from "./render.ts";

interface ModelObject {
  readonly handle: number;
  readonly type: string;
  readonly protocol: string;
  readonly l3proto: string;
}

interface ModelRule {
  readonly handle: number;
  readonly comment: string;
  readonly expr: unknown[];
}

interface ModelTable {
  readonly handle: number;
  nextHandle: number;
  chain?: { readonly handle: number } | undefined;
  readonly objects: Map<string, ModelObject>;
  readonly rules: ModelRule[];
}

type Tables = Map<string, ModelTable>;

const NAME = "[A-Za-z][A-Za-z0-9_-]{0,31}";
const TABLE_RE = new RegExp(`^(create|add|delete) table inet (${NAME})$`);
const CHAIN_RE = new RegExp(
  `^add chain inet (${NAME}) (${NAME}) \\{ type filter hook prerouting priority filter; policy accept; \\}$`,
);
const OBJECT_RE = new RegExp(
  `^add ct helper inet (${NAME}) (${NAME}) \\{ type "([A-Za-z0-9.-]{1,32})" protocol (tcp|udp); l3proto (inet|ip); \\}$`,
);
const DELETE_OBJECT_RE = new RegExp(`^delete ct helper inet (${NAME}) (${NAME})$`);
const RULE_RE = new RegExp(
  `^add rule inet (${NAME}) (${NAME}) (?:meta nfproto (ipv4|ipv6) )?(tcp|udp) dport (\\d{1,5}) ct helper set "(${NAME})" comment "([A-Za-z0-9:-]{1,128})"$`,
);
const DELETE_RULE_RE = new RegExp(`^delete rule inet (${NAME}) (${NAME}) handle (\\d{1,9})$`);

function clone(tables: Tables): Tables {
  const copy: Tables = new Map();
  for (const [name, table] of tables) {
    copy.set(name, { ...table, objects: new Map(table.objects), rules: [...table.rules] });
  }
  return copy;
}

export class MemoryNft implements NftPort {
  protected readonly namespaces = new Map<string, Tables>();
  /** Kernel helper names this pretend kernel lacks (default: it has every catalog helper). */
  readonly lacking = new Set<string>();
  readonly knownHelpers = new Set(KERNEL_HELPERS.map((spec) => spec.name));
  /** Successful transactions, per namespace (tests assert "nothing was written"). */
  readonly applies = new Map<string, number>();
  private nextTableHandle = 1;

  async namespaceExists(ns: string): Promise<boolean> {
    assertNamespaceName(ns);
    return this.namespaces.has(ns);
  }

  async createNamespace(ns: string): Promise<void> {
    assertNamespaceName(ns);
    if (!this.namespaces.has(ns)) this.namespaces.set(ns, new Map());
  }

  async deleteNamespace(ns: string): Promise<void> {
    assertNamespaceName(ns);
    this.namespaces.delete(ns);
  }

  protected tables(ns: string): Tables {
    assertNamespaceName(ns);
    const tables = this.namespaces.get(ns);
    if (!tables) throw new NamespaceMissingError(ns);
    return tables;
  }

  async apply(ns: string, text: string): Promise<string> {
    const next = clone(this.tables(ns));
    const echo = this.interpret(next, text);
    this.namespaces.set(ns, next);
    this.applies.set(ns, (this.applies.get(ns) ?? 0) + 1);
    return JSON.stringify({ nftables: echo });
  }

  async probeApply(text: string): Promise<void> {
    this.interpret(new Map(), text);
  }

  async list(ns: string): Promise<string | undefined> {
    const table = this.tables(ns).get(TABLE);
    if (!table) return undefined;
    return JSON.stringify({
      nftables: [{ metainfo: { version: "1.0.6", json_schema_version: 1 } }, ...listing(TABLE, table)],
    });
  }

  /** Hand edits, as an operator (or an attacker with root in the namespace) makes them: tests only. */
  async tamper(ns: string, text: string): Promise<void> {
    const next = clone(this.tables(ns));
    this.interpret(next, text);
    this.namespaces.set(ns, next);
  }

  private interpret(tables: Tables, text: string): unknown[] {
    const echo: unknown[] = [];
    const lines = text.split("\n");
    const fail = (n: number, why: string): never => {
      throw new NftError(
        `/tmp/cth.nft:${n}:1-${(lines[n - 1] ?? "").length}: Error: ${why}\n${lines[n - 1]}\n`,
      );
    };
    const process = "Could not process rule:";
    for (const [index, raw] of lines.entries()) {
      const n = index + 1;
      const line = raw.trim();
      if (line === "") continue;
      const tableCmd = TABLE_RE.exec(line);
      if (tableCmd) {
        const [, verb, name] = tableCmd as unknown as [string, string, string];
        const existing = tables.get(name);
        if (verb === "delete") {
          if (!existing) fail(n, `${process} No such file or directory`);
          tables.delete(name);
          continue;
        }
        if (existing && verb === "create") fail(n, `${process} File exists`);
        const table = existing ?? {
          handle: this.nextTableHandle++,
          nextHandle: 1,
          objects: new Map(),
          rules: [],
        };
        tables.set(name, table);
        // As the kernel: only what a command created is echoed (an `add` of an existing table is not).
        if (!existing) echo.push({ [verb]: { table: { family: "inet", name, handle: table.handle } } });
        continue;
      }
      const chain = CHAIN_RE.exec(line);
      if (chain) {
        const [, tableName, name] = chain as unknown as [string, string, string];
        const table = tables.get(tableName) ?? fail(n, `${process} No such file or directory`);
        if (name !== CHAIN) fail(n, "the in-memory model holds only the prerouting base chain");
        if (table.chain) continue;
        table.chain = { handle: table.nextHandle++ };
        echo.push({
          add: {
            chain: {
              family: "inet",
              table: tableName,
              name,
              handle: table.chain.handle,
              type: "filter",
              hook: "prerouting",
              prio: 0,
              policy: "accept",
            },
          },
        });
        continue;
      }
      const object = OBJECT_RE.exec(line);
      if (object) {
        const [, tableName, name, type, protocol, l3proto] = object as unknown as string[] as [
          string,
          string,
          string,
          string,
          string,
          string,
        ];
        const table = tables.get(tableName) ?? fail(n, `${process} No such file or directory`);
        if (!this.knownHelpers.has(type) || this.lacking.has(type))
          fail(n, `${process} No such file or directory`);
        const existing = table.objects.get(name);
        if (
          existing &&
          (existing.type !== type || existing.protocol !== protocol || existing.l3proto !== l3proto)
        ) {
          fail(n, `${process} File exists`);
        }
        if (existing) continue;
        const created = { handle: table.nextHandle++, type, protocol, l3proto };
        table.objects.set(name, created);
        echo.push({ add: { "ct helper": objectJson(tableName, name, created) } });
        continue;
      }
      const deleteObject = DELETE_OBJECT_RE.exec(line);
      if (deleteObject) {
        const [, tableName, name] = deleteObject as unknown as [string, string, string];
        const table = tables.get(tableName) ?? fail(n, `${process} No such file or directory`);
        if (!table.objects.has(name)) fail(n, `${process} No such file or directory`);
        const inUse = table.rules.some((rule) =>
          rule.expr.some((part) => (part as Record<string, unknown>)["ct helper"] === name),
        );
        if (inUse) fail(n, `${process} Device or resource busy`);
        table.objects.delete(name);
        continue;
      }
      const rule = RULE_RE.exec(line);
      if (rule) {
        const [, tableName, chainName, only, protocol, port, objectName, comment] = rule as unknown as (
          | string
          | undefined
        )[];
        const table = tables.get(tableName!) ?? fail(n, `${process} No such file or directory`);
        if (chainName !== CHAIN || !table.chain) fail(n, `${process} No such file or directory`);
        if (Number(port) < 1 || Number(port) > 65_535) fail(n, "syntax error, value out of range");
        if (!table.objects.has(objectName!)) fail(n, `${process} No such file or directory`);
        const expr: unknown[] = [
          ...(only ? [{ match: { op: "==", left: { meta: { key: "nfproto" } }, right: only } }] : []),
          { match: { op: "==", left: { payload: { protocol, field: "dport" } }, right: Number(port) } },
          { "ct helper": objectName },
        ];
        const added: ModelRule = { handle: table.nextHandle++, comment: comment!, expr };
        table.rules.push(added);
        echo.push({ add: { rule: ruleJson(tableName!, added) } });
        continue;
      }
      const deleteRule = DELETE_RULE_RE.exec(line);
      if (deleteRule) {
        const [, tableName, chainName, handle] = deleteRule as unknown as [string, string, string, string];
        const table = tables.get(tableName) ?? fail(n, `${process} No such file or directory`);
        const at = table.rules.findIndex((entry) => entry.handle === Number(handle));
        if (chainName !== CHAIN || at < 0) fail(n, `${process} No such file or directory`);
        table.rules.splice(at, 1);
        echo.push({
          delete: { rule: { family: "inet", table: tableName, chain: chainName, handle: Number(handle) } },
        });
        continue;
      }
      fail(n, "syntax error (the in-memory model accepts only the command forms render.ts writes)");
    }
    return echo;
  }
}

function objectJson(table: string, name: string, object: ModelObject): Record<string, unknown> {
  const { handle, type, protocol, l3proto } = object;
  return { family: "inet", name, table, handle, type, protocol, l3proto };
}

function ruleJson(table: string, rule: ModelRule): Record<string, unknown> {
  return { family: "inet", table, chain: CHAIN, handle: rule.handle, comment: rule.comment, expr: rule.expr };
}

/** As `nft -j list table` prints it: the table, its objects, its chain, its rules. */
function listing(name: string, table: ModelTable): unknown[] {
  const out: unknown[] = [{ table: { family: "inet", name, handle: table.handle } }];
  for (const [objectName, object] of table.objects)
    out.push({ "ct helper": objectJson(name, objectName, object) });
  if (table.chain) {
    out.push({
      chain: {
        family: "inet",
        table: name,
        name: CHAIN,
        handle: table.chain.handle,
        type: "filter",
        hook: "prerouting",
        prio: 0,
        policy: "accept",
      },
    });
  }
  for (const rule of table.rules) out.push({ rule: ruleJson(name, rule) });
  return out;
}
