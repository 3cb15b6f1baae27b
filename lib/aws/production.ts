/**
 * The production adapters every function shares, built from Config in one place. Functions call this on
 * their first invocation (never at import time) and add only what is theirs.
 */
import { Logger } from "@aws-lambda-powertools/logger";
import type { Config } from "../config.ts";
import { type Clock, systemClock } from "../ports.ts";
import { type AwsClients, makeAwsClients } from "./clients.ts";
import { queueUrlFromTemplate, SqsCommandQueue } from "./command-queue.ts";
import { DynamoRoutersStore } from "./routers-store.ts";

export interface ProductionPorts {
  readonly clients: AwsClients;
  readonly store: DynamoRoutersStore;
  readonly queue: SqsCommandQueue;
  readonly clock: Clock;
}

export function productionPorts(config: Config): ProductionPorts {
  const clients = makeAwsClients(config);
  return {
    clients,
    store: new DynamoRoutersStore(clients.dynamo, config.routersTable),
    queue: new SqsCommandQueue(clients.sqs, (host) =>
      queueUrlFromTemplate(config.nodeQueueUrlTemplate, host),
    ),
    clock: systemClock,
  };
}

/** Powertools logger for one function, at the configured level. */
export function functionLogger(serviceName: string, config: Config): Logger {
  const level = config.logLevel.toUpperCase() as "DEBUG" | "INFO" | "WARN" | "ERROR";
  return new Logger({ serviceName, logLevel: level });
}
