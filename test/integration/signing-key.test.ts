/**
 * The dispatcher's signing: the production key loader against moto_server's SSM (SecureString, decrypt,
 * cache), and SqsCommandQueue on fauxqs signing the exact body the agent will receive.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Message } from "@aws-sdk/client-sqs";
import { PutParameterCommand, type SSMClient } from "@aws-sdk/client-ssm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LazyClient, makeAwsClients } from "../../lib/aws/clients.ts";
import { queueUrlFromTemplate, SqsCommandQueue } from "../../lib/aws/command-queue.ts";
import { SecureStringProvider, signerFor, ssmSigner } from "../../lib/aws/signing-key.ts";
import { type Config, loadConfig, loadSigningKeySource } from "../../lib/config.ts";
import { productionPorts } from "../../lib/production.ts";
import type { RouterSyncMessage } from "../../lib/schemas/index.ts";
import {
  KEY_ID_ATTRIBUTE,
  publicKeyFromPem,
  SIGNATURE_ATTRIBUTE,
  type SnapshotSigner,
  verifyBody,
} from "../../lib/signing.ts";
import {
  EMULATOR_CREDENTIALS,
  type Emulators,
  motoMissing,
  startEmulators,
  startMotoServer,
} from "../support/emulators.ts";
import { describeNeeding } from "../support/requirements.ts";
import { type TestKey, testKey } from "../support/signing.ts";

const keysOf = (...keys: TestKey[]) => new Map(keys.map((k) => [k.keyId, publicKeyFromPem(k.publicKeyPem)]));
const parameterValue = (key: TestKey) =>
  JSON.stringify({ key_id: key.keyId, private_key_pem: key.privateKeyPem });

function snapshot(revision: number, routerId = randomUUID()): RouterSyncMessage {
  return {
    v: 1,
    kind: "router-sync",
    router_id: routerId,
    revision,
    // Non-ASCII on purpose: the signature covers the UTF-8 bytes, not UTF-16 code units.
    correlation_id: `corr-${revision}-ü`,
    issued_at: "2026-12-02T08:00:00.000Z",
    helpers: [{ id: randomUUID(), protocol: "tcp", port: 21, helper: "ftp" }],
  } as RouterSyncMessage;
}

let emu: Emulators;
let config: Config;
beforeAll(async () => {
  emu = await startEmulators();
  config = emu.makeConfig();
});
afterAll(async () => {
  await emu?.stop();
});

/** A fresh node queue and a SqsCommandQueue over it. */
async function queueWith(signer: SnapshotSigner) {
  const host = `sig-${randomUUID().slice(0, 8)}`;
  const pair = await emu.createNodeQueue(host);
  const queue = new SqsCommandQueue(
    emu.clients(config).sqs,
    (h) => queueUrlFromTemplate(config.nodeQueueUrlTemplate, h),
    signer,
    { maxAttempts: 2, baseDelayMs: 1 },
  );
  return { host, pair, queue };
}

const attribute = (message: Message, name: string) => message.MessageAttributes?.[name]?.StringValue;

describe("SqsCommandQueue signs what it sends (fauxqs)", () => {
  it("every entry carries a signature that verifies over the exact body the queue received", async () => {
    const key = testKey("dispatcher-1");
    const { host, pair, queue } = await queueWith(key.signer);
    // 12 commands: two SendMessageBatch chunks.
    const commands = Array.from({ length: 12 }, (_, i) => snapshot(i + 1));
    await queue.send(host, commands);
    const received = await emu.drain(pair.url);
    expect(received).toHaveLength(12);
    for (const message of received) {
      const body = message.Body ?? "";
      expect(attribute(message, KEY_ID_ATTRIBUTE)).toBe("dispatcher-1");
      expect(
        verifyBody(
          keysOf(key),
          body,
          attribute(message, KEY_ID_ATTRIBUTE),
          attribute(message, SIGNATURE_ATTRIBUTE),
        ),
      ).toEqual({
        ok: true,
        keyId: "dispatcher-1",
      });
      // The signature binds this body: the same attributes over another revision do not verify.
      const forged = body.replace(/"revision":\d+/, '"revision":9007199254740991');
      expect(forged).not.toBe(body);
      expect(
        verifyBody(
          keysOf(key),
          forged,
          attribute(message, KEY_ID_ATTRIBUTE),
          attribute(message, SIGNATURE_ATTRIBUTE),
        ),
      ).toEqual({ ok: false, reason: "bad-signature" });
    }
    expect(
      received.map((m) => (JSON.parse(m.Body!) as RouterSyncMessage).revision).sort((a, b) => a - b),
    ).toEqual(commands.map((c) => c.revision));
  });

  it("a signer that fails sends nothing, not even the entries it could sign", async () => {
    const key = testKey();
    let calls = 0;
    const flaky: SnapshotSigner = {
      sign: async (body) => {
        calls++;
        if (calls === 7) throw new Error("key store unreachable");
        return key.signer.sign(body);
      },
    };
    const { host, pair, queue } = await queueWith(flaky);
    await expect(
      queue.send(
        host,
        Array.from({ length: 12 }, (_, i) => snapshot(i + 1)),
      ),
    ).rejects.toThrow("key store unreachable");
    expect(await emu.depth(pair.url)).toBe(0);
  });
});

