/** Host facts the local stack needs: can the agent use real iptables, and which namespaces exist. */
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const run = promisify(execFile);

const TOOLS = {
  iptables: [
    ["iptables-restore", ["--version"]],
    ["ip6tables-restore", ["--version"]],
    ["iptables-save", ["--version"]],
  ],
  nftables: [
    ["nft", ["--version"]],
    ["nsenter", ["--version"]],
  ],
} as const;

/** Why the real backend cannot run here, or undefined when it can. */
export async function realBackendMissing(backend: keyof typeof TOOLS): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "not running as root";
  for (const [tool, args] of [["ip", ["-V"]] as const, ...TOOLS[backend]]) {
    try {
      await run(tool, [...args], { timeout: 5_000 });
    } catch {
      return `${tool} is not installed`;
    }
  }
  return undefined;
}

export async function listNamespaces(): Promise<Set<string>> {
  try {
    const { stdout } = await run("ip", ["netns", "list"], { timeout: 5_000 });
    // Lines look like "qrouter-<id> (id: 3)" or just the name.
    return new Set(
      stdout
        .split("\n")
        .map((line) => line.trim().split(/\s+/)[0] ?? "")
        .filter((name) => name.length > 0),
    );
  } catch {
    return new Set();
  }
}

export async function deleteNamespace(name: string): Promise<void> {
  await run("ip", ["netns", "delete", name], { timeout: 10_000 });
}
