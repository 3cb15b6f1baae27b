/**
 * `npm run signing-key`: the pair it writes is one key (the parameter value signs, the public file verifies),
 * the secret is 0600, nothing is overwritten, and the printed command stores the file as a SecureString.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { signerFromParameterValue } from "../../lib/aws/signing-key.ts";
import { publicKeyFromPem, verifyBody } from "../../lib/signing.ts";
import {
  generateSigningKeyPair,
  parseSigningKeyArgs,
  writeLocalKeyPair,
  writeOperatorKeyPair,
} from "../../scripts/signing-key.ts";

const ROOT = resolve(import.meta.dirname, "../..");
const mode = (path: string) => statSync(path).mode & 0o777;

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "cth-signing-key-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe("signing-key script", () => {
  it("writes a 0600 parameter value and a public key that verifies what the value signs", async () => {
    const out = join(dir, "keys");
    const written = await writeOperatorKeyPair(generateSigningKeyPair("prod-2026-12"), out);
    expect(written.publicKeyFile).toBe(join(out, "prod-2026-12.pem"));
    expect(mode(written.privateFile)).toBe(0o600);
    expect(mode(out)).toBe(0o700);
    const value = readFileSync(written.privateFile, "utf8");
    expect(Object.keys(JSON.parse(value))).toEqual(["key_id", "private_key_pem"]);
    const signed = await signerFromParameterValue(value, "/cth/prod/snapshot-signing-key").sign("snapshot");
    const publicPem = readFileSync(written.publicKeyFile, "utf8");
    expect(publicPem).toMatch(/^-----BEGIN PUBLIC KEY-----/);
    const keys = new Map([["prod-2026-12", publicKeyFromPem(publicPem)]]);
    expect(verifyBody(keys, "snapshot", signed.keyId, signed.signature)).toEqual({
      ok: true,
      keyId: "prod-2026-12",
    });
  });

  it("never overwrites an existing key file", async () => {
    writeFileSync(join(dir, "k1.private.json"), "keep me");
    await expect(writeOperatorKeyPair(generateSigningKeyPair("k1"), dir)).rejects.toMatchObject({
      code: "EEXIST",
    });
    expect(readFileSync(join(dir, "k1.private.json"), "utf8")).toBe("keep me");
  });

  it("refuses a key id agents could not look up, and a missing one", () => {
    expect(() => parseSigningKeyArgs([])).toThrow(/--key-id is required/);
    expect(() => parseSigningKeyArgs(["--key-id", "../x"])).toThrow(/must match/);
    expect(() => parseSigningKeyArgs(["--key-id", "k", "--stage", "a b"])).toThrow(/--stage/);
  });

  it("prints the put-parameter command for a SecureString under the stage's KMS alias", () => {
    const stdout = execFileSync(
      process.execPath,
      ["--import", "tsx", "scripts/signing-key.ts", "--key-id", "k-2026", "--out", dir, "--stage", "staging"],
      { cwd: ROOT, encoding: "utf8" },
    );
    const command = stdout.replace(/\\\n\s*/g, "");
    expect(command).toContain("aws ssm put-parameter --type SecureString");
    expect(command).toContain("--key-id alias/cth-staging-snapshot-signing");
    expect(command).toContain("--name /cth/staging/snapshot-signing-key");
    expect(command).toContain(`--value file://${join(dir, "k-2026.private.json")}`);
    expect(mode(join(dir, "k-2026.private.json"))).toBe(0o600);
  });

  it("the local form keeps only this run's key: private 0600 in a 0700 dir, public alone in verify-keys", async () => {
    const privateDir = join(dir, "snapshot-signing");
    const verifyDir = join(dir, "verify-keys");
    await writeLocalKeyPair(generateSigningKeyPair("local-old"), privateDir, verifyDir);
    const now = await writeLocalKeyPair(generateSigningKeyPair("local-new"), privateDir, verifyDir);
    expect(mode(privateDir)).toBe(0o700);
    expect(mode(verifyDir)).toBe(0o700);
    expect(mode(now.privateKeyFile)).toBe(0o600);
    expect(readFileSync(now.publicKeyFile, "utf8")).toMatch(/^-----BEGIN PUBLIC KEY-----/);
    expect(() => statSync(join(verifyDir, "local-old.pem"))).toThrow(/ENOENT/);
    expect(() => statSync(join(privateDir, "local-old.pem"))).toThrow(/ENOENT/);
  });
});
