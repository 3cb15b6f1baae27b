/** The FirewallBackend contract against each backend's in-memory model (the kernel suite runs it for real). */
import { describe } from "vitest";
import { backendContract } from "../kernel/backend-contract.ts";
import { memoryIptablesHarness, memoryNftHarness } from "../kernel/backend-harnesses.ts";

describe("iptables backend over the in-memory iptables model", () => backendContract(memoryIptablesHarness));
describe("nftables backend over the in-memory nftables model", () => backendContract(memoryNftHarness));
