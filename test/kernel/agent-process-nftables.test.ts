/**
 * The real agent process with `--backend nftables`: the fauxqs queue through the AWS SDK, signed snapshots,
 * the kernel's own nftables listing of namespaces this suite creates. The iptables counterpart is
 * agent-process.test.ts; the backend contract covers the rest of both.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Message, SendMessageCommand } from "@aws-sdk/client-sqs";
import { afterAll, beforeAll, expect, it } from "vitest";
import { readView, TABLE } from "../../agent/nftables/render.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { type Emulators, type QueuePair, startEmulators } from "../support/emulators.ts";
import { helperRule as helper, NEUTRON_RAW, routerSync as snapshot } from "../support/factories.ts";
import { eventually, inNs, rawSave, Sandbox } from "../support/netns.ts";
import { describeKernel } from "../support/requirements.ts";
import { signedAttributes, testKey, verifyKeysDir } from "../support/signing.ts";
import { AgentProcess, agentFlags } from "./agent-support.ts";

const catalog = new HelperCatalog();
const dispatcher = testKey("dispatcher");

/** Our rules as the kernel lists them: helper id -> the family it is restricted to ("inet": both). */
async function listed(ns: string): Promise<Record<string, string> | undefined> {
  const out = await inNs(ns, ["nft", "-j", "list", "table", "inet", TABLE]).catch(() => undefined);
  if (!out) return undefined;
  return Object.fromEntries(
    readView(out.stdout, catalog).rules.map((rule) => [rule.id, rule.only ?? "inet"]),
  );
}

describeKernel("agent process with --backend nftables: fauxqs queue -> one inet table per namespace", () => {
  const sandbox = new Sandbox();
  const node = `n${sandbox.tag}`;
  const routerId = randomUUID();
  const ns = `qrouter-${routerId}`;
  let emu: Emulators;
  let queue: QueuePair;
  let status: QueuePair;
  let stateDir: string;
  let keysDir: string;
  let agent: AgentProcess;
  const reports: Record<string, unknown>[] = [];

  const send = async (body: unknown) => {
    const text = JSON.stringify(body);
    await emu.clients().sqs.send(
      new SendMessageCommand({
        QueueUrl: queue.url,
        MessageBody: text,
        MessageGroupId: routerId,
        MessageDeduplicationId: randomUUID(),
        MessageAttributes: await signedAttributes(dispatcher, text),
      }),
    );
  };
  const waitReport = (revision: number) =>
    eventually(
      async () => {
        reports.push(...(await emu.drain(status.url)).map((m: Message) => JSON.parse(m.Body!)));
        return reports.find((r) => r.router_id === routerId && r.revision === revision);
      },
      20_000,
      `applied report ${routerId}@${revision}`,
    );

  beforeAll(async () => {
    emu = await startEmulators();
    queue = await emu.createNodeQueue(node);
    status = await emu.createStatusQueue(`cth-status-${sandbox.tag}`);
    stateDir = await mkdtemp(join(tmpdir(), "cth-agent-nft-"));
    keysDir = verifyKeysDir(dispatcher);
    await sandbox.namespace("", ns);
    // Neutron's own chain in the same namespace: never ours to touch.
    await inNs(ns, ["iptables-restore", "--noflush"], NEUTRON_RAW);
    const flags = agentFlags(
      { node, queueUrl: queue.url, statusQueueUrl: status.url, stateDir, verifyKeysDir: keysDir },
      ["--backend", "nftables", "--metrics-port", "off", "--drift-interval", "2", "--retry-base", "1"],
    );
    agent = await AgentProcess.start(sandbox, flags, { ...emu.env(emu.makeConfig()), LOG_LEVEL: "debug" });
  });

  afterAll(async () => {
    await sandbox.cleanup();
    await emu?.stop();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
    if (keysDir) await rm(keysDir, { recursive: true, force: true });
  });

  const v1 = [helper("ftp", "tcp", 21), helper("irc", "tcp", 6667), helper("sip", "udp", 5060)];

  it("converges a signed snapshot into one table; the report's digest is of what the kernel committed", async () => {
    await send(snapshot(routerId, 1, v1));
    expect(await waitReport(1)).toMatchObject({
      namespace: "qrouter",
      digest: helperSetDigest(v1),
      rules: { ipv4: 3, ipv6: 2 },
      errors: [],
    });
    expect(await listed(ns)).toEqual({ [v1[0]!.id]: "inet", [v1[1]!.id]: "ipv4", [v1[2]!.id]: "inet" });
    expect(await rawSave(ns, "ipv4")).toContain(":neutron-l3-agent-PREROUTING");
  });

  it("drift: the table deleted by hand is back within the drift interval", async () => {
    await inNs(ns, ["nft", "delete", "table", "inet", TABLE]);
    const back = await eventually(async () => (await listed(ns)) ?? undefined, 15_000, "table restored");
    expect(Object.keys(back).sort()).toEqual(v1.map((h) => h.id).sort());
  });

  it("the empty snapshot removes the table and leaves Neutron's rules", async () => {
    await send(snapshot(routerId, 2, []));
    expect(await waitReport(2)).toMatchObject({ digest: helperSetDigest([]), rules: { ipv4: 0, ipv6: 0 } });
    expect(await listed(ns)).toBeUndefined();
    expect(await rawSave(ns, "ipv4")).toContain(":neutron-l3-agent-PREROUTING");
  });

  it("SIGTERM stops it cleanly with exit code 0", async () => {
    agent.child.kill("SIGTERM");
    expect((await agent.exited).code).toBe(0);
  });
});
