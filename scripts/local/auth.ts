/**
 * The local stand-in for API Gateway's JWT authorizer: an RS256 dev key under `.local/`, tokens signed with
 * it, and verification with the same checks the authorizer makes (signature against the published JWKS,
 * algorithm, exp/nbf, issuer, audience). Verified claims are handed to the function as API Gateway does:
 * every claim a string.
 *
 * RS256 because an HTTP API JWT authorizer verifies it: the HTTP API guide has long said the authorizer
 * supports RSA-based algorithms only (the newer JwtConfiguration API lists ES256 too; we could not confirm
 * that HTTP APIs accept it), and RS256 is what every identity provider issues. The verifier accepts RS256
 * only, so a token signed any other way (ES256, HS256 keyed with the public key, alg none) is refused.
 */
import { randomUUID } from "node:crypto";
import { chmod, link, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import {
  type CryptoKey,
  calculateJwkThumbprint,
  createLocalJWKSet,
  errors,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JSONWebKeySet,
  type JWK,
  type JWTPayload,
  jwtVerify,
  SignJWT,
} from "jose";
import { type Role, scopeFor } from "../../lib/domain/identity.ts";
import { UnauthorizedError } from "../../lib/errors.ts";

export const LOCAL_ISSUER = "https://cth.local/dev";
export const LOCAL_AUDIENCE = "cth-local";
export const ALGORITHM = "RS256";
const MODULUS_BITS = 2048;
/** API Gateway tolerates no skew beyond a few seconds either. */
const CLOCK_TOLERANCE_SECONDS = 5;
const MAX_TOKEN_CHARS = 8192;

export interface SigningKey {
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly publicKey: CryptoKey;
  /** The public half as the issuer publishes it: `kty: RSA`, `alg: RS256`, `use: sig`, `kid`. */
  readonly publicJwk: JWK;
}

interface KeyFile {
  readonly kid: string;
  readonly alg: string;
  readonly privateJwk: JWK;
  readonly publicJwk: JWK;
}

async function fromFile(data: KeyFile): Promise<SigningKey> {
  return {
    kid: data.kid,
    privateKey: (await importJWK(data.privateJwk, ALGORITHM)) as CryptoKey,
    publicKey: (await importJWK(data.publicJwk, ALGORITHM)) as CryptoKey,
    publicJwk: { ...data.publicJwk, alg: ALGORITHM, use: "sig", kid: data.kid },
  };
}

/** The key file, or undefined when there is none or it holds a key of another algorithm (an ES256 one). */
async function readKeyFile(file: string): Promise<KeyFile | undefined> {
  let data: KeyFile;
  try {
    data = JSON.parse(await readFile(file, "utf8")) as KeyFile;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  if (data.alg === ALGORITHM) return data;
  // A key from before the switch to RS256: set it aside (not deleted, in case someone wants it back). A
  // racing loader may have moved it already; tokens it signed no longer verify either way.
  await rename(file, `${file}.${data.alg}.old`).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "ENOENT") throw error;
  });
  return readKeyFile(file);
}

/**
 * Loads the dev key, creating it on first use. Creation is atomic (write a private temp file, then hard-link
 * it into place), so a token script and a starting stack racing each other end up with the same key.
 */
