/**
 * Builds the node agent as one ESM file (AWS SDK included: network nodes have Node 22 but no node_modules):
 *   npx tsx scripts/build-agent.ts [--outfile dist/cth-agent.mjs]
 * Install it with infra/cth-agent.service (README "Agent installation").
 */
import { parseArgs } from "node:util";
import { build } from "esbuild";

const { values } = parseArgs({ options: { outfile: { type: "string", default: "dist/cth-agent.mjs" } } });

const result = await build({
  entryPoints: ["agent/cli.ts"],
  outfile: values.outfile,
  bundle: true,
  platform: "node",
  target: "node22",
  format: "esm",
  minify: true,
  sourcemap: "linked",
  metafile: true,
  // Some CommonJS dependencies call require(); an ESM bundle must define it.
  banner: {
    js: "import { createRequire as __cthCreateRequire } from 'node:module'; const require = __cthCreateRequire(import.meta.url);",
  },
});
const bytes = Object.values(result.metafile.outputs).reduce((sum, out) => sum + out.bytes, 0);
process.stdout.write(`built ${values.outfile} (${Math.round(bytes / 1024)} KiB with source map)\n`);
