/**
 * The queue is a trust boundary (DESIGN 2.4): hostile router-sync messages go through the real SQS emulator
 * (fauxqs) and the agent's real poller and core; only messages the dispatcher signed and inside the schema
 * may ever reach the iptables port, every other one (unsigned, signed by another key, a signature of another
 * body) is parked in the DLQ, and what does reach the port is exactly the snapshot.
 * The accepted messages' rules are then proven against the real kernel in a namespace this file creates.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type MessageAttributeValue, SendMessageBatchCommand, type SQSClient } from "@aws-sdk/client-sqs";
import * as fc from "fast-check";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentCore } from "../../agent/core.ts";
import { MemoryIptables } from "../../agent/iptables/memory.ts";
import { expectedOwnedLines, ownedLines } from "../../agent/iptables/render.ts";
import { AgentMetrics } from "../../agent/metrics.ts";
import { QueuePoller } from "../../agent/poller.ts";
import { StateStore } from "../../agent/state.ts";
import { loadVerifyKeys } from "../../agent/verify-keys.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import type { StatusSink } from "../../lib/ports.ts";
import { FAMILIES, planFamily } from "../../lib/rules.ts";
import { buildSchemas, type RouterSyncMessage, type StatusMessage } from "../../lib/schemas/index.ts";
import type { VerifyKeys } from "../../lib/signing.ts";
import { iptablesBackend } from "../support/backends.ts";
import { type Emulators, type QueuePair, startEmulators } from "../support/emulators.ts";
import { describeKernel } from "../support/requirements.ts";
import { signedAttributes, testKey, verifyKeysDir } from "../support/signing.ts";
import {
  allStrings,
  fcParams,
  METACHARACTERS,
  mutate,
  mutationArb,
  rawTwistArb,
  twistJson,
  uuidArb,
  validHelperArb,
} from "./arbitraries.ts";
import { createNamespace, deleteNamespace, type KernelCase, verifyInKernel } from "./kernel-check.ts";

const catalog = new HelperCatalog();
const schemas = buildSchemas(DEFAULT_LIMITS, catalog);
const BATCH = 10;
const RUNS = Number(process.env.CTH_HOSTILE_AGENT_RUNS ?? 1_000);

const snapshotArb = fc
  .record({
    router: uuidArb,
    revision: fc.oneof(fc.nat(50), fc.constantFrom(0, 1, Number.MAX_SAFE_INTEGER)),
    helpers: fc.oneof(
      { weight: 12, arbitrary: fc.array(validHelperArb(true), { maxLength: 6 }) },
      // Near and over the per-router cap (128).
      { weight: 1, arbitrary: fc.array(validHelperArb(false), { minLength: 126, maxLength: 130 }) },
    ),
    correlation: fc.stringMatching(/^[A-Za-z0-9_.:-]{1,40}$/),
    issuedAt: fc
      .date({
        min: new Date("2020-01-01T00:00:00Z"),
        max: new Date("2035-01-01T00:00:00Z"),
        noInvalidDate: true,
      })
      .map((date) => date.toISOString()),
    // Absent (a message from before bindings), or either kind: mutations then reach the field too.
    namespace: fc.constantFrom(undefined, "qrouter" as const, "snat" as const),
  })
  .map(({ router, revision, helpers, correlation, issuedAt, namespace }) => ({
    v: 1,
    kind: "router-sync",
    router_id: router,
    revision,
    ...(namespace ? { namespace } : {}),
    helpers: helpers.map(({ id, pair, port }) => ({
      id,
      protocol: pair.protocol,
      port,
      helper: pair.helper,
    })),
    correlation_id: correlation,
    issued_at: issuedAt,
  }));

/** Message bodies: valid, mutated, textually twisted, or not JSON at all. */
const bodyArb: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: snapshotArb.map((message) => JSON.stringify(message)) },
  {
    weight: 5,
    arbitrary: fc
      .tuple(snapshotArb, fc.array(mutationArb, { minLength: 1, maxLength: 3 }))
      .map(([message, mutations]) => JSON.stringify(mutate(message, mutations)) ?? "null"),
  },
  {
    weight: 2,
    arbitrary: fc.tuple(snapshotArb, rawTwistArb).map(([message, twist]) => twistJson(message, twist)),
  },
  {
    weight: 1,
    arbitrary: fc.oneof(
      fc.constantFrom(
        "null",
        "[]",
        "{}",
        "1",
        '"router-sync"',
        "{",
        "{}}",
        "\ufeff{}",
        ...METACHARACTERS.slice(0, 20),
      ),
      fc.string({ minLength: 1, maxLength: 200 }),
    ),
  },
);

