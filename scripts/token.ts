/**
 * Prints a dev token (RS256, as the deployed JWT authorizer verifies) the local stack accepts:
 *   npm run token -- --project P [--role admin|service]... [--ttl SECONDS]
 * A role becomes the token's `scope` string (`cth:admin`, `cth:service`), as a real identity provider emits it.
 * The signing key lives in .local/ (CTH_LOCAL_DIR) and is created on first use, shared with `npm start`.
 */
import { parseArgs } from "node:util";
import type { Role } from "../lib/domain/identity.ts";
import { primitives } from "../lib/schemas/index.ts";
import { loadOrCreateSigningKey, signToken } from "./local/auth.ts";
import { localDir, signingKeyFile } from "./local/paths.ts";

const ROLES: ReadonlySet<string> = new Set<Role>(["admin", "service"]);
const isRole = (role: string): role is Role => ROLES.has(role);
const MAX_TTL = 7 * 24 * 3600;

export function parseTokenArgs(argv: readonly string[]) {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      project: { type: "string" },
      role: { type: "string", multiple: true },
      ttl: { type: "string", default: "3600" },
      help: { type: "boolean" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return { help: true as const };
  const project = primitives.projectId.safeParse(values.project);
  if (!project.success) throw new Error("--project is required: letters, digits, '_' and '-', at most 64");
  const roles: Role[] = [];
  for (const role of values.role ?? []) {
    if (!isRole(role)) throw new Error(`--role must be admin or service, got "${role}"`);
    roles.push(role);
  }
  const ttl = Number(values.ttl);
  if (!Number.isInteger(ttl) || ttl <= 0 || ttl > MAX_TTL)
    throw new Error(`--ttl must be 1..${MAX_TTL} seconds`);
  return { help: false as const, projectId: project.data, roles, ttlSeconds: ttl };
}

const USAGE = "Usage: npm run token -- --project P [--role admin|service] [--ttl SECONDS (default 3600)]";

async function main(): Promise<void> {
  let args: ReturnType<typeof parseTokenArgs>;
  try {
    args = parseTokenArgs(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n${USAGE}\n`);
    process.exit(2);
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const key = await loadOrCreateSigningKey(signingKeyFile(localDir()));
  process.stdout.write(`${await signToken(key, args)}\n`);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
