/**
 * Soak faults (`npm run soak`): the real agent process SIGKILLed at random points 20 times, and the SQS
 * emulator restarted mid-run, while notifications keep flowing. After each: every namespace holds exactly its
 * router's desired helpers (each once), every router is in sync, every DLQ is empty, and every change the
 * API accepted is in the desired state (nothing lost, nothing duplicated). Seeded: CTH_SOAK_SEED replays.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { describeKernel } from "../support/requirements.ts";
import { Harness } from "./harness.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SEED = process.env.CTH_SOAK_SEED ? Number(process.env.CTH_SOAK_SEED) : Date.now() % 2 ** 31;

interface Model {
  /** Helper ids the API accepted and not yet deleted, per router. */
  readonly held: Map<
    string,
    Map<string, { id: string; router_id: string; protocol: string; port: number; helper: string }>
  >;
  nextPort: Map<string, number>;
  accepted: number;
  retriedAfter503: number;
}

/** One client: owns its routers (no cross-client races in the model), adds or deletes one helper at a time. */
async function client(
  h: Harness,
  model: Model,
  routers: string[],
  count: number,
  random: () => number,
): Promise<void> {
  for (let i = 0; i < count; i++) {
    const routerId = routers[Math.floor(random() * routers.length)]!;
    const held = model.held.get(routerId)!;
    const remove = held.size > 3 && random() < 0.3;
    let helper: { id: string; router_id: string; protocol: string; port: number; helper: string };
    if (remove) helper = [...held.values()][Math.floor(random() * held.size)]!;
    else {
      const port = model.nextPort.get(routerId)!;
      model.nextPort.set(routerId, port + 1);
      const udp = random() < 0.3;
      helper = {
        id: crypto.randomUUID(),
        router_id: routerId,
        protocol: udp ? "udp" : "tcp",
        port,
        helper: udp ? "tftp" : "ftp",
      };
    }
    const body = { event: remove ? "deleted" : "created", conntrack_helpers: [helper] };
    for (let attempt = 0; ; attempt++) {
      const response = await h.api("POST", "/v1/notifications", body);
      if (response.status === 202) break;
      // A retried delete whose first try was committed before the 503: already done.
      if (attempt > 0 && remove && response.status === 404) break;
      if (response.status !== 503 || attempt > 60)
        throw new Error(`POST ${response.status} ${JSON.stringify(response.json)}`);
      model.retriedAfter503++;
      await sleep(250);
    }
    model.accepted++;
    if (remove) held.delete(helper.id);
    else held.set(helper.id, helper);
  }
}

describeKernel("soak: faults under load (real agent process, emulators, real kernel)", () => {
  let h: Harness;
  const model: Model = { held: new Map(), nextPort: new Map(), accepted: 0, retriedAfter503: 0 };

  beforeAll(async () => {
    console.log(`[soak] faults: seed=${SEED} (replay: CTH_SOAK_SEED=${SEED})`);
    h = await Harness.start();
    for (let i = 0; i < 10; i++) {
      const id = await h.addRouter();
      model.held.set(id, new Map());
      model.nextPort.set(id, 2000);
    }
    h.spawnAgent();
    h.startSweeps(5);
  }, 180_000);

  afterAll(async () => {
    await h?.stop();
  }, 60_000);

  async function expectConverged(label: string) {
    const bad = await h.waitConverged(180_000);
    if (bad.length > 0)
      console.log(`[soak] ${label}: divergent ${bad.join(", ")}\n${h.log.slice(-40).join("\n")}`);
    expect(bad, `${label}: routers not at their desired state / not in sync`).toEqual([]);
    for (const routerId of h.routers) {
      const view = await h.view(routerId);
      const want = [...model.held.get(routerId)!.keys()].sort();
      expect(view.helpers.map((x) => x.id).sort(), `${label}: accepted changes of ${routerId}`).toEqual(want);
    }
    expect(await h.depth(h.nodeDlqUrl), `${label}: node DLQ`).toBe(0);
    expect(await h.depth(h.statusDlqUrl), `${label}: status DLQ`).toBe(0);
  }

  it("the agent SIGKILLed at 20 random points while 300 notifications flow", async () => {
    const random = rng(SEED);
    const routers = [...model.held.keys()];
    const clients = Array.from({ length: 5 }, (_, c) =>
      client(h, model, routers.slice(c * 2, c * 2 + 2), 60, rng(SEED + c + 1)),
    );
    let kills = 0;
    const killer = (async () => {
      for (let k = 0; k < 20; k++) {
        await sleep(300 + random() * 2_500);
        await h.killAgent("SIGKILL");
        kills++;
        await sleep(random() * 600);
        h.spawnAgent();
      }
    })();
    await Promise.all([...clients, killer]);
    expect(kills).toBe(20);
    console.log(
      `[soak] SIGKILL: ${model.accepted} notifications accepted, ${kills} kills, ${h.agentStarts} agent starts`,
    );
    await expectConverged("after 20 SIGKILLs");
  }, 600_000);

  it("the SQS emulator restarted mid-run while 150 notifications flow", async () => {
    const before = model.accepted;
    const routers = [...model.held.keys()];
    const clients = Array.from({ length: 5 }, (_, c) =>
      client(h, model, routers.slice(c * 2, c * 2 + 2), 30, rng(SEED + 100 + c)),
    );
    const restart = (async () => {
      await sleep(1_500);
      await h.restartSqs(8_000);
    })();
    await Promise.all([...clients, restart]);
    console.log(
      `[soak] SQS restart: ${model.accepted - before} notifications accepted, ${model.retriedAfter503} client retries after a 503`,
    );
    await expectConverged("after the SQS restart");
  }, 600_000);
});
