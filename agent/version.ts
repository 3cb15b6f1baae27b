/**
 * The agent's version: injected by scripts/build-agent.ts (esbuild `define`) into the bundle, which has no
 * package.json beside it; read from the checkout's package.json when run from source (tsx, tests).
 */
import { readFileSync } from "node:fs";

declare const __CTH_AGENT_VERSION__: string | undefined;

function sourceVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
    version?: unknown;
  };
  return typeof pkg.version === "string" ? pkg.version : "unknown";
}

export const AGENT_VERSION: string =
  typeof __CTH_AGENT_VERSION__ === "string" ? __CTH_AGENT_VERSION__ : sourceVersion();
