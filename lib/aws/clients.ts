/**
 * AWS clients for the functions, built in one place from Config. Adapters receive these in constructors;
 * nothing here runs at import time.
 */
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { SQSClient } from "@aws-sdk/client-sqs";
import type { SSMClient } from "@aws-sdk/client-ssm";
import { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";
import type { Config } from "../config.ts";

export interface AwsClients {
  readonly dynamo: DynamoDBDocumentClient;
  /** The low-level client under `dynamo`, for libraries that want one (Powertools idempotency). */
  readonly dynamoRaw: DynamoDBClient;
  readonly sqs: SQSClient;
  /**
   * Parameter Store, for the snapshot signing key (lib/aws/signing-key.ts). Loaded on first use: importing
   * the SSM client costs about 30 ms of every cold start, and only a function that sends pays it.
   */
  readonly ssm: LazyClient<SSMClient>;
}

export interface LazyClient<T> {
  get(): Promise<T>;
  /** Destroys the client if it was ever built. */
  destroy(): void;
}

export interface ClientOverrides {
  /** Explicit credentials (emulators); the SDK's default chain otherwise. */
  readonly credentials?: { readonly accessKeyId: string; readonly secretAccessKey: string };
}

export function makeAwsClients(
  config: Pick<Config, "region" | "awsEndpoint">,
  overrides: ClientOverrides = {},
): AwsClients {
  const common = {
    region: config.region,
    ...(overrides.credentials ? { credentials: overrides.credentials } : {}),
    ...(config.awsEndpoint ? { endpoint: config.awsEndpoint } : {}),
    // Bounded SDK-level retries; the domain adds its own for conflicts and partial batch failures.
    maxAttempts: 3,
  };
  const dynamoRaw = new DynamoDBClient(common);
  const dynamo = DynamoDBDocumentClient.from(dynamoRaw, {
    marshallOptions: { removeUndefinedValues: true },
  });
  // Emulators hand out queue URLs whose host is not resolvable; the endpoint override must win.
  const sqs = new SQSClient({ ...common, ...(config.awsEndpoint ? { useQueueUrlAsEndpoint: false } : {}) });
  let ssmClient: Promise<SSMClient> | undefined;
  const ssm: LazyClient<SSMClient> = {
    get: () => {
      ssmClient ??= import("@aws-sdk/client-ssm").then(({ SSMClient }) => new SSMClient(common));
      return ssmClient;
    },
    destroy: () => void ssmClient?.then((client) => client.destroy()),
  };
  return { dynamo, dynamoRaw, sqs, ssm };
}
