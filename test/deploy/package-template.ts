/**
 * Packages the real service with the osls CLI, as `serverless deploy` would before uploading, with every AWS
 * credential source stripped (packaging must need none). Shared by the template assertions and the moto
 * deployment so both test the same artefact.
 */
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
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

/** Longer than any packaging takes: a lock this old was left by a process that died holding it. */
const STALE_LOCK_MS = 300_000;

/**
 * serverless-esbuild builds in the checkout's own .esbuild/ whatever `--package` says, so two test files
 * packaging at once (vitest runs files in parallel workers) overwrite each other's bundles: one at a time,
 * across processes, by an atomic mkdir.
 */
async function oneAtATime<T>(work: () => Promise<T>): Promise<T> {
  const lock = join(root, ".esbuild.lock");
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const age = Date.now() - (statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (age > STALE_LOCK_MS) rmSync(lock, { recursive: true, force: true });
      else await sleep(250);
    }
  }
  try {
    return await work();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/** Runs `osls package` into a fresh temporary directory (about 6 s; one packaging at a time). */
export function packageService(options: PackageOptions): Promise<PackagedService> {
  return oneAtATime(() => packageOnce(options));
}

async function packageOnce(options: PackageOptions): Promise<PackagedService> {
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
