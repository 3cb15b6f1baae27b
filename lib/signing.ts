/**
 * Snapshot signatures: whoever can SendMessage to a node queue must not be able to choose what a kernel
 * holds. The dispatcher signs the exact UTF-8 bytes of every MessageBody with ECDSA P-256 / SHA-256 (DER,
 * standard base64) and names the key in a message attribute; agents verify against public keys only.
 */
import { createPrivateKey, createPublicKey, type KeyObject, sign, verify } from "node:crypto";

export const KEY_ID_ATTRIBUTE = "cth-key-id";
export const SIGNATURE_ATTRIBUTE = "cth-signature";
export const KEY_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
/** A DER ECDSA P-256 signature is at most 72 bytes (96 in base64); anything longer is not one. */
const MAX_SIGNATURE_BASE64 = 128;

export interface SignedBody {
  readonly keyId: string;
  /** Standard base64 of the DER-encoded signature. */
  readonly signature: string;
}

/** Signs message bodies; the production one loads its key once per cold start (lib/aws/signing-key.ts). */
export interface SnapshotSigner {
  sign(body: string): Promise<SignedBody>;
}

function assertP256(key: KeyObject, what: string): void {
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new Error(`${what} must be an EC P-256 (prime256v1) key`);
  }
}

export function assertKeyId(keyId: string): string {
  if (!KEY_ID_PATTERN.test(keyId)) throw new Error(`signing key id "${keyId}" must match ${KEY_ID_PATTERN}`);
  return keyId;
}

/** Signs with a private key held in memory (PEM, PKCS#8 or SEC1). */
export function keySigner(keyId: string, privateKeyPem: string): SnapshotSigner {
  assertKeyId(keyId);
  const key = createPrivateKey(privateKeyPem);
  assertP256(key, "the signing key");
  return {
    sign: async (body) => ({
      keyId,
      signature: sign("sha256", Buffer.from(body, "utf8"), { key, dsaEncoding: "der" }).toString("base64"),
    }),
  };
}

/** A signer whose key is resolved on first use and then kept (a cold start pays for the fetch once). */
export function lazySigner(load: () => Promise<SnapshotSigner>): SnapshotSigner {
  let pending: Promise<SnapshotSigner> | undefined;
  return {
    sign: async (body) => {
      pending ??= load().catch((error: unknown) => {
        pending = undefined; // a failed fetch is retried by the next send, not cached
        throw error;
      });
      return (await pending).sign(body);
    },
  };
}

export type VerifyResult =
  | { readonly ok: true; readonly keyId: string }
  | { readonly ok: false; readonly reason: "unsigned" | "unknown-key" | "bad-signature" };

/** Public keys by key id; several at once during a rotation. */
export type VerifyKeys = ReadonlyMap<string, KeyObject>;

export function publicKeyFromPem(pem: string, what = "verify key"): KeyObject {
  const key = createPublicKey(pem);
  assertP256(key, what);
  return key;
}

/** Verifies `body` against its attributes; never throws on hostile input. */
export function verifyBody(
  keys: VerifyKeys,
  body: string,
  keyId: string | undefined,
  signature: string | undefined,
): VerifyResult {
  if (keyId === undefined || signature === undefined) return { ok: false, reason: "unsigned" };
  const key = KEY_ID_PATTERN.test(keyId) ? keys.get(keyId) : undefined;
  if (!key) return { ok: false, reason: "unknown-key" };
  if (signature.length > MAX_SIGNATURE_BASE64 || !/^[A-Za-z0-9+/]+={0,2}$/.test(signature)) {
    return { ok: false, reason: "bad-signature" };
  }
  try {
    const valid = verify(
      "sha256",
      Buffer.from(body, "utf8"),
      { key, dsaEncoding: "der" },
      Buffer.from(signature, "base64"),
    );
    return valid ? { ok: true, keyId } : { ok: false, reason: "bad-signature" };
  } catch {
    return { ok: false, reason: "bad-signature" };
  }
}
