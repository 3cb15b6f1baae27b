/**
 * The one place configuration is read. Adapters receive values, never read the environment themselves.
 */
import { basename, extname } from "node:path";
import {
  AWS_LIMITS,
  transactActionsPerNotification,
  worstCaseRouterItemBytes,
  worstCaseTransactionBytes,
} from "./aws/limits.ts";
import { HelperCatalog } from "./catalog.ts";
import { FIELD_LIMITS, HOST_ALPHABET } from "./schemas/field-limits.ts";
import { booleanSetting, type Env, integerSetting, listSetting, raw, SettingError } from "./settings.ts";
import { assertKeyId } from "./signing.ts";

export interface Limits {
  /** Request body cap in bytes, counted after base64 decoding, checked before any JSON parse. */
  readonly maxBodyBytes: number;
  readonly maxHelpersPerNotification: number;
  readonly maxHelpersPerRouter: number;
}

export const DEFAULT_LIMITS: Limits = {
  maxBodyBytes: 65_536,
  maxHelpersPerNotification: 64,
  maxHelpersPerRouter: 128,
};

export { FIELD_LIMITS, HOST_ALPHABET };

export interface Config {
  readonly limits: Limits;
  readonly catalog: HelperCatalog;
  readonly region: string;
  /** Override for emulators (dynalite, fauxqs, moto_server); undefined in AWS. */
  readonly awsEndpoint: string | undefined;
  readonly routersTable: string;
  /** Multi-router notifications commit in one DynamoDB transaction; off only for dynalite (it has none). */
  readonly routerTransactions: boolean;
  readonly idempotencyTable: string;
  /** Queue URL per node: the template's `{node}` is replaced by the host name. */
  readonly nodeQueueUrlTemplate: string;
  /** The nodes that have queues (CTH_NODES); a binding to any other host is refused. Unset: any host. */
  readonly nodes?: ReadonlySet<string> | undefined;
  /**
   * Name of each node's status queue, `{node}` standing for the host: the status function reads the
   * reporting host from the queue a record came in on (its eventSourceARN), never from the report.
   */
  readonly statusQueueNameTemplate: string;
  /** Where the events function parks refused EventBridge events (SQS); unset: the log line is the record. */
  readonly eventsParkQueueUrl?: string | undefined;
  /** Accounts whose events of each kind the events function accepts (the envelope's `account`). */
  readonly eventAccounts: EventAccounts;
  /** Reconciler: a router whose applied report is older than this is re-sent even when revisions match. */
  readonly reconcileStaleSeconds: number;
  readonly logLevel: string;
  /** The snapshot signing key; undefined when neither variable is set (wiring refuses to start then). */
  readonly signingKey?: SigningKeySource | undefined;
}

/** Where the dispatcher's private signing key lives: an SSM SecureString in AWS, a PEM file locally. */
export type SigningKeySource =
  | { readonly kind: "ssm"; readonly parameterName: string }
  | { readonly kind: "file"; readonly path: string; readonly keyId: string };

export const SIGNING_KEY_VARIABLES = "CTH_SIGNING_KEY_PARAMETER or CTH_SIGNING_KEY_FILE";

/**
 * Per kind of event, the accounts allowed to put it: a set (empty: nobody), or "own" for the account the
 * events function runs in (the default when the variable is unset: the local stack and a bare deploy).
 */
export type AccountList = ReadonlySet<string> | "own";
export interface EventAccounts {
  /** `Router Upserted`, `Router Deleted`: admin powers over every router. */
  readonly lifecycle: AccountList;
  /** `Conntrack Helper Notification`: a plain member of detail.project_id. */
  readonly notification: AccountList;
}

/** A positive integer variable (see lib/settings.ts). */
export function positiveInt(env: Env, name: string, fallback: number): number {
  return integerSetting(raw(env, name), name, fallback, 1);
}

/** A boolean variable: 1/true/yes/on or 0/false/no/off, else an error (see lib/settings.ts). */
export function flag(env: Env, name: string, fallback: boolean): boolean {
  return booleanSetting(raw(env, name), name, fallback);
}