export async function loadOrCreateSigningKey(file: string): Promise<SigningKey> {
  const existing = await readKeyFile(file);
  if (existing) return fromFile(existing);
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const { privateKey, publicKey } = await generateKeyPair(ALGORITHM, {
    modulusLength: MODULUS_BITS,
    extractable: true,
  });
  const publicJwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(publicJwk);
  const data: KeyFile = { kid, alg: ALGORITHM, privateJwk: await exportJWK(privateKey), publicJwk };
  const temp = `${file}.${process.pid}.${randomUUID()}.tmp`;
  await writeFile(temp, `${JSON.stringify(data, null, 2)}\n`, { mode: 0o600, flag: "wx" });
  await chmod(temp, 0o600);
  try {
    await link(temp, file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  } finally {
    await rm(temp, { force: true });
  }
  return fromFile(JSON.parse(await readFile(file, "utf8")) as KeyFile);
}

/** The JSON Web Key Set the local issuer publishes (`jwks.json` in the stack's directory). */
export const publicJwks = (key: SigningKey): JSONWebKeySet => ({ keys: [key.publicJwk] });

export interface TokenRequest {
  readonly projectId: string;
  /** Powers, emitted as the `scope` string (`cth:admin`, `cth:service`) the function and the routes read. */
  readonly roles?: readonly Role[];
  readonly ttlSeconds?: number;
  readonly issuer?: string;
  readonly audience?: string;
  /** Seconds since the epoch; tests set it to mint expired or not-yet-valid tokens. */
  readonly now?: number;
  readonly subject?: string;
  /** Extra claims laid over the defaults; tests mint hostile tokens with it. */
  readonly claims?: Readonly<Record<string, unknown>>;
}

export async function signToken(key: SigningKey, request: TokenRequest): Promise<string> {
  const now = request.now ?? Math.floor(Date.now() / 1000);
  const scope = scopeFor(request.roles ?? []);
  return new SignJWT({
    project_id: request.projectId,
    ...(scope === "" ? {} : { scope }),
    ...request.claims,
  })
    .setProtectedHeader({ alg: ALGORITHM, kid: key.kid, typ: "JWT" })
    .setIssuer(request.issuer ?? LOCAL_ISSUER)
    .setAudience(request.audience ?? LOCAL_AUDIENCE)
    .setSubject(request.subject ?? `dev:${request.projectId}`)
    .setJti(randomUUID())
    .setIssuedAt(now)
    .setExpirationTime(now + (request.ttlSeconds ?? 3600))
    .sign(key.privateKey);
}

export interface VerifyOptions {
  readonly issuer?: string;
  readonly audience?: string;
}

/**
 * The reason goes into WWW-Authenticate's error_description, as API Gateway's authorizer does. Only "the
 * token does not have a valid audience" is quoted in AWS's documentation (HTTP API JWT troubleshooting);
 * the other descriptions are ours, in the same style.
 */
export class TokenRejectedError extends UnauthorizedError {
  constructor(readonly reason: string) {
    super(`invalid bearer token: ${reason}`);
  }
}

function reasonOf(error: unknown): string {
  if (error instanceof errors.JWTExpired) return "the token has expired";
  if (error instanceof errors.JWTClaimValidationFailed) {
    if (error.claim === "iss") return "the token does not have a valid issuer";
    if (error.claim === "aud") return "the token does not have a valid audience";
    if (error.claim === "nbf") return "the token is not valid yet";
    return `the token's ${error.claim} claim is invalid`;
  }
  if (error instanceof errors.JWSSignatureVerificationFailed) return "signature verification failed";
  if (error instanceof errors.JOSEAlgNotAllowed) return `the token's signing algorithm is not ${ALGORITHM}`;
  if (error instanceof errors.JWKSNoMatchingKey) return "no key in the issuer's JWKS matches the token";
  return "malformed token";
}

/** Verifies `Authorization: [Bearer ]<jwt>`; returns the verified payload or throws TokenRejectedError. */
export async function verifyBearer(
  authorization: string,
  key: SigningKey,
  options: VerifyOptions = {},
): Promise<JWTPayload> {
  // The identity source may hold the token alone or prefixed with `Bearer `, as API Gateway accepts it.
  const match = /^(?:Bearer )?([A-Za-z0-9_.-]+)$/i.exec(authorization.trim());
  if (!match || match[1]!.length > MAX_TOKEN_CHARS) throw new TokenRejectedError("not a bearer token");
  try {
    // Through the published key set, as the authorizer looks the token's kid up in the issuer's JWKS.
    const { payload } = await jwtVerify(match[1]!, createLocalJWKSet(publicJwks(key)), {
      algorithms: [ALGORITHM],
      issuer: options.issuer ?? LOCAL_ISSUER,
      audience: options.audience ?? LOCAL_AUDIENCE,
      requiredClaims: ["exp", "iat"],
      clockTolerance: CLOCK_TOLERANCE_SECONDS,
    });
    return payload;
  } catch (error) {
    throw new TokenRejectedError(reasonOf(error));
  }
}

/**
 * The token's scopes as API Gateway reads them for a route's authorizationScopes: the `scope` (or `scp`)
 * claim, a space-delimited string or an array of strings. Undefined when the token has no such claim.
 */
export function tokenScopes(payload: JWTPayload): string[] | undefined {
  for (const name of ["scope", "scp"]) {
    const value = payload[name];
    if (typeof value === "string") return value.split(" ").filter((s) => s.length > 0);
    if (Array.isArray(value)) return value.filter((s): s is string => typeof s === "string");
  }
  return undefined;
}

/**
 * Claims as an HTTP API hands them to the function: strings only; an array becomes "[a b]" (the
 * bracketed, space-separated form recorded in test/fixtures/aws-events/apigw-http-jwt.json).
 */
export function apiGatewayClaims(payload: JWTPayload): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(payload)) {
    if (value === undefined || value === null) continue;
    if (Array.isArray(value)) out[name] = `[${value.map(String).join(" ")}]`;
    else if (typeof value === "object") out[name] = JSON.stringify(value);
    else out[name] = String(value);
  }
  return out;
}
