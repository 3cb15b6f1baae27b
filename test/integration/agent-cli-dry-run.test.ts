/**
 * The agent CLI as a process, `--backend dry-run` (no root, no iptables): fauxqs queue in, rendered
 * iptables-restore input under the state dir out, applied report to the status queue, SIGTERM -> exit 0;
 * and the start-up refusals (no keys, bad keys, an unsafe state directory: exit 2 before anything runs).
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { SendMessageCommand } from "@aws-sdk/client-sqs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectedOwnedLines, ownedLines, renderRestore } from "../../agent/iptables/render.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { planFamily } from "../../lib/rules.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";
import { AgentProcess, REPO_ROOT } from "../kernel/agent-support.ts";
import { type Emulators, type QueuePair, startEmulators } from "../support/emulators.ts";
import { eventually, Sandbox } from "../support/netns.ts";
import { signedAttributes, testKey, verifyKeysDir } from "../support/signing.ts";

const catalog = new HelperCatalog();
const dispatcher = testKey("dispatcher");

describe("agent CLI with --backend dry-run", () => {
  const sandbox = new Sandbox();
  let emu: Emulators;
  let queue: QueuePair;
  let status: QueuePair;
  let stateDir: string;
  let keysDir: string;
  let agent: AgentProcess;

  const sendSigned = async (routerId: string, revision: number, helpers: readonly HelperRule[]) => {
    const body = JSON.stringify({
      v: 1,
      kind: "router-sync",
      router_id: routerId,
      revision,
      helpers,
      correlation_id: `dry-${revision}`,
      issued_at: new Date().toISOString(),
    });
    await emu.clients().sqs.send(
      new SendMessageCommand({
        QueueUrl: queue.url,
        MessageGroupId: routerId,
        MessageDeduplicationId: randomUUID(),
        MessageBody: body,
        MessageAttributes: await signedAttributes(dispatcher, body),
      }),
    );
  };

  const appliedReport = (routerId: string, revision: number) =>
    eventually(async () => {
      const drained = (await emu.drain(status.url)).map((m) => JSON.parse(m.Body!));
      reports.push(...drained);
      return reports.find((r) => r.kind === "applied" && r.router_id === routerId && r.revision === revision);
    });
  const reports: Record<string, unknown>[] = [];

  beforeAll(async () => {
    emu = await startEmulators();
    queue = await emu.createNodeQueue(`dry-${sandbox.tag}`);
    status = await emu.createStatusQueue(`cth-status-dry-${sandbox.tag}`);
    stateDir = await mkdtemp(join(tmpdir(), "cth-agent-dry-"));
    keysDir = verifyKeysDir(dispatcher);
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
      // Every flag can come from the environment too. The API's narrowing is in the environment as well:
      // the agent must not apply it (finding 7).
      {
        ...emu.env(emu.makeConfig()),
        CTH_AGENT_STATE_DIR: stateDir,
        CTH_AGENT_VERIFY_KEYS: keysDir,
        CTH_ALLOWED_HELPERS: "ftp,tftp",
      },
    );
  });

  afterAll(async () => {
    await sandbox.cleanup();
    await emu?.stop();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
    if (keysDir) await rm(keysDir, { recursive: true, force: true });
  });

  it("writes exactly the rendered restore input per family and reports the revision", async () => {
    const routerId = randomUUID();
    const helpers: HelperRule[] = [
      { id: randomUUID(), protocol: "tcp", port: 21, helper: "ftp" },
      { id: randomUUID(), protocol: "udp", port: 161, helper: "snmp" },
    ];
    await sendSigned(routerId, 1, helpers);
    expect(await appliedReport(routerId, 1)).toEqual({
      v: 1,
      kind: "applied",
      router_id: routerId,
      revision: 1,
      host: `dry-${sandbox.tag}`,
      namespace: "qrouter",
      // Of what the dry-run backend wrote and read back.
      digest: helperSetDigest(helpers),
      rules: { ipv4: 2, ipv6: 1 },
      errors: [],
    });
    const base = join(stateDir, "dry-run", `qrouter-${routerId}`);
    for (const family of ["ipv4", "ipv6"] as const) {
      const rules = planFamily(helpers, family, catalog).rules;
      expect(await readFile(`${base}.${family}.restore`, "utf8")).toBe(renderRestore(rules, ""));
      expect(ownedLines(await readFile(`${base}.${family}.save`, "utf8"))).toEqual(expectedOwnedLines(rules));
    }
    const metrics = await (await fetch(`http://127.0.0.1:${agent.metricsPort()}/metrics`)).text();
    expect(metrics).toContain("cth_agent_last_success_timestamp_seconds");
  });

  it("finding 7: narrowed by CTH_ALLOWED_HELPERS=ftp,tftp, it still applies a router holding irc, and empties it", async () => {
    const routerId = randomUUID();
    const helpers: HelperRule[] = [
      { id: randomUUID(), protocol: "tcp", port: 6667, helper: "irc" },
      { id: randomUUID(), protocol: "tcp", port: 21, helper: "ftp" },
    ];
    const base = join(stateDir, "dry-run", `qrouter-${routerId}`);
    await sendSigned(routerId, 1, helpers);
    expect(await appliedReport(routerId, 1)).toMatchObject({ digest: helperSetDigest(helpers), errors: [] });
    const v4 = planFamily(helpers, "ipv4", catalog).rules;
    expect(ownedLines(await readFile(`${base}.ipv4.save`, "utf8"))).toEqual(expectedOwnedLines(v4));
    await sendSigned(routerId, 2, []);
    expect(await appliedReport(routerId, 2)).toMatchObject({ digest: helperSetDigest([]), errors: [] });
    expect(ownedLines(await readFile(`${base}.ipv4.save`, "utf8"))).toEqual([]);
    expect(await emu.depth(queue.dlqUrl)).toBe(0);
  });

  it("exits 0 on SIGTERM", async () => {
    process.kill(agent.pid, "SIGTERM");
    expect((await agent.exited).code).toBe(0);
  });
});

describe("agent CLI start-up refusals (exit 2, nothing started)", () => {
  const run = promisify(execFile);
  const dirs: string[] = [];
  const tempDir = async (prefix: string) => {
    const dir = await mkdtemp(join(tmpdir(), prefix));
    dirs.push(dir);
    return dir;
  };
  afterAll(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  /** Runs the CLI against a queue that does not exist: a refusal must come before any AWS call. */
  const start = async (flags: readonly string[], env: NodeJS.ProcessEnv = {}) => {
    const stateDir = await tempDir("cth-agent-refuse-");
    const failure = await run(
      process.execPath,
      [
        "--import",
        "tsx",
        "agent/cli.ts",
        "--node",
        "refuse",
        "--queue-url",
        "http://127.0.0.1:9/000000000000/none.fifo",
        "--backend",
        "dry-run",
        "--metrics-port",
        "off",
        "--state-dir",
        stateDir,
        ...flags,
      ],
      { cwd: REPO_ROOT, env: { PATH: process.env.PATH, ...env }, timeout: 30_000 },
    ).then(
      () => ({ code: 0, stderr: "" }),
      (error: { code: number; stderr: string }) => error,
    );
    return failure;
  };

  it("without --verify-keys, with an empty or unreadable directory, or with a key that is not P-256", async () => {
    expect(await start([])).toMatchObject({ code: 2, stderr: expect.stringContaining("--verify-keys") });
    const empty = await tempDir("cth-keys-empty-");
    await writeFile(join(empty, "notes.txt"), "not a key");
    expect(await start(["--verify-keys", empty])).toMatchObject({
      code: 2,
      stderr: expect.stringContaining(`${empty} holds no <key-id>.pem public key`),
    });
    expect(await start(["--verify-keys", join(empty, "missing")])).toMatchObject({
      code: 2,
      stderr: expect.stringContaining("is not readable"),
    });
    const bad = verifyKeysDir(testKey("good"));
    dirs.push(bad);
    await writeFile(join(bad, "broken.pem"), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
    expect(await start([], { CTH_AGENT_VERIFY_KEYS: bad })).toMatchObject({
      code: 2,
      stderr: expect.stringContaining(join(bad, "broken.pem")),
    });
  }, 60_000);

  it("on a state directory others can write to, naming it", async () => {
    const keys = verifyKeysDir(testKey("good"));
    dirs.push(keys);
    const open = await tempDir("cth-state-open-");
    await chmod(open, 0o777);
    const failure = await start(["--verify-keys", keys, "--state-dir", open]);
    expect(failure).toMatchObject({ code: 2, stderr: expect.stringContaining(open) });
    expect(failure.stderr).toMatch(/group- or world-writable/);
  }, 30_000);
});
