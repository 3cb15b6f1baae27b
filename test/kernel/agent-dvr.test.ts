/**
 * DVR routers on the real kernel, through the real agent process and queue: a snapshot for a router's snat
 * namespace lands there and nowhere else, and a legacy router turned DVR has its rules moved from qrouter to
 * snat. Only namespaces this suite creates are touched (the pattern carries the sandbox's tag).
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Message, SendMessageCommand } from "@aws-sdk/client-sqs";
import { afterAll, beforeAll, expect, it } from "vitest";
import { expectedOwnedLines, ownedLines, readBackDigest } from "../../agent/iptables/render.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { planFamily } from "../../lib/rules.ts";
import type { HelperRule, NamespaceKind, RouterSyncMessage } from "../../lib/schemas/index.ts";
import { type Emulators, type QueuePair, startEmulators } from "../support/emulators.ts";
import { helperRule as helper, routerSync as snapshot } from "../support/factories.ts";
import { eventually, inNs, rawSave, Sandbox } from "../support/netns.ts";
import { describeKernel } from "../support/requirements.ts";
import { signedAttributes, testKey, verifyKeysDir } from "../support/signing.ts";
import { AgentProcess, agentFlags } from "./agent-support.ts";

const catalog = new HelperCatalog();
const dispatcher = testKey("dispatcher");

/** Neutron's L3 agent's own chain in a router's raw table, with a helper rule of its own: never ours to touch. */
const NEUTRON_RAW =
  "*raw\n:neutron-l3-agent-PREROUTING - [0:0]\n-A PREROUTING -j neutron-l3-agent-PREROUTING\n" +
  "-A neutron-l3-agent-PREROUTING -p tcp -m tcp --dport 2121 -j CT --helper ftp\nCOMMIT\n";

const expected = (helpers: readonly HelperRule[], family: "ipv4" | "ipv6") =>
  expectedOwnedLines(planFamily(helpers, family, catalog).rules);

describeKernel("agent process: DVR routers' snat namespaces on the real kernel", () => {
  const sandbox = new Sandbox();
  const node = `d${sandbox.tag}`;
  const prefix = `k${sandbox.tag}`;
  const nsOf = (kind: NamespaceKind, routerId: string) => `${prefix}${kind}-${routerId}`;
  let emu: Emulators;
  let queue: QueuePair;
  let status: QueuePair;
  let stateDir: string;
  let keysDir: string;
  const reports: Record<string, unknown>[] = [];

  const send = async (body: RouterSyncMessage) => {
    const text = JSON.stringify(body);
    await emu.clients().sqs.send(
      new SendMessageCommand({
        QueueUrl: queue.url,
        MessageBody: text,
        MessageGroupId: body.router_id,
        MessageDeduplicationId: randomUUID(),
        MessageAttributes: await signedAttributes(dispatcher, text),
      }),
    );
  };

  const waitReport = (routerId: string, revision: number) =>
    eventually(
      async () => {
        reports.push(...(await emu.drain(status.url)).map((m: Message) => JSON.parse(m.Body!)));
        return reports.find((r) => r.router_id === routerId && r.revision === revision);
      },
      20_000,
      `applied report ${routerId}@${revision}`,
    );

  /** A router namespace as Neutron leaves it: its own chain in both families' raw tables. */
  const neutronNamespace = async (name: string) => {
    await sandbox.namespace("", name);
    await inNs(name, ["iptables-restore", "--noflush"], NEUTRON_RAW);
    await inNs(name, ["ip6tables-restore", "--noflush"], NEUTRON_RAW);
    return { ipv4: await rawSave(name, "ipv4"), ipv6: await rawSave(name, "ipv6") };
  };

  beforeAll(async () => {
    emu = await startEmulators();
    queue = await emu.createNodeQueue(node);
    status = await emu.createStatusQueue(`cth-status-${sandbox.tag}`);
    stateDir = await mkdtemp(join(tmpdir(), "cth-agent-dvr-"));
    keysDir = verifyKeysDir(dispatcher);
    const flags = agentFlags(
      { node, queueUrl: queue.url, statusQueueUrl: status.url, stateDir, verifyKeysDir: keysDir },
      [
        ...["--namespace-pattern", `${prefix}{namespace}-{router_id}`, "--metrics-port", "off"],
        ...["--visibility-timeout", "3", "--retry-base", "1"],
      ],
    );
    await AgentProcess.start(sandbox, flags, emu.env(emu.makeConfig()));
  });

  afterAll(async () => {
    await sandbox.cleanup();
    await emu?.stop();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
    if (keysDir) await rm(keysDir, { recursive: true, force: true });
  });

  it("a DVR router's snapshot fills its snat namespace; qrouter, with Neutron's rules, stays as it was", async () => {
    const routerId = randomUUID();
    // A dvr_snat node holds both namespaces of a DVR router.
    const qrouterBefore = await neutronNamespace(nsOf("qrouter", routerId));
    const snat = nsOf("snat", routerId);
    await sandbox.namespace("", snat);
    const helpers = [helper("ftp", "tcp", 21), helper("irc", "tcp", 6667)];
    await send(snapshot(routerId, 1, helpers, "snat"));
    const report = await waitReport(routerId, 1);
    const saves = { ipv4: await rawSave(snat, "ipv4"), ipv6: await rawSave(snat, "ipv6") };
    expect(ownedLines(saves.ipv4)).toEqual(expected(helpers, "ipv4"));
    expect(ownedLines(saves.ipv6)).toEqual(expected(helpers, "ipv6"));
    expect(await rawSave(nsOf("qrouter", routerId), "ipv4")).toBe(qrouterBefore.ipv4);
    expect(await rawSave(nsOf("qrouter", routerId), "ipv6")).toBe(qrouterBefore.ipv6);
    expect(report).toMatchObject({
      kind: "applied",
      host: node,
      namespace: "snat",
      digest: readBackDigest(saves, catalog),
      rules: { ipv4: 2, ipv6: 1 },
      errors: [],
    });
  });

  it("a legacy router turned DVR: its rules move from qrouter to snat, Neutron's stay in qrouter", async () => {
    const routerId = randomUUID();
    const qrouter = nsOf("qrouter", routerId);
    const snat = nsOf("snat", routerId);
    const neutronOnly = await neutronNamespace(qrouter);
    const helpers = [helper("tftp", "udp", 69), helper("sip", "udp", 5060)];
    // As queued before namespace kinds: no `namespace`, a qrouter router.
    await send(snapshot(routerId, 1, helpers));
    expect(await waitReport(routerId, 1)).toMatchObject({ namespace: "qrouter" });
    expect(ownedLines(await rawSave(qrouter, "ipv4"))).toEqual(expected(helpers, "ipv4"));
    // Neutron turns the router distributed: the snat namespace appears, the control plane re-sends.
    await sandbox.namespace("", snat);
    await send(snapshot(routerId, 2, helpers, "snat"));
    const report = await waitReport(routerId, 2);
    const saves = { ipv4: await rawSave(snat, "ipv4"), ipv6: await rawSave(snat, "ipv6") };
    expect(ownedLines(saves.ipv4)).toEqual(expected(helpers, "ipv4"));
    expect(ownedLines(saves.ipv6)).toEqual(expected(helpers, "ipv6"));
    expect(await rawSave(qrouter, "ipv4")).toBe(neutronOnly.ipv4);
    expect(await rawSave(qrouter, "ipv6")).toBe(neutronOnly.ipv6);
    expect(report).toMatchObject({ namespace: "snat", digest: readBackDigest(saves, catalog) });
    expect(readBackDigest(saves, catalog)).toBe(helperSetDigest(helpers));
  });
});