/** How a body is sent: signed by the dispatcher (mostly), or one of the ways a forger would try. */
type Signing = "dispatcher" | "unsigned" | "attacker" | "other-body" | "impostor";
const signingArb: fc.Arbitrary<Signing> = fc.oneof(
  { weight: 8, arbitrary: fc.constant<Signing>("dispatcher") },
  { weight: 1, arbitrary: fc.constantFrom<Signing>("unsigned", "attacker", "other-body", "impostor") },
);
const dispatcher = testKey("dispatcher");
const forgers = { attacker: testKey("attacker"), impostor: testKey("dispatcher") };

async function attributesFor(
  signing: Signing,
  body: string,
): Promise<Record<string, MessageAttributeValue> | undefined> {
  switch (signing) {
    case "dispatcher":
      return signedAttributes(dispatcher, body);
    case "unsigned":
      return undefined;
    case "other-body":
      return signedAttributes(dispatcher, `${body} `);
    default:
      return signedAttributes(forgers[signing], body);
  }
}

/** Independent oracle: nothing the schema lets through may carry a character iptables or a shell cares about. */
const SAFE_TEXT = /^[A-Za-z0-9_.:-]*$/;

/** Wraps the in-memory kernel model to record which namespaces were written, with what. */
class RecordingIptables extends MemoryIptables {
  readonly writes: { ns: string; text: string }[] = [];
  override async restore(ns: string, family: "ipv4" | "ipv6", text: string): Promise<void> {
    this.writes.push({ ns, text });
    await super.restore(ns, family, text);
  }
}

class RecordingStatus implements StatusSink {
  readonly sent: StatusMessage[] = [];
  async send(message: StatusMessage): Promise<void> {
    this.sent.push(message);
  }
}

const counter = (metrics: AgentMetrics) => async () => {
  const sum = async (metric: { get(): Promise<{ values: { value: number }[] }> }) =>
    (await metric.get()).values.reduce((total, value) => total + value.value, 0);
  return (
    (await sum(metrics.messages)) +
    (await sum(metrics.applies)) +
    (await sum(metrics.failures)) +
    (await sum(metrics.namespaceMissing))
  );
};

/** Canonical rule line grammar: the only shape that may ever reach iptables-restore. */
/** Every line the renderer may write: table and chain lines, the jump, and rules (appended, deleted by
 * their exact text, or inserted at a position) in iptables-save's canonical form. */
const RESTORE_LINE =
  /^(?:\*raw|COMMIT|:CTH-HELPERS - \[0:0\]|-[AD] PREROUTING -j CTH-HELPERS|-D OUTPUT -j CTH-HELPERS|-X CTH-HELPERS|(?:-[AD] CTH-HELPERS|-I CTH-HELPERS [1-9]\d{0,5}) -p (tcp|udp) -m \1 --dport \d{1,5} -m comment --comment "cth:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}" -j CT --helper [A-Za-z0-9.-]{1,32}|)$/;

