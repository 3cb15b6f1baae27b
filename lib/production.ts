/**
 * The composition root: production adapters, loggers and domain wiring that every function shares, built
 * from Config in one place. Functions call these on their first invocation, never at import time.
 */
import { Logger } from "@aws-lambda-powertools/logger";
import { injectLambdaContext } from "@aws-lambda-powertools/logger/middleware";
import type { MiddlewareObj } from "@middy/core";
import { type AwsClients, makeAwsClients } from "./aws/clients.ts";
import { queueUrlFromTemplate, SqsCommandQueue } from "./aws/command-queue.ts";
import { DynamoRoutersStore } from "./aws/routers-store.ts";
import { signerFor } from "./aws/signing-key.ts";
import type { Config } from "./config.ts";
import type { DomainDeps } from "./domain/services.ts";
import { type AppLogger, appLogger } from "./http/middlewares.ts";
import { type FunctionMetrics, flushMetrics, functionMetrics } from "./metrics.ts";
import { type Clock, systemClock } from "./ports.ts";
import { buildSchemas, type Schemas } from "./schemas/index.ts";

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
    store: new DynamoRoutersStore(clients.dynamo, config.routersTable, {
      transactions: config.routerTransactions,
    }),
    queue: new SqsCommandQueue(
      clients.sqs,
      (host) => queueUrlFromTemplate(config.nodeQueueUrlTemplate, host),
      // No key configured is a wiring error here, on the first invocation, not a silent unsigned send.
      signerFor(config.signingKey, clients.ssm),
    ),
    clock: systemClock,
  };
}

/** Powertools logger for one function, at the configured level. */
export function functionLogger(serviceName: string, config: Pick<Config, "logLevel">): Logger {
  const level = config.logLevel.toUpperCase() as "DEBUG" | "INFO" | "WARN" | "ERROR";
  return new Logger({ serviceName, logLevel: level });
}

/** A function's Powertools logger and metrics, which the `observed` middlewares tie to each invocation. */
export interface Observability {
  readonly logger: Logger;
  readonly metrics: FunctionMetrics;
}

/** `fn` is the metrics' Function dimension (what the alarms select on), `serviceName` the logs' service. */
export function observability(
  serviceName: string,
  fn: string,
  config: Pick<Config, "logLevel">,
): Observability {
  return { logger: functionLogger(serviceName, config), metrics: functionMetrics(fn) };
}

/**
 * Use first in a chain: every log line of the invocation carries the Lambda context (function_request_id,
 * cold_start, ...), the correlation id (`correlate`) is dropped when it ends, and its metrics are written in
 * one flush, after every other middleware has counted. Nothing without `observability` (tests, benchmarks).
 */
export function observed(observability: Observability | undefined): MiddlewareObj[] {
  if (!observability) return [];
  return [
    flushMetrics(observability.metrics),
    injectLambdaContext(observability.logger, { resetKeys: true }),
  ];
}

/** The one field naming the correlation id in every function's log lines (the agent's is the same). */
export function correlate(observability: Observability | undefined, correlationId: string): void {
  observability?.logger.setCorrelationId(correlationId);
}

export interface DomainWiring {
  readonly clients: AwsClients;
  readonly domain: DomainDeps;
  readonly schemas: Schemas;
  readonly logger: AppLogger;
  readonly observability: Observability;
}

/** What the notification-handling functions (HTTP, EventBridge) share. */
export function domainWiring(serviceName: string, fn: string, config: Config): DomainWiring {
  const { clients, store, queue, clock } = productionPorts(config);
  const observe = observability(serviceName, fn, config);
  const logger = appLogger(observe.logger);
  return {
    clients,
    domain: { store, queue, clock, limits: config.limits, log: logger, nodes: config.nodes },
    schemas: buildSchemas(config.limits, config.catalog),
    logger,
    observability: observe,
  };
}

/** A handler built on its first call: cold starts pay for wiring only when invoked, imports stay pure.
 * A wiring failure (bad configuration) surfaces as the invocation's rejection. */
export function lazyHandler<A extends unknown[], R>(
  build: () => (...args: A) => Promise<R>,
): (...args: A) => Promise<R> {
  let built: ((...args: A) => Promise<R>) | undefined;
  return async (...args: A) => {
    built ??= build();
    return built(...args);
  };
}
