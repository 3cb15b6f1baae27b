/** The FirewallBackend contract on the real kernel, in real namespaces: the same spec as the models'. */
import { describeKernel } from "../support/requirements.ts";
import { backendContract } from "./backend-contract.ts";
import { kernelIptablesHarness, kernelNftHarness } from "./backend-harnesses.ts";

describeKernel("iptables backend on the kernel", () => backendContract(kernelIptablesHarness));
describeKernel("nftables backend on the kernel", () => backendContract(kernelNftHarness));
