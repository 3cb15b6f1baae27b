/**
 * Proves rendered text against the real kernel in bulk: many snapshots go into one iptables-restore per family
 * inside a namespace the caller created. `iptables-restore --test` alone is not enough on the nf_tables
 * backend: it parses but never asks the kernel, so an unknown helper passes it (verified on 1.8.9). So each
 * batch is (1) run unchanged through `--test`, then (2) committed for real with each snapshot's chain renamed
 * to its own name, and read back with iptables-save: every rule must be there, exactly as rendered.
 */
import { execFileSync } from "node:child_process";
import { afterAll, beforeAll, expect, it } from "vitest";
import { OWNED_CHAIN, renderRestore } from "../../agent/iptables/render.ts";
import type { Family, HelperCatalog } from "../../lib/catalog.ts";
import { FAMILIES, planFamily } from "../../lib/rules.ts";
import type { HelperRule, RouterSyncMessage } from "../../lib/schemas/index.ts";
import { describeKernel } from "../support/requirements.ts";

export interface KernelCase {
  readonly family: Family;
  readonly rules: readonly HelperRule[];
}

const tools = (family: Family) =>
  family === "ipv4"
    ? { restore: "iptables-restore", save: "iptables-save" }
    : { restore: "ip6tables-restore", save: "ip6tables-save" };

function exec(ns: string, args: string[], input?: string): string {
  return execFileSync("ip", ["netns", "exec", ns, ...args], {
    input,
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
    stdio: ["pipe", "pipe", "pipe"],
  });
}

export interface KernelVerdict {
  readonly restoreCalls: number;
  readonly rulesChecked: number;
  /** Human-readable mismatches; empty when the kernel holds exactly what was rendered. */
  readonly problems: string[];
}

/** Checks every case in `ns` (which must be empty of our chains); leaves the namespace flushed of them. */
export function verifyInKernel(ns: string, cases: readonly KernelCase[], batchSize = 200): KernelVerdict {
  const problems: string[] = [];
  let restoreCalls = 0;
  let rulesChecked = 0;
  for (const family of ["ipv4", "ipv6"] as const) {
    const mine = cases.filter((c) => c.family === family && c.rules.length > 0);
    for (let start = 0; start < mine.length; start += batchSize) {
      const batch = mine.slice(start, start + batchSize);
      const texts = batch.map((c) => renderRestore(c.rules, "") ?? "");
      // (1) The renderer's own text, unchanged, through the parser.
      try {
        exec(ns, [tools(family).restore, "--test", "--noflush"], texts.join(""));
      } catch (error) {
        problems.push(`${family} --test rejected a batch: ${(error as { stderr?: string }).stderr ?? error}`);
      }
      restoreCalls++;
      // (2) Committed for real, one chain per case, so every rule meets the kernel.
      const chains = batch.map((_, index) => `CTHP-${start + index}`);
      const renamed = texts.map((text, index) => text.replaceAll(OWNED_CHAIN, chains[index]!)).join("");
      try {
        exec(ns, [tools(family).restore, "--noflush", "--wait"], renamed);
      } catch (error) {
        problems.push(`${family} commit rejected a batch: ${(error as { stderr?: string }).stderr ?? error}`);
        continue;
      }
      restoreCalls++;
      const save = exec(ns, [tools(family).save, "-t", "raw"]).split("\n");
      chains.forEach((chain, index) => {
        const expected = texts[index]!.split("\n")
          .filter((line) => line.startsWith(`-A ${OWNED_CHAIN} `))
          .map((line) => line.replace(`-A ${OWNED_CHAIN} `, `-A ${chain} `));
        const actual = save.filter((line) => line.startsWith(`-A ${chain} `));
        rulesChecked += expected.length;
        if (expected.join("\n") !== actual.join("\n")) {
          problems.push(
            `${family} ${chain}: read back differs\nexpected:\n${expected.join("\n")}\nactual:\n${actual.join("\n")}`,
          );
        }
      });
      // Clean up this batch inside one transaction (jumps first, then the emptied chains).
      const cleanup = [
        "*raw",
        ...chains.map((chain) => `-D PREROUTING -j ${chain}`),
        ...chains.map((chain) => `:${chain} - [0:0]`),
        ...chains.map((chain) => `-X ${chain}`),
        "COMMIT",
        "",
      ].join("\n");
      exec(ns, [tools(family).restore, "--noflush", "--wait"], cleanup);
      restoreCalls++;
    }
  }
  return { restoreCalls, rulesChecked, problems };
}

export function createNamespace(name: string): void {
  execFileSync("ip", ["netns", "add", name]);
}

export function deleteNamespace(name: string): void {
  try {
    execFileSync("ip", ["netns", "delete", name], { stdio: "ignore" });
  } catch {
    // already gone
  }
}

/**
 * The kernel half of a hostile suite: every snapshot the property above it accepted (collected into
 * `accepted`) goes through `iptables-restore --test` and a real commit in a namespace of its own.
 */
export function describeAcceptedInKernel(
  what: string,
  accepted: readonly RouterSyncMessage[],
  catalog: HelperCatalog,
): void {
  describeKernel(`accepted ${what} render to rules the real kernel takes`, () => {
    const ns = `cthp-${what.split(" ")[0]!.toLowerCase()}-${process.pid}`;
    beforeAll(() => createNamespace(ns));
    afterAll(() => deleteNamespace(ns));

    it("iptables-restore (--test, then a real commit) accepts every accepted snapshot, read back exactly", () => {
      expect(accepted.length, "run the whole file: the property above collects the sample").toBeGreaterThan(
        0,
      );
      const cases: KernelCase[] = accepted.flatMap((message) =>
        FAMILIES.map((family) => ({ family, rules: planFamily(message.helpers, family, catalog).rules })),
      );
      const verdict = verifyInKernel(ns, cases);
      console.log(
        `[hostile] ${what} kernel sample: ${accepted.length} snapshots, ${verdict.rulesChecked} rules, ${verdict.restoreCalls} restore calls`,
      );
      expect(verdict.problems).toEqual([]);
      expect(verdict.rulesChecked).toBeGreaterThan(100);
    }, 120_000);
  });
}
