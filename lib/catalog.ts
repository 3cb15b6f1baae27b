/**
 * Kernel conntrack helper catalog, as verified on the target kernel (DESIGN section 3).
 * Operators may narrow it (CTH_ALLOWED_HELPERS); they can never widen it past what the kernel knows.
 */
export type Protocol = "tcp" | "udp";
export type Family = "ipv4" | "ipv6";

export interface HelperSpec {
  readonly name: string;
  readonly protocols: readonly Protocol[];
  readonly families: readonly Family[];
}

const BOTH: readonly Family[] = ["ipv4", "ipv6"];
const IPV4_ONLY: readonly Family[] = ["ipv4"];

export const KERNEL_HELPERS: readonly HelperSpec[] = [
  { name: "ftp", protocols: ["tcp"], families: BOTH },
  { name: "tftp", protocols: ["udp"], families: BOTH },
  { name: "sip", protocols: ["udp", "tcp"], families: BOTH },
  { name: "sane", protocols: ["tcp"], families: BOTH },
  { name: "amanda", protocols: ["udp"], families: BOTH },
  { name: "RAS", protocols: ["udp"], families: BOTH },
  { name: "Q.931", protocols: ["tcp"], families: BOTH },
  { name: "irc", protocols: ["tcp"], families: IPV4_ONLY },
  { name: "pptp", protocols: ["tcp"], families: IPV4_ONLY },
  { name: "netbios-ns", protocols: ["udp"], families: IPV4_ONLY },
  { name: "snmp", protocols: ["udp"], families: IPV4_ONLY },
];

/** Neutron's names that the kernel does not know, resolved per protocol. */
const ALIASES: Readonly<Record<string, Partial<Record<Protocol, string>>>> = {
  h323: { udp: "RAS", tcp: "Q.931" },
};

export class HelperCatalog {
  private readonly byName: ReadonlyMap<string, HelperSpec>;

  constructor(allowed?: readonly string[]) {
    const known = new Map(KERNEL_HELPERS.map((spec) => [spec.name, spec]));
    if (!allowed || allowed.length === 0) {
      this.byName = known;
      return;
    }
    const narrowed = new Map<string, HelperSpec>();
    for (const name of allowed) {
      const spec = known.get(name);
      if (!spec) throw new Error(`helper "${name}" is not in the kernel catalog`);
      narrowed.set(name, spec);
    }
    this.byName = narrowed;
  }

  /** The canonical kernel name for `name` on `protocol`, or undefined when this catalog rejects the pair. */
  resolve(name: string, protocol: Protocol): string | undefined {
    const canonical = Object.hasOwn(ALIASES, name) ? ALIASES[name]?.[protocol] : name;
    if (canonical === undefined) return undefined;
    const spec = this.byName.get(canonical);
    return spec?.protocols.includes(protocol) ? canonical : undefined;
  }

  spec(name: string): HelperSpec | undefined {
    return this.byName.get(name);
  }

  families(name: string): readonly Family[] {
    return this.byName.get(name)?.families ?? [];
  }

  names(): string[] {
    return [...this.byName.keys()];
  }
}