/** A queue-name template with exactly one `{node}` (the host is read back out of it). */
export function queueNameTemplate(value: string, name: string): string {
  if (value.split("{node}").length !== 2 || !/^[A-Za-z0-9_{}-]+$/.test(value)) {
    throw new Error(`${name} must be a queue name with exactly one {node}, got "${value}"`);
  }
  return value;
}

/** Comma-separated 12-digit accounts; `none` for nobody; unset or empty: "own". */
export function accountList(env: Env, name: string): AccountList {
  const value = raw(env, name)?.trim();
  if (value === undefined || value === "") return "own";
  if (value === "none") return new Set();
  const accounts = value.split(",").map((item) => item.trim());
  for (const account of accounts) {
    if (!/^\d{12}$/.test(account)) {
      throw new Error(`${name} must be comma-separated 12-digit accounts or "none", got "${value}"`);
    }
  }
  return new Set(accounts);
}

export function loadEventAccounts(env: Env = process.env): EventAccounts {
  return {
    lifecycle: accountList(env, "CTH_EVENTS_LIFECYCLE_ACCOUNTS"),
    notification: accountList(env, "CTH_EVENTS_NOTIFICATION_ACCOUNTS"),
  };
}

/** The variable each limit is read from. */
export const LIMIT_VARIABLES = {
  maxBodyBytes: "CTH_MAX_BODY_BYTES",
  maxHelpersPerNotification: "CTH_MAX_HELPERS_PER_NOTIFICATION",
  maxHelpersPerRouter: "CTH_MAX_HELPERS_PER_ROUTER",
} as const satisfies Record<keyof Limits, string>;

/** The limits as read; the functions also hold them to AWS's limits (see loadConfig), the agent need not. */
export function loadLimits(env: Env = process.env): Limits {
  const read = (key: keyof Limits) => positiveInt(env, LIMIT_VARIABLES[key], DEFAULT_LIMITS[key]);
  return {
    maxBodyBytes: read("maxBodyBytes"),
    maxHelpersPerNotification: read("maxHelpersPerNotification"),
    maxHelpersPerRouter: read("maxHelpersPerRouter"),
  };
}

/** The largest value of `key` with which `fits` still holds (it holds less as the value grows); 0: none. */
function largestFitting(limits: Limits, key: keyof Limits, fits: (limits: Limits) => boolean): number {
  const at = (value: number) => fits({ ...limits, [key]: value });
  let low = 0;
  let high = 1;
  while (at(high)) [low, high] = [high, high * 2];
  while (high - low > 1) {
    const middle = Math.floor((low + high) / 2);
    if (at(middle)) low = middle;
    else high = middle;
  }
  return low;
}

/**
 * Refuses limits with which a valid request could exceed an AWS limit (lib/aws/limits.ts): a routers item,
 * and (with transactions) one notification's TransactWriteItems. A SettingError names the variable to change
 * and the largest value that fits with the others as they are. A snapshot message is smaller than the item
 * that holds its helpers, so the item's bound keeps it within SQS's message limit too (a test holds this).
 */
function assertWithinAwsLimits(limits: Limits, transactions: boolean): void {
  const perRouter = LIMIT_VARIABLES.maxHelpersPerRouter;
  const perNotification = LIMIT_VARIABLES.maxHelpersPerNotification;
  const itemFits = (l: Limits) => worstCaseRouterItemBytes(l) <= AWS_LIMITS.itemBytes;
  if (!itemFits(limits)) {
    throw new SettingError(
      perRouter,
      `is ${limits.maxHelpersPerRouter}: a routers item could reach ${worstCaseRouterItemBytes(limits)} bytes, ` +
        `over DynamoDB's item limit of ${AWS_LIMITS.itemBytes}; at most ` +
        `${largestFitting(limits, "maxHelpersPerRouter", itemFits)}`,
    );
  }
  if (!transactions) return;
  const actions = transactActionsPerNotification(limits);
  if (actions > AWS_LIMITS.transactWriteActions) {
    throw new SettingError(
      perNotification,
      `is ${limits.maxHelpersPerNotification}: a notification could name ${actions} routers, one ` +
        `TransactWriteItems action each, over its limit of ${AWS_LIMITS.transactWriteActions} actions; at most ` +
        `${AWS_LIMITS.transactWriteActions}`,
    );
  }
  const transactionFits = (l: Limits) => worstCaseTransactionBytes(l) <= AWS_LIMITS.transactWriteBytes;
  if (!transactionFits(limits)) {
    throw new SettingError(
      perNotification,
      `is ${limits.maxHelpersPerNotification} with ${perRouter} at ${limits.maxHelpersPerRouter}: one ` +
        `notification's TransactWriteItems could reach ${worstCaseTransactionBytes(limits)} bytes (${actions} ` +
        `routers of up to ${worstCaseRouterItemBytes(limits)}), over its limit of ` +
        `${AWS_LIMITS.transactWriteBytes}; at most ` +
        `${largestFitting(limits, "maxHelpersPerNotification", transactionFits)} helpers per notification, or ` +
        `${largestFitting(limits, "maxHelpersPerRouter", transactionFits)} per router`,
    );
  }
}

