/**
 * (d) Cold start: each functions/*.ts bundled the way serverless.yml deploys it (esbuild, minified ESM for
 * node22, `@aws-sdk/*` left to the runtime), its size, and the time a fresh `node` process takes to import
 * it, beside a bare handler bundled the same way. The SDK is resolved from node_modules here, as the Lambda
 * runtime resolves its own copy: its load time is part of the figure.
 */
import { mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { build } from "esbuild";
import { median, run } from "./stats.ts";

export interface ColdRow {
  readonly name: string;
  readonly bytes: number;
  /** Median ms to `import()` the bundle inside a fresh process. */
  readonly importMs: number;
  /** Median ms for the whole process: start, import, exit. */
  readonly processMs: number;
}

const BANNER =
  "import { createRequire as __cthCreateRequire } from 'node:module'; const require = __cthCreateRequire(import.meta.url);";

async function bundle(entry: string, outfile: string): Promise<number> {
  await build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    minify: true,
    keepNames: true,
    format: "esm",
    platform: "node",
    target: "node22",
    external: ["@aws-sdk/*"],
    mainFields: ["module", "main"],
    banner: { js: BANNER },
    logLevel: "silent",
  });
  return statSync(outfile).size;
}

async function timeImport(file: string, reps: number): Promise<{ importMs: number; processMs: number }> {
  const url = pathToFileURL(file).href;
  const script = `const t=performance.now();const m=await import(${JSON.stringify(url)});if(typeof m.handler!=="function")throw new Error("no handler");console.log(performance.now()-t);`;
  const imports: number[] = [];
  const processes: number[] = [];
  for (let rep = 0; rep < reps; rep++) {
    const started = performance.now();
    const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], {
      timeoutMs: 60_000,
    });
    processes.push(performance.now() - started);
    imports.push(Number(stdout.trim()));
  }
  return { importMs: median(imports), processMs: median(processes) };
}

export async function benchColdStart(options: { root: string; reps: number }): Promise<ColdRow[]> {
  const out = resolve(options.root, "bench/out");
  mkdirSync(out, { recursive: true });
  const bare = join(out, "bare-handler.ts");
  writeFileSync(bare, "export const handler = async () => ({ statusCode: 200, body: '' });\n");
  // The SDK clients the functions import, alone: how much of an import is the runtime's SDK, not our code.
  const sdk = join(out, "sdk-only-handler.ts");
  writeFileSync(
    sdk,
    [
      'import { DynamoDBClient } from "@aws-sdk/client-dynamodb";',
      'import { SQSClient } from "@aws-sdk/client-sqs";',
      'import { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";',
      "export const handler = async () => [DynamoDBClient, SQSClient, DynamoDBDocumentClient].length;",
      "",
    ].join("\n"),
  );
  const entries = [
    { name: "(bare handler)", entry: bare },
    { name: "(SDK clients only)", entry: sdk },
    ...readdirSync(resolve(options.root, "functions"))
      .filter((file) => file.endsWith(".ts"))
      .sort()
      .map((file) => ({ name: `functions/${file}`, entry: resolve(options.root, "functions", file) })),
  ];
  const rows: ColdRow[] = [];
  for (const { name, entry } of entries) {
    const outfile = join(out, `${name.replace(/[^A-Za-z0-9]+/g, "-").replace(/^-|-$/g, "")}.mjs`);
    const bytes = await bundle(entry, outfile);
    // One throwaway run warms the OS file cache, as a provisioned sandbox would have it.
    await timeImport(outfile, 1);
    rows.push({ name, bytes, ...(await timeImport(outfile, options.reps)) });
  }
  return rows;
}
