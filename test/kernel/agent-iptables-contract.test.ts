import { DirectRunner, HelperRunner } from "../../agent/exec-helper.ts";
import { ExecIptables } from "../../agent/iptables/port.ts";
import { describeKernel } from "../support/requirements.ts";
import { iptablesPortContract } from "./iptables-port-contract.ts";

describeKernel("IptablesPort contract: real iptables-restore in real namespaces (command helper)", () => {
  iptablesPortContract(() => new ExecIptables({ runner: new HelperRunner() }), `cthc${process.pid}`);
});

describeKernel("IptablesPort contract: real iptables-restore in real namespaces (direct spawns)", () => {
  iptablesPortContract(() => new ExecIptables({ runner: new DirectRunner() }), `cthx${process.pid}`);
});
