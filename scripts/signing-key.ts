/**
 * A snapshot signing key pair for the dispatcher:
 *   npm run signing-key -- --key-id ID [--out DIR] [--stage STAGE]
 * writes `<DIR>/<ID>.pem` (the SPKI public key, for every node's --verify-keys directory) and
 * `<DIR>/<ID>.private.json` (mode 0600: the SSM parameter's value, {"key_id","private_key_pem"}), and prints
 * the `aws ssm put-parameter` command that stores it. Existing files are never overwritten. The local stack
 * uses the same functions for the pair it makes under .local/.
 */
import { generateKeyPairSync } from "node:crypto";
import { chmod, mkdir, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { assertKeyId } from "../lib/signing.ts";

export interface SigningKeyPair {
  readonly keyId: string;
  /** PKCS#8 PEM. */
  readonly privateKeyPem: string;
  /** SPKI PEM, what agents load. */
  readonly publicKeyPem: string;
}

export function generateSigningKeyPair(keyId: string): SigningKeyPair {
  assertKeyId(keyId);
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  return {
    keyId,
    privateKeyPem: privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
    publicKeyPem: publicKey.export({ format: "pem", type: "spki" }).toString(),
  };
}

/** The SSM parameter's value (lib/aws/signing-key.ts parses it). */
export const parameterValue = (pair: SigningKeyPair): string =>
  `${JSON.stringify({ key_id: pair.keyId, private_key_pem: pair.privateKeyPem })}\n`;

/** A directory only its owner can enter (created if missing, tightened if it exists). */
export async function privateDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
}

/** Creates `path` with `mode`, refusing to overwrite (and so to follow a planted symlink). */
async function writeNew(path: string, text: string, mode: number): Promise<void> {
  await writeFile(path, text, { mode, flag: "wx" });
  await chmod(path, mode); // the umask may have narrowed the public key's mode; never widened a secret's
}

export interface WrittenKeyPair {
  readonly publicKeyFile: string;
  readonly privateFile: string;
}

/** Operator form: `<id>.pem` and `<id>.private.json` (0600) in `dir`. */
export async function writeOperatorKeyPair(pair: SigningKeyPair, dir: string): Promise<WrittenKeyPair> {
  // Created 0700 when missing; an existing directory (maybe the working directory) is left as it is.
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const publicKeyFile = join(dir, `${pair.keyId}.pem`);
  const privateFile = join(dir, `${pair.keyId}.private.json`);
  await writeNew(privateFile, parameterValue(pair), 0o600);
  try {
    await writeNew(publicKeyFile, pair.publicKeyPem, 0o644);
  } catch (error) {
    await rm(privateFile, { force: true });
    throw error;
  }
  return { publicKeyFile, privateFile };
}

/**
 * Local stack form: a fresh pair every start. The private key as PEM in `privateDirPath` (0700, file 0600),
 * read by the functions through CTH_SIGNING_KEY_FILE; the public key alone in `verifyDir`, the agent's
 * --verify-keys. Keys of earlier runs are removed: this run's agent trusts this run's key only.
 */
export async function writeLocalKeyPair(
  pair: SigningKeyPair,
  privateDirPath: string,
  verifyDir: string,
): Promise<{ privateKeyFile: string; publicKeyFile: string }> {
  await rm(privateDirPath, { recursive: true, force: true });
  await rm(verifyDir, { recursive: true, force: true });
  await privateDir(privateDirPath);
  await privateDir(verifyDir);
  const privateKeyFile = join(privateDirPath, `${pair.keyId}.pem`);
  const publicKeyFile = join(verifyDir, `${pair.keyId}.pem`);
  await writeNew(privateKeyFile, pair.privateKeyPem, 0o600);
  await writeNew(publicKeyFile, pair.publicKeyPem, 0o644);
  return { privateKeyFile, publicKeyFile };
}

export function putParameterCommand(privateFile: string, stage: string): string {
  return [
    "aws ssm put-parameter --type SecureString",
    `--key-id alias/cth-${stage}-snapshot-signing`,
    `--name /cth/${stage}/snapshot-signing-key`,
    `--value file://${privateFile}`,
    "--overwrite",
  ].join(" \\\n    ");
}

export function parseSigningKeyArgs(argv: readonly string[]) {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      "key-id": { type: "string" },
      out: { type: "string", default: "." },
      stage: { type: "string", default: "prod" },
      help: { type: "boolean" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return { help: true as const };
  const keyId = values["key-id"];
  if (!keyId) throw new Error("--key-id is required");
  assertKeyId(keyId);
  if (!/^[A-Za-z0-9-]{1,32}$/.test(values.stage)) throw new Error("--stage must be letters, digits and '-'");
  return { help: false as const, keyId, out: resolve(values.out), stage: values.stage };
}

const USAGE =
  "Usage: npm run signing-key -- --key-id ID [--out DIR (default .)] [--stage STAGE (default prod)]";

async function main(): Promise<void> {
  let args: ReturnType<typeof parseSigningKeyArgs>;
  try {
    args = parseSigningKeyArgs(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n${USAGE}\n`);
    process.exit(2);
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  let written: WrittenKeyPair;
  try {
    written = await writeOperatorKeyPair(generateSigningKeyPair(args.keyId), args.out);
  } catch (error) {
    const { code, path } = error as NodeJS.ErrnoException;
    if (code !== "EEXIST") throw error;
    process.stderr.write(`refusing to overwrite ${path}: choose another --key-id or --out\n`);
    process.exit(2);
  }
  process.stdout.write(
    [
      `public key (install on every node as <verify-keys dir>/${args.keyId}.pem): ${written.publicKeyFile}`,
      `private key, the parameter's value (mode 0600; delete it once stored): ${written.privateFile}`,
      "",
      "store it (after every node has the public key):",
      `  ${putParameterCommand(written.privateFile, args.stage)}`,
      "",
    ].join("\n"),
  );
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
