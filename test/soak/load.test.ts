/**
 * Load on the real local stack (`npm start` as a child: JWT-verifying gateway, real functions, emulators, the
 * agent on real iptables): 1,000 notifications over 50 routers from 20 concurrent clients. Then every
 * namespace holds exactly its router's desired helpers, every router is in sync, the agent parked nothing
 * and failed nothing, and the node and status DLQs are empty. Throughput is reported.
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { GetQueueAttributesCommand, SQSClient } from "@aws-sdk/client-sqs";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ownedHelperIds } from "../../agent/iptables/render.ts";
import { api, freePort, type StackChild, stackMissing, startStackChild } from "../../bench/stack-child.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { FAMILIES, planFamily } from "../../lib/rules.ts";
import type { StackInfo } from "../../scripts/local/stack.ts";
import { describeKernel } from "../support/requirements.ts";
import { ROOT } from "./harness.ts";

const ROUTERS = 50;
const CLIENTS = 20;
const NOTIFICATIONS = 1_000;
const catalog = new HelperCatalog();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeKernel("soak: 1,000 notifications over 50 routers from 20 clients on the local stack", () => {
  let stack: StackChild;
  let metricsPort = 0;
  const routers: string[] = [];

  beforeAll(async () => {
    const missing = stackMissing(ROOT);
    if (missing) throw new Error(`the local stack cannot run: ${missing}`);
    metricsPort = await freePort();
    stack = await startStackChild(ROOT, { env: { CTH_LOCAL_METRICS_PORT: String(metricsPort) } });
    expect(stack.backend).toBe("iptables");
    for (let i = 0; i < ROUTERS; i++) {
      const id = randomUUID();
      const put = await api(stack, stack.adminToken, "PUT", `/v1/routers/${id}`, {
        project_id: stack.project,
        host: "local",
      });
      expect(put.status).toBe(201);
      routers.push(id);
    }
  }, 300_000);

  afterAll(async () => {
    await stack?.stop();
  }, 120_000);

  it("every namespace at its desired state, every router in sync, nothing parked or failed", async () => {
    const accepted = new Map<string, Set<string>>(routers.map((id) => [id, new Set()]));
    let next = 0;
    let retries = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: CLIENTS }, async () => {
        for (;;) {
          const n = next++;
          if (n >= NOTIFICATIONS) return;
          const routerId = routers[n % ROUTERS]!;
          const udp = n % 3 === 0;
          const helper = {
            id: randomUUID(),
            router_id: routerId,
            protocol: udp ? "udp" : "tcp",
            port: 1024 + Math.floor(n / ROUTERS),
            helper: udp ? "tftp" : "ftp",
          };
          for (let attempt = 0; ; attempt++) {
            const response = await api(stack, stack.token, "POST", "/v1/notifications", {
              event: "created",
              conntrack_helpers: [helper],
            });
            if (response.status === 202) break;
            if (response.status !== 503 || attempt > 20)
              throw new Error(`POST ${response.status} ${JSON.stringify(response.json)}`);
            retries++;
            await sleep(200);
          }
          accepted.get(routerId)!.add(helper.id);
        }
      }),
    );
    const acceptSeconds = (performance.now() - started) / 1000;

    // Converged: desired == accepted, namespace == desired (each rule once), in sync.
    const deadline = Date.now() + 600_000;
    let bad: string[] = [];
    for (;;) {
      bad = [];
      for (const routerId of routers) {
        const view = (await api(stack, stack.token, "GET", `/v1/routers/${routerId}/conntrack-helpers`))
          .json as {
          in_sync: boolean;
          helpers: { id: string; protocol: "tcp" | "udp"; port: number; helper: string }[];
        };
        let ok = view.in_sync && view.helpers.length === accepted.get(routerId)!.size;
        for (const family of FAMILIES) {
          const want = planFamily(view.helpers, family, catalog).rules.map((r) => r.id);
          let save = "";
          try {
            save = execFileSync(
              "ip",
              [
                "netns",
                "exec",
                `qrouter-${routerId}`,
                family === "ipv4" ? "iptables-save" : "ip6tables-save",
                "-t",
                "raw",
              ],
              { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] },
            );
          } catch {
            ok = false;
          }
          if (ownedHelperIds(save).join(",") !== want.join(",")) ok = false;
        }
        if (!ok) bad.push(routerId);
      }
      if (bad.length === 0 || Date.now() > deadline) break;
      await sleep(1_000);
    }
    const convergedSeconds = (performance.now() - started) / 1000;
    console.log(
      `[soak] load: ${NOTIFICATIONS} notifications accepted in ${acceptSeconds.toFixed(1)} s (${(NOTIFICATIONS / acceptSeconds).toFixed(1)}/s, ${retries} retries after 503); ` +
        `all ${ROUTERS} routers converged and in sync after ${convergedSeconds.toFixed(1)} s (${(NOTIFICATIONS / convergedSeconds).toFixed(1)} notifications/s end to end)`,
    );
    if (bad.length > 0) {
      for (const routerId of bad.slice(0, 3)) {
        const view = (await api(stack, stack.token, "GET", `/v1/routers/${routerId}/conntrack-helpers`))
          .json as Record<string, unknown>;
        console.log(
          `[soak] divergent ${routerId}: revision ${view.revision} applied ${view.applied_revision} in_sync ${view.in_sync} helpers ${(view.helpers as unknown[]).length}`,
        );
      }
      const noisy = stack.output.filter((line) => /"level":(40|50)|warn|error/i.test(line));
      console.log(
        `[soak] stack warnings/errors (last 40 of ${noisy.length}):\n${noisy.slice(-40).join("\n")}`,
      );
    }
    expect(bad).toEqual([]);
    for (const routerId of routers) expect(accepted.get(routerId)!.size).toBe(NOTIFICATIONS / ROUTERS);

    // The agent's DLQ fills only by parking invalid messages or by repeated failed applies: both counted.
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const total = (name: string, filter = "") =>
      metrics
        .split("\n")
        .filter((line) => line.startsWith(name) && line.includes(filter))
        .reduce((sum, line) => sum + Number(line.split(" ").pop()), 0);
    expect(total("cth_agent_messages_total", 'outcome="invalid"')).toBe(0);
    expect(total("cth_agent_apply_failures_total")).toBe(0);
    expect(total("cth_agent_applies_total")).toBeGreaterThan(0);

    // And the dead-letter queues themselves, read from the emulator: empty, in flight included.
    const info = JSON.parse(readFileSync(join(stack.dir, "stack.json"), "utf8")) as StackInfo;
    const sqs = new SQSClient({
      region: "us-east-1",
      endpoint: info.awsEndpoint,
      credentials: { accessKeyId: "test", secretAccessKey: "test" },
    });
    for (const dlq of [info.queues.nodeDlq, info.queues.statusDlq]) {
      const { Attributes } = await sqs.send(
        new GetQueueAttributesCommand({
          QueueUrl: dlq,
          AttributeNames: ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        }),
      );
      expect(
        Number(Attributes?.ApproximateNumberOfMessages) +
          Number(Attributes?.ApproximateNumberOfMessagesNotVisible),
        dlq,
      ).toBe(0);
    }
    sqs.destroy();
  }, 900_000);
});
