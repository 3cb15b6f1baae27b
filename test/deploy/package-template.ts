/**
 * Packages the real service with the osls CLI, as `serverless deploy` would before uploading, with every AWS
 * credential source stripped (packaging must need none). Shared by the template assertions and the moto
 * deployment so both test the same artefact.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export type Json = unknown;
export interface Resource {
  Type: string;
  Properties: Record<string, Json>;
  DependsOn?: Json;
  [attribute: string]: Json;
}
export interface Template {
  Resources: Record<string, Resource>;
  Outputs: Record<string, { Value: Json; Description?: string; Export?: Json }>;
  [section: string]: Json;
}

export interface PackageOptions {
  readonly stage: string;
  readonly nodes: readonly string[];
  readonly jwtIssuer: string;
  readonly jwtAudience: string;
}

export interface PackagedService {
  /** The directory osls wrote: the template, serverless-state.json and one zip per function. */
  readonly dir: string;
  readonly template: Template;
  /** File name (e.g. `http.zip`) of each function bundle. */
  readonly bundles: readonly string[];
  remove(): void;
}

/** Runs `osls package` into a fresh temporary directory (about 6 s). */
export async function packageService(options: PackageOptions): Promise<PackagedService> {
  const dir = mkdtempSync(join(tmpdir(), "cth-package-"));
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const key of Object.keys(env)) if (key.startsWith("AWS_")) delete env[key];
  Object.assign(env, {
    AWS_SHARED_CREDENTIALS_FILE: join(dir, "no-credentials"),
    AWS_CONFIG_FILE: join(dir, "no-config"),
    AWS_EC2_METADATA_DISABLED: "true",
    SLS_TELEMETRY_DISABLED: "1",
    SLS_NOTIFICATIONS_MODE: "off",
  });
  await run(
    "npx",
    [
      "osls",
      "package",
      "--stage",
      options.stage,
      "--package",
      dir,
      `--param=nodes=${options.nodes.join(",")}`,
      `--param=jwtIssuer=${options.jwtIssuer}`,
      `--param=jwtAudience=${options.jwtAudience}`,
    ],
    { cwd: root, env, timeout: 240_000, maxBuffer: 16 * 1024 * 1024 },
  );
  const template = JSON.parse(
    readFileSync(join(dir, "cloudformation-template-update-stack.json"), "utf8"),
  ) as Template;
  return {
    dir,
    template,
    bundles: readdirSync(dir).filter((file) => file.endsWith(".zip")),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
