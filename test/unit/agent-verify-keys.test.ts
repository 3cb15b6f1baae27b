import { generateKeyPairSync } from "node:crypto";
import { chmod, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { AgentSetupError } from "../../agent/private-path.ts";
import { loadVerifyKeys } from "../../agent/verify-keys.ts";
import { verifyBody } from "../../lib/signing.ts";
import { testKey, verifyKeysDir } from "../support/signing.ts";

describe("--verify-keys directory", () => {
  const dirs: string[] = [];
  const dirOf = (...keys: ReturnType<typeof testKey>[]) => {
    const dir = verifyKeysDir(...keys);
    dirs.push(dir);
    return dir;
  };

  afterEach(async () => {
    for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
  });

  it("loads every <key-id>.pem (rotation: several at once) and ignores other files", async () => {
    const current = testKey("current");
    const next = testKey("next_2027-01");
    const dir = dirOf(current, next);
    await writeFile(join(dir, "README"), "not a key");
    await writeFile(join(dir, "old.pem.bak"), "not a key either");
    const keys = loadVerifyKeys(dir);
    expect([...keys.keys()].sort()).toEqual(["current", "next_2027-01"]);
    for (const key of [current, next]) {
      const { keyId, signature } = await key.signer.sign("body");
      expect(verifyBody(keys, "body", keyId, signature)).toEqual({ ok: true, keyId: key.keyId });
    }
  });

  it("refuses to start without a usable key, naming the directory or the file", async () => {
    const empty = dirOf();
    expect(() => loadVerifyKeys(empty)).toThrow(AgentSetupError);
    expect(() => loadVerifyKeys(empty)).toThrow(`${empty} holds no <key-id>.pem public key`);
    expect(() => loadVerifyKeys(join(empty, "missing"))).toThrow(/is not readable/);

    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 })
      .publicKey.export({ format: "pem", type: "spki" })
      .toString();
    const p384 = generateKeyPairSync("ec", { namedCurve: "P-384" })
      .publicKey.export({ format: "pem", type: "spki" })
      .toString();
    const cases: [string, string, RegExp][] = [
      ["rsa.pem", rsa, /P-256/],
      ["p384.pem", p384, /P-256/],
      ["garbage.pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", /garbage\.pem/],
      // The private half never belongs on a node, even though a public key could be derived from it.
      ["private.pem", testKey("private").privateKeyPem, /not one SPKI public key/],
      ["bad id!.pem", testKey().publicKeyPem, /key id "bad id!"/],
    ];
    for (const [name, pem, message] of cases) {
      const dir = dirOf(testKey("good"));
      await writeFile(join(dir, name), pem);
      expect(() => loadVerifyKeys(dir), name).toThrow(message);
      expect(() => loadVerifyKeys(dir), name).toThrow(join(dir, name));
    }
  });

  it("refuses a directory or key that others could write to", async () => {
    const dir = dirOf(testKey("k"));
    await chmod(join(dir, "k.pem"), 0o666);
    expect(() => loadVerifyKeys(dir)).toThrow(/k\.pem is group- or world-writable/);
    await chmod(join(dir, "k.pem"), 0o644);
    await chmod(dir, 0o777);
    expect(() => loadVerifyKeys(dir)).toThrow(/directory .* is group- or world-writable/);
  });
});
