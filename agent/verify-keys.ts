/**
 * The dispatcher's public keys (`--verify-keys DIR`): one `<key-id>.pem` SPKI P-256 key per file, several at
 * once during a rotation. Whoever can add a file here chooses what the kernel holds, so the directory and
 * its keys must not be writable by anyone but their owner, and that owner is this agent's user or root.
 */
import type { KeyObject } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { KEY_ID_PATTERN, publicKeyFromPem, type VerifyKeys } from "../lib/signing.ts";
import { AgentSetupError, assertPrivatePath } from "./private-path.ts";

const PEM_SUFFIX = ".pem";
const SPKI_PEM = /^\s*-----BEGIN PUBLIC KEY-----\r?\n[A-Za-z0-9+/=\r\n]+-----END PUBLIC KEY-----\s*$/;

export function loadVerifyKeys(dir: string): VerifyKeys {
  assertPrivatePath(dir, "--verify-keys directory", true);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (error) {
    throw new AgentSetupError(`--verify-keys directory ${dir} is not readable: ${(error as Error).message}`);
  }
  const keys = new Map<string, KeyObject>();
  for (const name of names.filter((entry) => entry.endsWith(PEM_SUFFIX)).sort()) {
    const path = join(dir, name);
    const keyId = name.slice(0, -PEM_SUFFIX.length);
    if (!KEY_ID_PATTERN.test(keyId)) {
      throw new AgentSetupError(`verify key ${path}: the key id "${keyId}" must match ${KEY_ID_PATTERN}`);
    }
    assertPrivatePath(path, "verify key", true);
    const pem = readFileSync(path, "utf8");
    // createPublicKey would also take a private key: a private key never belongs on a node.
    if (!SPKI_PEM.test(pem)) {
      throw new AgentSetupError(`verify key ${path} is not one SPKI public key ("BEGIN PUBLIC KEY" PEM)`);
    }
    try {
      keys.set(keyId, publicKeyFromPem(pem, "the key"));
    } catch (error) {
      throw new AgentSetupError(`verify key ${path}: ${(error as Error).message}`);
    }
  }
  if (keys.size === 0) {
    throw new AgentSetupError(`--verify-keys directory ${dir} holds no <key-id>.pem public key`);
  }
  return keys;
}