describe("hostile queue messages at the agent boundary (fauxqs + real poller + agent core)", () => {
  let emu: Emulators;
  let queue: QueuePair;
  let sqs: SQSClient;
  let stateRoot: string;
  let keysDir: string;
  let verifyKeys: VerifyKeys;
  const accepted: RouterSyncMessage[] = [];

  beforeAll(async () => {
    emu = await startEmulators();
    queue = await emu.createNodeQueue("hostile-agent", { maxReceiveCount: 3 });
    sqs = emu.clients().sqs;
    stateRoot = mkdtempSync(join(process.env.CTH_SHM ?? tmpdir(), "cth-hostile-agent-"));
    keysDir = verifyKeysDir(dispatcher);
    verifyKeys = loadVerifyKeys(keysDir);
  });

  afterAll(async () => {
    sqs?.destroy();
    await emu?.stop();
    if (stateRoot) rmSync(stateRoot, { recursive: true, force: true });
    if (keysDir) rmSync(keysDir, { recursive: true, force: true });
  });

  /** An agent core and poller on the shared queue, with recording ports, as node `node`. */
  async function agentOn(node: string, timing: { waitSeconds: number; backoffBaseSeconds?: number }) {
    const iptables = new RecordingIptables();
    const status = new RecordingStatus();
    const metrics = new AgentMetrics();
    const logger = pino({ level: "silent" });
    const core = new AgentCore({
      node,
      backend: iptablesBackend(iptables, { catalog }),
      state: await StateStore.load(stateRoot, node),
      status,
      metrics,
      logger,
      namespacePattern: "{namespace}-{router_id}",
      createNamespaces: true,
    });
    const poller = new QueuePoller({
      sqs,
      queueUrl: queue.url,
      dlqUrl: queue.dlqUrl,
      core,
      schema: schemas.routerSync,
      verifyKeys,
      metrics,
      logger,
      ...timing,
    });
    return { iptables, status, metrics, core, poller };
  }

  it(`parks every message outside the schema and applies exactly the others (${RUNS * BATCH} messages)`, async () => {
    let run = 0;
    let invalidTotal = 0;
    let unauthenticatedTotal = 0;
    let appliedTotal = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(bodyArb, signingArb), { minLength: BATCH, maxLength: BATCH }),
        async (cases) => {
          const bodies = cases.map(([body]) => body);
          run++;
          const { iptables, status, metrics, poller } = await agentOn(`hostile-${run}`, {
            waitSeconds: 0,
            backoffBaseSeconds: 1,
          });

          // The oracle's view of each body: only the dispatcher's signature makes it a candidate at all.
          const verdicts = cases.map(([body, signing]) => {
            if (signing !== "dispatcher") return { ok: false as const, forged: true };
            let parsed: unknown;
            try {
              parsed = JSON.parse(body);
            } catch {
              return { ok: false as const };
            }
            const result = schemas.routerSync.safeParse(parsed);
            return result.success ? { ok: true as const, message: result.data } : { ok: false as const };
          });
          const attributes = await Promise.all(cases.map(([body, signing]) => attributesFor(signing, body)));

          const dlqBefore = await emu.depth(queue.dlqUrl);
          const sent = await sqs.send(
            new SendMessageBatchCommand({
              QueueUrl: queue.url,
              Entries: bodies.map((body, index) => ({
                Id: String(index),
                MessageBody: body,
                MessageGroupId: `run-${run}-${index}`,
                MessageDeduplicationId: `run-${run}-${index}`,
                ...(attributes[index] ? { MessageAttributes: attributes[index] } : {}),
              })),
            }),
          );
          // SQS itself refuses some bodies (characters outside its alphabet): those never reach the agent.
          const delivered = new Set((sent.Successful ?? []).map((entry) => Number(entry.Id)));
          const processed = counter(metrics);
          for (let attempt = 0; attempt < 20 && (await processed()) < delivered.size; attempt++) {
            await poller.pollOnce();
          }
          expect(await processed()).toBe(delivered.size);

          const validIds = new Set<string>();
          let invalid = 0;
          let forged = 0;
          verdicts.forEach((verdict, index) => {
            if (!delivered.has(index)) return;
            if (verdict.ok) validIds.add(verdict.message.router_id);
            else {
              invalid++;
              if (verdict.forged) forged++;
            }
          });
          invalidTotal += invalid - forged;
          unauthenticatedTotal += forged;
          const unauthenticated = (await metrics.messages.get()).values.find(
            (value) => value.labels.outcome === "unauthenticated",
          );
          expect(unauthenticated?.value ?? 0).toBe(forged);

          // 1. Nothing outside the schema reached the port; only canonical lines ever did.
          for (const write of iptables.writes) {
            expect(validIds.has(write.ns.replace(/^(qrouter|snat)-/, "")), `write to ${write.ns}`).toBe(true);
            expect(write.text.split("\n").filter((line) => !RESTORE_LINE.test(line))).toEqual([]);
          }
          // 2. Every forged or invalid message is in the DLQ, none is left in the queue.
          expect((await emu.depth(queue.dlqUrl)) - dlqBefore).toBe(invalid);
          expect(await emu.depth(queue.url)).toBe(0);
          // 3. Every accepted message is exactly in place (both families) and reported applied.
          for (const [index, verdict] of verdicts.entries()) {
            if (!verdict.ok || !delivered.has(index)) continue;
            const message = verdict.message;
            expect(allStrings(message).filter((text) => !SAFE_TEXT.test(text))).toEqual([]);
            accepted.push(message);
            appliedTotal++;
            const ns = `${message.namespace ?? "qrouter"}-${message.router_id}`;
            for (const family of FAMILIES) {
              const plan = planFamily(message.helpers, family, catalog);
              const held = (await iptables.namespaceExists(ns))
                ? ownedLines(await iptables.save(ns, family))
                : [];
              expect(held).toEqual(expectedOwnedLines(plan.rules));
            }
            expect(
              status.sent.some(
                (report) =>
                  report.kind === "applied" &&
                  report.router_id === message.router_id &&
                  report.revision === message.revision,
              ),
            ).toBe(true);
          }
        },
      ),
      fcParams("agent queue messages", RUNS),
    );
    console.log(
      `[hostile] agent queue: ${RUNS * BATCH} bodies, ${appliedTotal} accepted and applied, ${invalidTotal} parked as invalid, ${unauthenticatedTotal} as unauthenticated`,
    );
    // The generator must exercise both sides of the boundary, or the property says little.
    expect(appliedTotal).toBeGreaterThan(RUNS);
    expect(invalidTotal).toBeGreaterThan(RUNS * 3);
    expect(unauthenticatedTotal).toBeGreaterThan(RUNS / 2);
  }, 240_000);

  it("a message that repeats a helper id is parked at its first receive and never reaches the port", async () => {
    const { iptables, core, poller } = await agentOn("hostile-dup", { waitSeconds: 1 });
    const id = "6f1d2c3b-4a5e-4f60-8172-93a4b5c6d7e8";
    const message = {
      v: 1,
      kind: "router-sync",
      router_id: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
      revision: 3,
      helpers: [
        { id, protocol: "tcp", port: 21, helper: "ftp" },
        { id, protocol: "udp", port: 69, helper: "tftp" },
      ],
      correlation_id: "dup",
      issued_at: "2026-11-24T06:00:00.000Z",
    } as const;
    const result = schemas.routerSync.safeParse(message);
    expect(result.success).toBe(false);
    expect(result.error?.issues.map((issue) => issue.path.join("."))).toEqual(["helpers.1.id"]);
    const body = JSON.stringify(message);
    const dlqBefore = await emu.depth(queue.dlqUrl);
    await sqs.send(
      new SendMessageBatchCommand({
        QueueUrl: queue.url,
        Entries: [
          {
            Id: "0",
            MessageBody: body,
            MessageGroupId: "dup",
            MessageDeduplicationId: "dup",
            MessageAttributes: await signedAttributes(dispatcher, body),
          },
        ],
      }),
    );
    // One receive: parked there and then, not after maxReceiveCount receives.
    await poller.pollOnce();
    expect((await emu.depth(queue.dlqUrl)) - dlqBefore).toBe(1);
    expect(await emu.depth(queue.url)).toBe(0);
    expect(iptables.writes).toEqual([]);
    // The renderer still refuses it on its own, should a message ever get past the schema.
    await expect(core.apply(message as unknown as RouterSyncMessage)).rejects.toThrow(/appears twice/);
    expect(iptables.writes).toEqual([]);
  });
});

