/**
 * Listing cursors: opaque and tamper-proof. A cursor is the store's position sealed with AES-256-GCM under a
 * key derived (HKDF-SHA256) from a deployment secret; its additional data binds it to the caller (project,
 * powers, subject) and to the listing's filters. A cursor that was forged, truncated, sealed under another key,
 * or issued to another caller or for other filters fails to open, and every such failure is the same 400: it
 * never tells which check failed, and it never reaches the store.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { SSMClient } from "@aws-sdk/client-ssm";
import type { LazyClient } from "../aws/clients.ts";
import { SecureStringProvider } from "../aws/signing-key.ts";
import type { SigningKeySource } from "../config.ts";
import type { Identity } from "../domain/identity.ts";
import { BadRequestError } from "../errors.ts";
import { MAX_CURSOR_CHARS } from "../schemas/api.ts";

/** What a cursor is bound to besides the caller: the filters of the listing that issued it. */
export interface CursorFilters {
  readonly projectId?: string | undefined;
  readonly host?: string | undefined;
  readonly outOfSyncOnly: boolean;
}

export interface CursorCodec {
  seal(position: string, caller: Identity, filters: CursorFilters): string;
  /** The store position; BadRequestError("invalid cursor") for anything this codec did not seal for them. */
  open(cursor: string, caller: Identity, filters: CursorFilters): string;
}

const VERSION = 1;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const BASE64URL = /^[A-Za-z0-9_-]+$/;

export const invalidCursor = (): BadRequestError => new BadRequestError("invalid cursor");

/** JSON keeps the parts unambiguous whatever characters they hold; powers are sorted (a set). */
function binding(caller: Identity, filters: CursorFilters): Buffer {
  return Buffer.from(
    JSON.stringify([
      VERSION,
      caller.projectId,
      [...caller.roles].sort(),
      caller.subject ?? null,
      filters.projectId ?? null,
      filters.host ?? null,
      filters.outOfSyncOnly,
    ]),
    "utf8",
  );
}

/** The cursor key for `secret`: HKDF, so the secret itself (e.g. the snapshot signing key) is never the key. */
export function cursorKeyFrom(secret: string | Uint8Array): Buffer {
  const ikm = typeof secret === "string" ? Buffer.from(secret, "utf8") : Buffer.from(secret);
  if (ikm.length < 32) throw new Error("the cursor secret must be at least 32 bytes");
  return Buffer.from(hkdfSync("sha256", ikm, Buffer.alloc(0), "cth listing cursor v1", 32));
}

/** A codec over a 32-byte key (cursorKeyFrom). */
export function cursorCodec(key: Buffer): CursorCodec {
  if (key.length !== 32) throw new Error("a cursor key is 32 bytes");
  return {
    seal(position, caller, filters) {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv("aes-256-gcm", key, iv);
      cipher.setAAD(binding(caller, filters));
      const sealed = Buffer.concat([cipher.update(position, "utf8"), cipher.final()]);
      return Buffer.concat([iv, sealed, cipher.getAuthTag()]).toString("base64url");
    },
    open(cursor, caller, filters) {
      if (cursor.length > MAX_CURSOR_CHARS || !BASE64URL.test(cursor)) throw invalidCursor();
      const raw = Buffer.from(cursor, "base64url");
      // base64url that does not round-trip (stray trailing bits) is not one this codec wrote.
      if (raw.length <= IV_BYTES + TAG_BYTES || raw.toString("base64url") !== cursor) throw invalidCursor();
      try {
        const decipher = createDecipheriv("aes-256-gcm", key, raw.subarray(0, IV_BYTES), {
          authTagLength: TAG_BYTES,
        });
        decipher.setAAD(binding(caller, filters));
        decipher.setAuthTag(raw.subarray(raw.length - TAG_BYTES));
        const plain = Buffer.concat([
          decipher.update(raw.subarray(IV_BYTES, raw.length - TAG_BYTES)),
          decipher.final(),
        ]);
        return plain.toString("utf8");
      } catch {
        throw invalidCursor();
      }
    },
  };
}

/**
 * The production cursor key, derived from the snapshot signing key's secret material (the SSM parameter's
 * value or the PEM file), so no second secret needs provisioning. Loaded on the first listing and kept for
 * the life of the instance (a failed load is retried by the next listing): after a key rotation an old cursor
 * is a 400 and the client lists again from the start.
 */
export function cursorKeyLoader(
  source: SigningKeySource | undefined,
  ssm: LazyClient<SSMClient>,
): () => Promise<Buffer> {
  let pending: Promise<Buffer> | undefined;
  const load = async (): Promise<Buffer> => {
    if (!source)
      throw new Error("no snapshot signing key configured: listing cursors derive their key from it");
    const secret =
      source.kind === "file"
        ? await readFile(source.path, "utf8")
        : await new SecureStringProvider(ssm).get(source.parameterName, { maxAge: 300 });
    if (typeof secret !== "string") throw new Error("the signing key parameter is not a string");
    return cursorKeyFrom(secret);
  };
  return () => {
    pending ??= load().catch((error: unknown) => {
      pending = undefined;
      throw error;
    });
    return pending;
  };
}
