/** Firewall backends for tests: the real backend classes over a given port (in-memory model or exec adapter). */
import { type Logger, pino } from "pino";
import { IptablesBackend } from "../../agent/iptables/backend.ts";
import type { IptablesPort } from "../../agent/iptables/port.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { NftablesBackend } from "../../agent/nftables/backend.ts";
import type { NftPort } from "../../agent/nftables/port.ts";
import { type Family, HelperCatalog } from "../../lib/catalog.ts";

export interface BackendOptions {
  readonly catalog?: HelperCatalog;
  readonly metrics?: AgentMetrics;
  readonly logger?: Logger;
  readonly families?: readonly Family[];
}

const defaults = (options: BackendOptions) => ({
  catalog: options.catalog ?? new HelperCatalog(),
  metrics: options.metrics ?? new AgentMetrics(),
  logger: options.logger ?? pino({ level: "silent" }),
  ...(options.families ? { families: options.families } : {}),
});

export function iptablesBackend(port: IptablesPort, options: BackendOptions = {}): IptablesBackend {
  return new IptablesBackend({ port, ...defaults(options) });
}

export function nftablesBackend(port: NftPort, options: BackendOptions = {}): NftablesBackend {
  return new NftablesBackend({ port, ...defaults(options) });
}
