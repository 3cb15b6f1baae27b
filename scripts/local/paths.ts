/** Where the local stack keeps its files: `.local/` in the repository, or CTH_LOCAL_DIR (tests isolate runs). */
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { raw } from "../../lib/settings.ts";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export function localDir(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(raw(env, "CTH_LOCAL_DIR") ?? resolve(REPO_ROOT, ".local"));
}

/** The running stack's coordinates (written when ready, removed on stop): read by `npm run emit`. */
export const stackFile = (dir: string): string => resolve(dir, "stack.json");
export const signingKeyFile = (dir: string): string => resolve(dir, "dev-signing-key.json");
/** The local dispatcher's snapshot signing key (private, 0600 in a 0700 dir), new every start. */
export const snapshotSigningDir = (dir: string): string => resolve(dir, "snapshot-signing");
/** Its public half, the local agent's --verify-keys directory. */
export const verifyKeysDir = (dir: string): string => resolve(dir, "verify-keys");
