/**
 * `--backend`: the firewall backend an agent runs, built in one place, and the backends it takes over from
 * (whatever another backend wrote to this node's namespaces is removed once the current one is verified).
 */
import { join } from "node:path";
import type { Logger } from "pino";
import type { Family, HelperCatalog } from "../lib/catalog.ts";
import type { BackendName, FirewallBackend } from "./backend.ts";
import { type CommandRunner, DirectRunner, HelperRunner } from "./exec-helper.ts";
import { IptablesBackend } from "./iptables/backend.ts";
import { DryRunIptables } from "./iptables/memory.ts";
import { ExecIptables } from "./iptables/port.ts";
import type { AgentMetrics } from "./metrics.ts";
import { NftablesBackend } from "./nftables/backend.ts";
import { ExecNft } from "./nftables/port.ts";

export interface BackendChoice {
  readonly name: BackendName;
  readonly catalog: HelperCatalog;
  readonly logger: Logger;
  readonly families: readonly Family[];
  /** Where dry-run writes what it would have applied. */
  readonly stateDir: string;
  /** Who spawns the firewall commands: a small helper process (cheaper forks) or the agent itself. */
  readonly spawner: "helper" | "direct";
}

export interface BackendFactories {
  readonly backend: (metrics: AgentMetrics) => FirewallBackend;
  readonly formerBackends: (metrics: AgentMetrics) => readonly FirewallBackend[];
}

export function backendFactories(choice: BackendChoice): BackendFactories {
  const { catalog, logger, families } = choice;
  let runner: CommandRunner | undefined;
  // One command helper serves the backend and the ones it takes over from.
  const shared = () => {
    runner ??= choice.spawner === "direct" ? new DirectRunner() : new HelperRunner();
    return runner;
  };
  const iptables = (metrics: AgentMetrics) =>
    new IptablesBackend({ port: new ExecIptables({ runner: shared() }), catalog, metrics, logger, families });
  const nftables = (metrics: AgentMetrics) =>
    new NftablesBackend({ port: new ExecNft({ runner: shared() }), catalog, metrics, logger, families });
  switch (choice.name) {
    case "iptables":
      return { backend: iptables, formerBackends: (metrics) => [nftables(metrics)] };
    case "nftables":
      return { backend: nftables, formerBackends: (metrics) => [iptables(metrics)] };
    case "dry-run":
      return {
        backend: (metrics) =>
          new IptablesBackend({
            port: new DryRunIptables(join(choice.stateDir, "dry-run")),
            catalog,
            metrics,
            logger,
            families,
            name: "dry-run",
          }),
        formerBackends: () => [],
      };
  }
}
