/**
 * Writes openapi.json (DEFAULT_LIMITS, the whole kernel catalog) and the README's HTTP API table from it:
 * `npm run -s openapi`. test/unit/openapi.test.ts fails while either is stale.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { HelperCatalog } from "../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../lib/config.ts";
import { buildOpenApi, readmeRoutesTable, withReadmeTable } from "../lib/http/openapi.ts";
import { buildSchemas } from "../lib/schemas/index.ts";

const root = new URL("../", import.meta.url);

/** The document as committed: the defaults a deployment starts from. */
export function defaultOpenApi() {
  const { version } = JSON.parse(readFileSync(new URL("package.json", root), "utf8")) as { version: string };
  return buildOpenApi({ schemas: buildSchemas(DEFAULT_LIMITS, new HelperCatalog()), version });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const doc = defaultOpenApi();
  const file = fileURLToPath(new URL("openapi.json", root));
  writeFileSync(file, JSON.stringify(doc));
  // Formatted as `npm run lint` wants it; the test compares the parsed document, so layout is Biome's alone.
  execFileSync(fileURLToPath(new URL("node_modules/.bin/biome", root)), ["format", "--write", file]);
  const readme = new URL("README.md", root);
  writeFileSync(readme, withReadmeTable(readFileSync(readme, "utf8"), readmeRoutesTable(doc)));
  console.log("wrote openapi.json and README.md's HTTP API table");
}
