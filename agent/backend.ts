/**
 * The seam between the agent core (revisions, locks, namespaces' lifecycle, state, reports) and a firewall
 * backend (agent/iptables/, agent/nftables/): the core says which helpers a router namespace must hold, the
 * backend makes it so in one transaction, proves it from what the kernel returned, and says what it found.
 */
import type { Family } from "../lib/catalog.ts";
import type { ApplyError, HelperRule } from "../lib/schemas/index.ts";

export const BACKEND_NAMES = ["iptables", "nftables", "dry-run"] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];

/** What a backend proved a namespace holds after converging it (or found there, for a re-report). */
export interface Verified {
  /** Whether anything was written. */
  readonly changed: boolean;
  readonly rules: Record<Family, number>;
  /** Per-helper errors: left out because the kernel lacks the helper, or shadowed on its port. */
  readonly errors: readonly ApplyError[];
  /** Content digest (lib/rules.ts heldDigest) of what the kernel returned, never of what was meant. */
  readonly digest: string;
}

/** The host's network namespaces, as the agent creates and removes them (local stack only). */
export interface Namespaces {
  namespaceExists(ns: string): Promise<boolean>;
  /** Creates the namespace unless it exists. */
  createNamespace(ns: string): Promise<void>;
  /** Deletes the namespace if it exists. */
  deleteNamespace(ns: string): Promise<void>;
}

export interface FirewallBackend extends Namespaces {
  /** Recorded in the agent's state beside each router, so a later backend knows whose rules are there. */
  readonly name: Exclude<BackendName, "dry-run"> | "dry-run";
  /** Helpers the running kernel lacks, per family: filled by probe, grown when an apply error names one. */
  readonly unavailable: Record<Family, Set<string>>;
  /** Finds the catalog helpers the kernel lacks, in a throwaway namespace (nothing persists). */
  probe(): Promise<void>;
  /**
   * Converges what this backend owns in `ns` to `helpers`, in one transaction, and verifies it. `assumed` is
   * what the agent's state says this backend last wrote there: the guess for a namespace it has not read in
   * this process. Throws NamespaceMissingError or ApplyFailedError.
   */
  converge(ns: string, helpers: readonly HelperRule[], assumed: readonly HelperRule[]): Promise<Verified>;
  /** Full read-back: does `ns` hold exactly what `helpers` plan (drift check)? */
  holds(ns: string, helpers: readonly HelperRule[]): Promise<boolean>;
  /** What `ns` holds, as a report would carry it (a re-report of an applied revision). */
  describe(ns: string, helpers: readonly HelperRule[]): Promise<Verified>;
  /** Removes whatever this backend owns in `ns` (a switch to another backend). True when it removed some. */
  release(ns: string): Promise<boolean>;
  /** Drops what this process remembers of `ns` (it is gone, or a new namespace took its name). */
  forget(ns: string): void;
  /** Lets helper processes exit once the commands in flight are done. */
  close(): void;
}

/** A backend's namespace verbs and close, passed through to the port it writes with. */
export abstract class OnPort<P extends Namespaces> implements Namespaces {
  constructor(protected readonly port: P) {}

  namespaceExists(ns: string): Promise<boolean> {
    return this.port.namespaceExists(ns);
  }

  createNamespace(ns: string): Promise<void> {
    return this.port.createNamespace(ns);
  }

  deleteNamespace(ns: string): Promise<void> {
    return this.port.deleteNamespace(ns);
  }

  /** Lets the port's command helper exit (in-memory ports have nothing to close). */
  close(): void {
    (this.port as { close?: () => void }).close?.();
  }
}

/** The rules could not be made to match the snapshot; the message stays queued for a retry. */
export class ApplyFailedError extends Error {
  override readonly name = "ApplyFailedError";
  constructor(
    message: string,
    readonly reason: "restore" | "verify" | "other",
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export class NamespaceMissingError extends Error {
  override readonly name = "NamespaceMissingError";
  constructor(readonly namespace: string) {
    super(`network namespace ${namespace} does not exist`);
  }
}

const NS_RE = /^[A-Za-z0-9_.-]{1,64}$/;

/** Namespace names become argv entries and a path under /run/netns: allow only a plain, short name. */
export function assertNamespaceName(ns: string): void {
  if (!NS_RE.test(ns) || ns === "." || ns === "..") throw new Error(`unsafe namespace name "${ns}"`);
}
