/**
 * Builds the node agent as one ESM file (AWS SDK included: network nodes have Node 22 but no node_modules),
 * and beside it its command helper (agent/command-helper.ts), which the bundle starts from its own directory:
 *   npx tsx scripts/build-agent.ts [--outfile dist/cth-agent.mjs]   # + dist/cth-agent-helper.mjs
 * Install both with infra/cth-agent.service (README "Agent installation").
 */
import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { build } from "esbuild";
import { HELPER_BUNDLE_FILE } from "../agent/exec-helper.ts";

const HELPER_SOURCE = "agent/command-helper.ts";
// The bundle has no package.json beside it: agent/version.ts reads this constant instead.
const { version } = JSON.parse(readFileSync("package.json", "utf8")) as { version: string };

const { values } = parseArgs({ options: { outfile: { type: "string", default: "dist/cth-agent.mjs" } } });
// The bundle looks for its helper under this one name beside itself (exec-helper.ts commandHelperPath).
const helperOutfile = join(dirname(values.outfile), HELPER_BUNDLE_FILE);
if (basename(values.outfile) === HELPER_BUNDLE_FILE) {
  throw new Error(`--outfile must not be named ${HELPER_BUNDLE_FILE}: that is the command helper's file`);
}

const [agent, helper] = await Promise.all([
  build({
    entryPoints: ["agent/cli.ts"],
    outfile: values.outfile,
    bundle: true,
    platform: "node",
    target: "node22",
    format: "esm",
    minify: true,
    sourcemap: "linked",
    metafile: true,
    define: { __CTH_AGENT_VERSION__: JSON.stringify(version) },
    // Some CommonJS dependencies call require(); an ESM bundle must define it.
    banner: {
      js: "import { createRequire as __cthCreateRequire } from 'node:module'; const require = __cthCreateRequire(import.meta.url);",
    },
  }),
  // The helper only imports node's built-ins (left as imports on platform node): its build is its own
  // source with the types stripped, small and readable on the node.
  build({
    entryPoints: [HELPER_SOURCE],
    outfile: helperOutfile,
    bundle: true,
    platform: "node",
    target: "node22",
    format: "esm",
    metafile: true,
  }),
]);
// Anything more than its own source would make the helper more than a bare node.
const helperInputs = Object.keys(helper.metafile.inputs);
if (helperInputs.length !== 1 || helperInputs[0] !== HELPER_SOURCE) {
  throw new Error(
    `${HELPER_SOURCE} must import only node: built-ins; its build took in ${helperInputs.join(", ")}`,
  );
}
const kib = (result: typeof agent): number =>
  Math.round(Object.values(result.metafile.outputs).reduce((sum, out) => sum + out.bytes, 0) / 1024);
process.stdout.write(
  `built ${values.outfile} (${kib(agent)} KiB with source map) and ${helperOutfile} (${kib(helper)} KiB)\n`,
);