describeKernel("accepted queue messages render to rules the real kernel takes and reads back", () => {
  const ns = `cthp-agent-${process.pid}`;
  beforeAll(() => createNamespace(ns));
  afterAll(() => deleteNamespace(ns));

  it("iptables-restore (--test, then a real commit) accepts every sampled snapshot, read back exactly", () => {
    const seed = process.env.CTH_FC_SEED ? Number(process.env.CTH_FC_SEED) : Date.now() % 2 ** 31;
    console.log(`[hostile] agent kernel sample: seed=${seed}`);
    const cases: KernelCase[] = [];
    for (const body of fc.sample(bodyArb, { numRuns: 4_000, seed })) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(body);
      } catch {
        continue;
      }
      const result = schemas.routerSync.safeParse(parsed);
      if (!result.success) continue;
      for (const family of FAMILIES)
        cases.push({ family, rules: planFamily(result.data.helpers, family, catalog).rules });
    }
    const verdict = verifyInKernel(ns, cases);
    console.log(
      `[hostile] agent kernel sample: ${cases.length / 2} snapshots, ${verdict.rulesChecked} rules, ${verdict.restoreCalls} restore calls`,
    );
    expect(verdict.problems).toEqual([]);
    expect(verdict.rulesChecked).toBeGreaterThan(500);
  }, 120_000);
});
