/**
 * Test signing keys: a fresh P-256 pair per call, its public half written as `<key-id>.pem` into a
 * verify-keys directory the agent reads, and the SQS message attributes for a body.
 */
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MessageAttributeValue } from "@aws-sdk/client-sqs";
import { KEY_ID_ATTRIBUTE, keySigner, SIGNATURE_ATTRIBUTE, type SnapshotSigner } from "../../lib/signing.ts";

export interface TestKey {
  readonly keyId: string;
  readonly privateKeyPem: string;
  readonly publicKeyPem: string;
  readonly signer: SnapshotSigner;
}

export function testKey(keyId = "test-key"): TestKey {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const privateKeyPem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
  const publicKeyPem = publicKey.export({ format: "pem", type: "spki" }).toString();
  return { keyId, privateKeyPem, publicKeyPem, signer: keySigner(keyId, privateKeyPem) };
}

/** A directory holding `<key-id>.pem` for each key (mode 0700, as the agent expects). */
export function verifyKeysDir(...keys: readonly TestKey[]): string {
  const dir = mkdtempSync(join(tmpdir(), "cth-verify-keys-"));
  for (const key of keys) writeFileSync(join(dir, `${key.keyId}.pem`), key.publicKeyPem, { mode: 0o644 });
  return dir;
}

/** The two message attributes a dispatcher-signed message carries. */
export async function signedAttributes(
  key: TestKey,
  body: string,
): Promise<Record<string, MessageAttributeValue>> {
  const { keyId, signature } = await key.signer.sign(body);
  return {
    [KEY_ID_ATTRIBUTE]: { DataType: "String", StringValue: keyId },
    [SIGNATURE_ATTRIBUTE]: { DataType: "String", StringValue: signature },
  };
}