export function loadCatalog(env: Env = process.env): HelperCatalog {
  return new HelperCatalog(listSetting(raw(env, "CTH_ALLOWED_HELPERS")));
}

export function loadSigningKeySource(env: Env = process.env): SigningKeySource | undefined {
  const parameterName = raw(env, "CTH_SIGNING_KEY_PARAMETER");
  const path = raw(env, "CTH_SIGNING_KEY_FILE");
  if (parameterName && path) {
    throw new Error("set only one of CTH_SIGNING_KEY_PARAMETER and CTH_SIGNING_KEY_FILE");
  }
  if (parameterName) return { kind: "ssm", parameterName };
  if (!path) return undefined;
  const keyId = raw(env, "CTH_SIGNING_KEY_ID") ?? basename(path, extname(path));
  try {
    assertKeyId(keyId);
  } catch (error) {
    throw new Error(`CTH_SIGNING_KEY_ID (or the key file's name): ${(error as Error).message}`);
  }
  return { kind: "file", path, keyId };
}

/** CTH_NODES: comma-separated node names, each a valid host; unset or empty: any host (local stack). */
export function loadNodes(env: Env = process.env): ReadonlySet<string> | undefined {
  const names = listSetting(raw(env, "CTH_NODES"));
  if (names.length === 0) return undefined;
  const bad = names.find((name) => name.length > FIELD_LIMITS.host || !HOST_ALPHABET.test(name));
  if (bad !== undefined) {
    throw new Error(`CTH_NODES: "${bad}" is not a node name ([A-Za-z0-9_-], up to ${FIELD_LIMITS.host})`);
  }
  return new Set(names);
}

export function loadConfig(env: Env = process.env): Config {
  const limits = loadLimits(env);
  const routerTransactions = flag(env, "CTH_ROUTERS_TRANSACTIONS", true);
  assertWithinAwsLimits(limits, routerTransactions);
  return {
    limits,
    catalog: loadCatalog(env),
    // Absent and empty are the same for every variable, as in the agent (lib/settings.ts).
    region: raw(env, "AWS_REGION") ?? raw(env, "AWS_DEFAULT_REGION") ?? "us-east-1",
    awsEndpoint: raw(env, "CTH_AWS_ENDPOINT"),
    routersTable: raw(env, "CTH_ROUTERS_TABLE") ?? "cth-routers",
    routerTransactions,
    idempotencyTable: raw(env, "CTH_IDEMPOTENCY_TABLE") ?? "cth-idempotency",
    nodeQueueUrlTemplate:
      raw(env, "CTH_NODE_QUEUE_URL_TEMPLATE") ?? "http://127.0.0.1:9324/000000000000/cth-{node}.fifo",
    nodes: loadNodes(env),
    statusQueueNameTemplate: queueNameTemplate(
      raw(env, "CTH_STATUS_QUEUE_NAME_TEMPLATE") ?? "cth-node-{node}-status",
      "CTH_STATUS_QUEUE_NAME_TEMPLATE",
    ),
    eventsParkQueueUrl: raw(env, "CTH_EVENTS_PARK_QUEUE_URL"),
    eventAccounts: loadEventAccounts(env),
    reconcileStaleSeconds: positiveInt(env, "CTH_RECONCILE_STALE_SECONDS", 900),
    logLevel: raw(env, "LOG_LEVEL") ?? "info",
    signingKey: loadSigningKeySource(env),
  };
}
