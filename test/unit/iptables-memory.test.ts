import { describe } from "vitest";
import { MemoryIptables } from "../../agent/iptables/memory.ts";
import { iptablesPortContract } from "../kernel/iptables-port-contract.ts";

describe("IptablesPort contract: in-memory model", () => {
  iptablesPortContract(() => new MemoryIptables(), "mem");
});
