/**
 * The dispatcher's snapshot signing key. In AWS: an SSM SecureString parameter holding
 * `{"key_id": "...", "private_key_pem": "..."}`, read through Powertools Parameters with decryption and a
 * 300 s cache, so a rotation reaches warm functions within five minutes without a redeploy and a burst of
 * sends costs no SSM call. Locally and in tests: a PEM file. Signing itself stays in process (lib/signing.ts).
 */
import { readFile } from "node:fs/promises";
import { BaseProvider } from "@aws-lambda-powertools/parameters/base";
import type { SSMClient } from "@aws-sdk/client-ssm";
import { SIGNING_KEY_VARIABLES, type SigningKeySource } from "../config.ts";
import { keySigner, lazySigner, type SnapshotSigner } from "../signing.ts";
import type { LazyClient } from "./clients.ts";

/** How long a fetched key is used before the parameter is read again (rotation without redeploy). */
export const SIGNING_KEY_MAX_AGE_SECONDS = 300;

/** The slice of a Powertools provider this module uses. */
export interface ParameterReader {
  get(name: string, options: { maxAge: number }): Promise<unknown>;
}

const describe = (error: unknown) =>
  error instanceof Error ? `${error.name}: ${error.message}` : String(error);

/**
 * Parses the parameter's value. Errors name the parameter and what is wrong, never the value (it is secret).
 */
export function signerFromParameterValue(value: unknown, parameterName: string): SnapshotSigner {
  const what = `signing key parameter ${parameterName}`;
  if (typeof value !== "string" || value === "") throw new Error(`${what} is empty or not a string`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new Error(`${what} is not JSON {"key_id": "...", "private_key_pem": "..."}`);
  }
  const { key_id: keyId, private_key_pem: pem } = (parsed ?? {}) as Record<string, unknown>;
  if (typeof keyId !== "string" || typeof pem !== "string") {
    throw new Error(`${what} must hold string fields key_id and private_key_pem`);
  }
  try {
    return keySigner(keyId, pem);
  } catch (error) {
    throw new Error(`${what} does not hold a usable key: ${describe(error)}`, { cause: error });
  }
}

/**
 * Signs with the key in an SSM parameter. Each sign reads through the provider's cache (no network within
 * maxAge); the parsed key is reused while the parameter's value is unchanged, and concurrent first sends
 * share one fetch.
 */
export function ssmSigner(
  reader: ParameterReader,
  parameterName: string,
  maxAgeSeconds = SIGNING_KEY_MAX_AGE_SECONDS,
): SnapshotSigner {
  let current: { readonly value: unknown; readonly signer: SnapshotSigner } | undefined;
  let inflight: Promise<unknown> | undefined;
  const fetchValue = () => {
    inflight ??= reader.get(parameterName, { maxAge: maxAgeSeconds }).finally(() => {
      inflight = undefined;
    });
    return inflight;
  };
  return {
    sign: async (body) => {
      let value: unknown;
      try {
        value = await fetchValue();
      } catch (error) {
        throw new Error(
          `could not read signing key parameter ${parameterName} (CTH_SIGNING_KEY_PARAMETER): ${describe(error)}`,
          { cause: error },
        );
      }
      const loaded =
        current !== undefined && current.value === value
          ? current
          : { value, signer: signerFromParameterValue(value, parameterName) };
      current = loaded;
      return loaded.signer.sign(body);
    },
  };
}

/** Signs with a PEM private key file, read on first use (a failed read is retried by the next send). */
export function fileSigner(path: string, keyId: string): SnapshotSigner {
  return lazySigner(async () => {
    let pem: string;
    try {
      pem = await readFile(path, "utf8");
    } catch (error) {
      throw new Error(`could not read signing key file ${path} (CTH_SIGNING_KEY_FILE): ${describe(error)}`, {
        cause: error,
      });
    }
    try {
      return keySigner(keyId, pem);
    } catch (error) {
      throw new Error(`signing key file ${path} does not hold a usable key: ${describe(error)}`, {
        cause: error,
      });
    }
  });
}

/**
 * A Powertools Parameters provider (BaseProvider: its cache, maxAge and error wrapping) for one SecureString,
 * always decrypted. Not Powertools' stock SSMProvider: that module imports the SSM client statically, which
 * the bundler hoists into every function's cold start (about 30 ms of import, bench/RESULTS.md); here the
 * client (external to the bundle, from the runtime) is loaded on the first read, by functions that send.
 */
export class SecureStringProvider extends BaseProvider {
  constructor(private readonly ssm: LazyClient<SSMClient>) {
    super({});
  }

  protected async _get(name: string): Promise<string | undefined> {
    const [{ GetParameterCommand }, client] = await Promise.all([
      import("@aws-sdk/client-ssm"),
      this.ssm.get(),
    ]);
    const reply = await client.send(new GetParameterCommand({ Name: name, WithDecryption: true }));
    return reply.Parameter?.Value;
  }

  protected async _getMultiple(): Promise<Record<string, unknown> | undefined> {
    throw new Error("SecureStringProvider reads one parameter by name");
  }
}

/** The production signer for `source`; throws the configuration error when no key is configured. */
export function signerFor(source: SigningKeySource | undefined, ssm: LazyClient<SSMClient>): SnapshotSigner {
  if (!source) {
    throw new Error(
      `no snapshot signing key configured: set ${SIGNING_KEY_VARIABLES} (agents refuse unsigned snapshots)`,
    );
  }
  if (source.kind === "file") return fileSigner(source.path, source.keyId);
  return ssmSigner(new SecureStringProvider(ssm), source.parameterName);
}
