import { ExecIptables } from "../../agent/iptables.ts";
import { describeKernel } from "../support/requirements.ts";
import { iptablesPortContract } from "./iptables-port-contract.ts";

describeKernel("IptablesPort contract: real iptables-restore in real namespaces", () => {
  iptablesPortContract(() => new ExecIptables(), `cthc${process.pid}`);
});
