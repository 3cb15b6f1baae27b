/**
 * The agent CLI as a process, `--backend dry-run` (no root, no iptables): fauxqs queue in, rendered
 * iptables-restore input under the state dir out, applied report to the status queue, SIGTERM -> exit 0.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SendMessageCommand } from "@aws-sdk/client-sqs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HelperCatalog } from "../../lib/catalog.ts";
import { expectedOwnedLines, ownedLines, planFamily, renderRestore } from "../../lib/render.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";
import { AgentProcess } from "../kernel/agent-support.ts";
import { type Emulators, type QueuePair, startEmulators } from "../support/emulators.ts";
import { eventually, Sandbox } from "../support/netns.ts";

const catalog = new HelperCatalog();

describe("agent CLI with --backend dry-run", () => {
  const sandbox = new Sandbox();
  let emu: Emulators;
  let queue: QueuePair;
  let status: QueuePair;
  let stateDir: string;
  let agent: AgentProcess;

  beforeAll(async () => {
    emu = await startEmulators();
    queue = await emu.createNodeQueue(`dry-${sandbox.tag}`);
    status = await emu.createStatusQueue(`cth-status-dry-${sandbox.tag}`);
    stateDir = await mkdtemp(join(tmpdir(), "cth-agent-dry-"));
    agent = await AgentProcess.start(
      sandbox,
      [
        "--node",
        `dry-${sandbox.tag}`,
        "--queue-url",
        queue.url,
        "--status-queue-url",
        status.url,
        "--backend",
        "dry-run",
        "--metrics-port",
        "0",
        "--wait-seconds",
        "1",
      ],
      // Every flag can come from the environment too.
      { ...emu.env(emu.makeConfig()), CTH_AGENT_STATE_DIR: stateDir },
    );
  });

  afterAll(async () => {
    await sandbox.cleanup();
    await emu?.stop();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  it("writes exactly the rendered restore input per family and reports the revision", async () => {
    const routerId = randomUUID();
    const helpers: HelperRule[] = [
      { id: randomUUID(), protocol: "tcp", port: 21, helper: "ftp" },
      { id: randomUUID(), protocol: "udp", port: 161, helper: "snmp" },
    ];
    await emu.clients().sqs.send(
      new SendMessageCommand({
        QueueUrl: queue.url,
        MessageGroupId: routerId,
        MessageDeduplicationId: randomUUID(),
        MessageBody: JSON.stringify({
          v: 1,
          kind: "router-sync",
          router_id: routerId,
          revision: 1,
          helpers,
          correlation_id: "dry-1",
          issued_at: new Date().toISOString(),
        }),
      }),
    );
    const reports = await eventually(async () => {
      const drained = (await emu.drain(status.url)).map((m) => JSON.parse(m.Body!));
      const applied = drained.filter((r) => r.kind === "applied");
      return applied.length > 0 && { applied, all: drained };
    });
    expect(reports.applied).toEqual([
      {
        v: 1,
        kind: "applied",
        router_id: routerId,
        revision: 1,
        host: `dry-${sandbox.tag}`,
        rules: { ipv4: 2, ipv6: 1 },
        errors: [],
      },
    ]);
    const base = join(stateDir, "dry-run", `qrouter-${routerId}`);
    for (const family of ["ipv4", "ipv6"] as const) {
      const rules = planFamily(helpers, family, catalog).rules;
      expect(await readFile(`${base}.${family}.restore`, "utf8")).toBe(renderRestore(rules, ""));
      expect(ownedLines(await readFile(`${base}.${family}.save`, "utf8"))).toEqual(expectedOwnedLines(rules));
    }
    const metrics = await (await fetch(`http://127.0.0.1:${agent.metricsPort()}/metrics`)).text();
    expect(metrics).toContain("cth_agent_last_success_timestamp_seconds");
  });

  it("exits 0 on SIGTERM", async () => {
    process.kill(agent.pid, "SIGTERM");
    expect((await agent.exited).code).toBe(0);
  });
});
