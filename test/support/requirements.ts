/**
 * Tests that need root, iptables or an emulator must FAIL (not skip) in CI when the thing is missing:
 * a green run that tested nothing is a defect. Locally, without them, they skip with a reason.
 */
import { execFileSync } from "node:child_process";
import { describe } from "vitest";

const inCi = process.env.CI === "true";

function has(command: string, args: string[] = ["--version"]): boolean {
  try {
    execFileSync(command, args, { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

export function kernelMissing(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root";
  for (const tool of [
    "ip",
    "iptables-restore",
    "ip6tables-restore",
    "iptables-save",
    "conntrack",
    "unshare",
    "nsenter",
    "nft",
  ]) {
    if (!has(tool, tool === "ip" ? ["-V"] : ["--version"])) return `needs ${tool}`;
  }
  return undefined;
}

/** `describe` for suites that need root and iptables: fails in CI without them, skips locally. */
export function describeKernel(name: string, body: () => void): void {
  const missing = kernelMissing();
  if (missing && inCi) {
    describe(name, () => {
      throw new Error(`CI=true but this kernel suite ${missing}`);
    });
    return;
  }
  describe.skipIf(missing !== undefined)(missing ? `${name} (skipped: ${missing})` : name, body);
}

/** `describe` for suites that need what `missing` names (e.g. motoMissing()): fails in CI, skips locally. */
export function describeNeeding(missing: string | undefined, name: string, body: () => void): void {
  if (missing && inCi) {
    describe(name, () => {
      throw new Error(`CI=true but this suite ${missing}`);
    });
    return;
  }
  describe.skipIf(missing !== undefined)(missing ? `${name} (skipped: ${missing})` : name, body);
}