describe("signing key configuration", () => {
  it("no key configured is a wiring error naming both variables", () => {
    const bare = loadConfig({});
    expect(bare.signingKey).toBeUndefined();
    expect(() => productionPorts(bare)).toThrow(/CTH_SIGNING_KEY_PARAMETER or CTH_SIGNING_KEY_FILE/);
  });

  it("reads the parameter name, or a file whose key id defaults to its basename", () => {
    expect(loadSigningKeySource({ CTH_SIGNING_KEY_PARAMETER: "/cth/prod/signing-key" })).toEqual({
      kind: "ssm",
      parameterName: "/cth/prod/signing-key",
    });
    expect(loadSigningKeySource({ CTH_SIGNING_KEY_FILE: "/x/local-2026.pem" })).toEqual({
      kind: "file",
      path: "/x/local-2026.pem",
      keyId: "local-2026",
    });
    expect(
      loadSigningKeySource({ CTH_SIGNING_KEY_FILE: "/x/k.pem", CTH_SIGNING_KEY_ID: "dev_1" }),
    ).toMatchObject({
      keyId: "dev_1",
    });
  });

  it("refuses both sources at once and a key id agents could not look up", () => {
    expect(() =>
      loadSigningKeySource({ CTH_SIGNING_KEY_PARAMETER: "/p", CTH_SIGNING_KEY_FILE: "/k.pem" }),
    ).toThrow(/only one of CTH_SIGNING_KEY_PARAMETER and CTH_SIGNING_KEY_FILE/);
    expect(() => loadSigningKeySource({ CTH_SIGNING_KEY_FILE: "/keys/my key.pem" })).toThrow(
      /CTH_SIGNING_KEY_ID/,
    );
    expect(() =>
      loadSigningKeySource({ CTH_SIGNING_KEY_FILE: "/k.pem", CTH_SIGNING_KEY_ID: "../../etc/passwd" }),
    ).toThrow(/CTH_SIGNING_KEY_ID/);
  });

  it("a key file signs as its key id; a missing or non-P-256 file is a clear error and sends nothing", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cth-signing-file-"));
    try {
      const key = testKey("file-key");
      writeFileSync(join(dir, "file-key.pem"), key.privateKeyPem, { mode: 0o600 });
      const fromFile = signerFor(
        loadSigningKeySource({ CTH_SIGNING_KEY_FILE: join(dir, "file-key.pem") }),
        emu.clients(config).ssm,
      );
      const signed = await fromFile.sign("body");
      expect(verifyBody(keysOf(key), "body", signed.keyId, signed.signature)).toEqual({
        ok: true,
        keyId: "file-key",
      });

      const missing = signerFor(
        { kind: "file", path: join(dir, "absent.pem"), keyId: "absent" },
        emu.clients(config).ssm,
      );
      const { host, pair, queue } = await queueWith(missing);
      await expect(queue.send(host, [snapshot(1)])).rejects.toThrow(
        /could not read signing key file .*absent\.pem \(CTH_SIGNING_KEY_FILE\)/,
      );

      writeFileSync(
        join(dir, "rsa.pem"),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
      );
      const garbage = new SqsCommandQueue(
        emu.clients(config).sqs,
        (h) => queueUrlFromTemplate(config.nodeQueueUrlTemplate, h),
        signerFor({ kind: "file", path: join(dir, "rsa.pem"), keyId: "rsa" }, emu.clients(config).ssm),
      );
      await expect(garbage.send(host, [snapshot(2)])).rejects.toThrow(
        /signing key file .*rsa\.pem does not hold a usable key/,
      );
      expect(await emu.depth(pair.url)).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describeNeeding(motoMissing(), "signing key in SSM Parameter Store (moto_server)", () => {
  let moto: Awaited<ReturnType<typeof startMotoServer>>;
  /** As production wires it (lib/aws/clients.ts), and the client it builds, for counting and setup. */
  let lazy: LazyClient<SSMClient>;
  let ssm: SSMClient;
  /** GetParameter calls that reached the server, counted on the real client. */
  let fetches = 0;

  beforeAll(async () => {
    moto = await startMotoServer();
    lazy = makeAwsClients(
      { region: "us-east-1", awsEndpoint: moto.endpoint },
      { credentials: EMULATOR_CREDENTIALS },
    ).ssm;
    ssm = await lazy.get();
    ssm.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === "GetParameterCommand") fetches++;
        return next(args);
      },
      { step: "initialize", name: "countGetParameter" },
    );
  });
  afterAll(async () => {
    ssm?.destroy();
    await moto?.stop();
  });

  const putKey = (name: string, value: string, overwrite = false) =>
    ssm.send(
      new PutParameterCommand({ Name: name, Type: "SecureString", Value: value, Overwrite: overwrite }),
    );

  it("the production loader decrypts the SecureString, signs with it, and fetches it once for many sends", async () => {
    const key = testKey("prod-2026-12");
    const name = `/cth/test/${randomUUID()}/signing-key`;
    await putKey(name, parameterValue(key));
    const signer = signerFor(loadSigningKeySource({ CTH_SIGNING_KEY_PARAMETER: name }), lazy);
    const { host, pair, queue } = await queueWith(signer);
    const before = fetches;
    // Concurrent first sends share one fetch; later sends read the cache.
    await Promise.all([queue.send(host, [snapshot(1)]), queue.send(host, [snapshot(2)])]);
    for (let revision = 3; revision <= 25; revision++) await queue.send(host, [snapshot(revision)]);
    expect(fetches - before).toBe(1);
    const received = await emu.drain(pair.url);
    expect(received).toHaveLength(25);
    for (const message of received) {
      expect(
        verifyBody(
          keysOf(key),
          message.Body ?? "",
          attribute(message, KEY_ID_ATTRIBUTE),
          attribute(message, SIGNATURE_ATTRIBUTE),
        ),
      ).toEqual({ ok: true, keyId: "prod-2026-12" });
    }
  });

  it("a rotated parameter is picked up once the cache expires, without a new signer", async () => {
    const [oldKey, newKey] = [testKey("old-key"), testKey("new-key")];
    const name = `/cth/test/${randomUUID()}/signing-key`;
    await putKey(name, parameterValue(oldKey));
    const reader = new SecureStringProvider(lazy);
    const signer = ssmSigner(reader, name, 1);
    expect((await signer.sign("a")).keyId).toBe("old-key");
    await putKey(name, parameterValue(newKey), true);
    // Within maxAge the cached key still signs.
    expect((await signer.sign("b")).keyId).toBe("old-key");
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const rotated = await signer.sign("c");
    expect(verifyBody(keysOf(newKey), "c", rotated.keyId, rotated.signature)).toEqual({
      ok: true,
      keyId: "new-key",
    });
  });

  it("a missing parameter is a clear error naming it, and nothing is sent", async () => {
    const name = `/cth/test/${randomUUID()}/absent`;
    const { host, pair, queue } = await queueWith(signerFor({ kind: "ssm", parameterName: name }, lazy));
    await expect(queue.send(host, [snapshot(1), snapshot(2)])).rejects.toThrow(
      new RegExp(`could not read signing key parameter ${name} \\(CTH_SIGNING_KEY_PARAMETER\\)`),
    );
    expect(await emu.depth(pair.url)).toBe(0);
  });

  it.each([
    ["not JSON", "-----BEGIN PRIVATE KEY-----", /is not JSON/],
    [
      "fields missing",
      JSON.stringify({ keyId: "x", pem: "y" }),
      /must hold string fields key_id and private_key_pem/,
    ],
    [
      "a broken PEM",
      JSON.stringify({
        key_id: "k",
        private_key_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
      }),
      /does not hold a usable key/,
    ],
    [
      "a bad key id",
      JSON.stringify({ key_id: "has space", private_key_pem: testKey().privateKeyPem }),
      /does not hold a usable key.*must match/,
    ],
  ])(
    "a parameter holding %s is a clear error that never echoes the value, and nothing is sent",
    async (_, value, message) => {
      const name = `/cth/test/${randomUUID()}/bad`;
      await putKey(name, value);
      const { host, pair, queue } = await queueWith(signerFor({ kind: "ssm", parameterName: name }, lazy));
      const failure = await queue.send(host, [snapshot(1)]).then(
        () => undefined,
        (error: unknown) => error as Error,
      );
      expect(failure?.message).toMatch(message);
      expect(failure?.message).toContain(name);
      expect(failure?.message).not.toContain("BEGIN PRIVATE KEY");
      expect(await emu.depth(pair.url)).toBe(0);
    },
  );

  it("an RSA key in the parameter is refused: agents verify P-256 only", async () => {
    const { generateKeyPairSync } = await import("node:crypto");
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 })
      .privateKey.export({ format: "pem", type: "pkcs8" })
      .toString();
    const name = `/cth/test/${randomUUID()}/rsa`;
    await putKey(name, JSON.stringify({ key_id: "rsa", private_key_pem: rsa }));
    await expect(signerFor({ kind: "ssm", parameterName: name }, lazy).sign("x")).rejects.toThrow(/P-256/);
  });
});
