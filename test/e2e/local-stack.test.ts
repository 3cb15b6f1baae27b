/**
 * End to end, as a newcomer runs it: `npm start` as a child process (own port, own .local directory), an
 * admin registers a router on node `local`, its owner posts a notification, and the rule shows up in the
 * router namespace's `iptables-save` while the API reports `in_sync: true`. An EventBridge event goes in
 * through `npm run emit`. Then SIGTERM: every process of the stack is gone, and so are its namespaces.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import {
  DeleteMessageCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSClient,
} from "@aws-sdk/client-sqs";
import { afterAll, beforeAll, expect, it } from "vitest";
import { loadOrCreateSigningKey, type SigningKey, signToken } from "../../scripts/local/auth.ts";
import type { StackInfo } from "../../scripts/local/stack.ts";
import { EMULATOR_CREDENTIALS } from "../support/emulators.ts";
import { alive, freePort, until } from "../support/process.ts";
import { describeKernel } from "../support/requirements.ts";
import { signedAttributes, testKey } from "../support/signing.ts";

const run = promisify(execFile);
const root = resolve(import.meta.dirname, "../..");
const PROJECT = "e2e-owner";

async function rawTable(namespace: string): Promise<string> {
  const { stdout } = await run("ip", ["netns", "exec", namespace, "iptables-save", "-t", "raw"]);
  return stdout;
}

async function namespaces(): Promise<string[]> {
  const { stdout } = await run("ip", ["netns", "list"]);
  return stdout.split("\n").map((line) => line.trim().split(/\s+/)[0] ?? "");
}

describeKernel("npm start (local stack) end to end", () => {
  const routerId = randomUUID();
  const eventRouterId = randomUUID();
  const demoRouterId = randomUUID();
  const deletedRouterId = randomUUID();
  const dvrRouterId = randomUUID();
  const migratedRouterId = randomUUID();
  const haRouterId = randomUUID();
  const ownNamespaces = [
    routerId,
    eventRouterId,
    demoRouterId,
    deletedRouterId,
    dvrRouterId,
    migratedRouterId,
    haRouterId,
  ].flatMap((id) => [`qrouter-${id}`, `snat-${id}`]);
  let dir: string;
  let stack: ChildProcess;
  let output = "";
  let info: StackInfo;
  let key: SigningKey;
  let readyMs: number;
  let exited: Promise<void>;

  const api = (path: string, token: string, init: RequestInit = {}) =>
    fetch(`${info.apiUrl}${path}`, {
      ...init,
      headers: {
        authorization: `Bearer ${token}`,
        "content-type": "application/json",
        ...(init.headers ?? {}),
      },
    });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "cth-e2e-"));
    const port = await freePort();
    stack = spawn("npm", ["start"], {
      cwd: root,
      // Its own process group, like a terminal job: SIGTERM goes to the whole group, as Ctrl-C would.
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env,
        PORT: String(port),
        CTH_LOCAL_DIR: dir,
        CTH_LOCAL_METRICS_PORT: "0",
        CTH_LOCAL_DEMO_ROUTER: demoRouterId,
        CTH_LOCAL_RECONCILE_SECONDS: "2",
      },
    });
    exited = new Promise((done) => stack.once("exit", () => done()));
    stack.stdout!.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    stack.stderr!.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    readyMs = await until("the stack to be ready", 120_000, async () => {
      if (stack.exitCode !== null) throw new Error(`npm start exited early:\n${output}`);
      const match = /cth local stack ready in (\d+) ms/.exec(output);
      return match ? Number(match[1]) : undefined;
    });
    info = JSON.parse(readFileSync(join(dir, "stack.json"), "utf8")) as StackInfo;
    key = await loadOrCreateSigningKey(join(dir, "dev-signing-key.json"));
    console.info(`local stack ready in ${readyMs} ms (reported by npm start)`);
  }, 150_000);

  afterAll(async () => {
    // Whatever happened above: nothing of this test may survive it.
    if (stack?.pid && alive(stack.pid)) process.kill(-stack.pid, "SIGKILL");
    for (const pid of [info?.pid, info?.agentPid]) if (alive(pid)) process.kill(pid!, "SIGKILL");
    for (const name of ownNamespaces) {
      if ((await namespaces()).includes(name)) await run("ip", ["netns", "delete", name]);
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it("listens on the chosen loopback port and runs a real (not dry-run) agent", () => {
    expect(info.apiUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(info.backend).toBe("iptables");
    expect(alive(info.agentPid)).toBe(true);
    expect(output).toContain(`curl -sS -X POST ${info.apiUrl}/v1/notifications`);
  });

  it("the token script signs with the stack's key and the API rejects tokens it did not sign", async () => {
    const { stdout } = await run("npm", ["run", "-s", "token", "--", "--project", PROJECT], {
      cwd: root,
      env: { ...process.env, CTH_LOCAL_DIR: dir },
    });
    const token = stdout.trim();
    const unknown = await api(`/v1/routers/${routerId}/conntrack-helpers`, token);
    expect(unknown.status).toBe(404);
    const forged = await api(`/v1/routers/${routerId}/conntrack-helpers`, `${token.slice(0, -4)}AAAA`);
    expect(forged.status).toBe(401);
    // API Gateway's own answer, not the function's error shape.
    expect(await forged.json()).toEqual({ message: "Unauthorized" });
    expect(forged.headers.get("www-authenticate")).toMatch(/^Bearer scope="" error="invalid_token" /);
  });

  it("publishes the dev issuer's key set: RS256, RSA, the key tokens are signed with", () => {
    const jwks = JSON.parse(readFileSync(join(dir, "jwks.json"), "utf8")) as {
      keys: Record<string, unknown>[];
    };
    expect(jwks.keys).toEqual([
      expect.objectContaining({ kty: "RSA", alg: "RS256", use: "sig", kid: key.kid }),
    ]);
    expect(jwks.keys[0]).not.toHaveProperty("d");
  });

  it("serves the committed OpenAPI document at GET /v1/openapi.json", async () => {
    const response = await fetch(`${info.apiUrl}/v1/openapi.json`);
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("application/json");
    expect(await response.json()).toEqual(JSON.parse(readFileSync(join(root, "openapi.json"), "utf8")));
  });

  it("answers like API Gateway where the gateway answers: unknown route, admin route without the scope", async () => {
    const member = await signToken(key, { projectId: PROJECT });
    const unknown = await api("/v1/nowhere", member);
    expect(unknown.status).toBe(404);
    expect(unknown.headers.get("apigw-requestid")).toMatch(/^[A-Za-z0-9+/]{15}=$/);
    expect(await unknown.json()).toEqual({ message: "Not Found" });
    const put = await api(`/v1/routers/${randomUUID()}`, member, { method: "PUT", body: "{}" });
    expect(put.status).toBe(403);
    expect(await put.json()).toEqual({ message: "Forbidden" });
  });

  it("admin registers a router, its owner adds an ftp helper, the kernel holds it and the API says in sync", async () => {
    const admin = await signToken(key, { projectId: "operator", roles: ["admin"] });
    const owner = await signToken(key, { projectId: PROJECT });
    const put = await api(`/v1/routers/${routerId}`, admin, {
      method: "PUT",
      body: JSON.stringify({ project_id: PROJECT, host: "local" }),
    });
    expect(put.status, await put.clone().text()).toBeLessThan(300);

    const helperId = randomUUID();
    const post = await api("/v1/notifications", owner, {
      method: "POST",
      body: JSON.stringify({
        event: "created",
        conntrack_helpers: [{ id: helperId, router_id: routerId, protocol: "tcp", port: 21, helper: "ftp" }],
      }),
    });
    expect(post.status, await post.clone().text()).toBe(202);
    const { routers } = (await post.json()) as { routers: { router_id: string; revision: number }[] };
    expect(routers).toEqual([{ router_id: routerId, revision: expect.any(Number) }]);

    const rules = await until("the rule in the namespace", 60_000, async () => {
      const text = await rawTable(`qrouter-${routerId}`);
      return text.includes(helperId) ? text : undefined;
    });
    expect(rules).toMatch(
      new RegExp(`-p tcp -m tcp --dport 21 -m comment --comment "?cth:${helperId}"? -j CT --helper ftp`),
    );
    const state = await until("in_sync", 60_000, async () => {
      const body = (await (await api(`/v1/routers/${routerId}/conntrack-helpers`, owner)).json()) as {
        in_sync: boolean;
        revision: number;
        applied_revision: number;
      };
      return body.in_sync ? body : undefined;
    });
    expect(state.applied_revision).toBe(routers[0]!.revision);

    // Another project cannot see it (same 404 as an unknown router).
    const stranger = await signToken(key, { projectId: "someone-else" });
    expect((await api(`/v1/routers/${routerId}/conntrack-helpers`, stranger)).status).toBe(404);
  });

  const addHelper = (token: string, router: string, protocol: string, port: number, helper: string) =>
    api("/v1/notifications", token, {
      method: "POST",
      body: JSON.stringify({
        event: "created",
        conntrack_helpers: [{ id: randomUUID(), router_id: router, protocol, port, helper }],
      }),
    });

  it("stack.json names each per-node queue with its host; the signing key is private, the agent holds only its public half", () => {
    expect(info.nodes).toEqual([
      {
        host: "local",
        queue: info.queues.node,
        dlq: info.queues.nodeDlq,
        status_queue: info.queues.status,
      },
    ]);
    // The deployed naming rule: the status function reads the host out of the status queue's name.
    expect(info.queues.status).toMatch(/\/cth-local-node-local-status$/);
    expect(info.queues.node).toMatch(/\/cth-local-node-local\.fifo$/);
    const mode = (path: string) => statSync(path).mode & 0o777;
    const privateKey = join(dir, "snapshot-signing", `${info.signing.keyId}.pem`);
    expect(mode(join(dir, "snapshot-signing"))).toBe(0o700);
    expect(mode(privateKey)).toBe(0o600);
    expect(readFileSync(privateKey, "utf8")).toContain("BEGIN PRIVATE KEY");
    expect(info.signing.verifyKeysDir).toBe(join(dir, "verify-keys"));
    expect(readdirSync(info.signing.verifyKeysDir)).toEqual([`${info.signing.keyId}.pem`]);
    expect(readFileSync(join(info.signing.verifyKeysDir, `${info.signing.keyId}.pem`), "utf8")).toMatch(
      /^-----BEGIN PUBLIC KEY-----[\s\S]+-----END PUBLIC KEY-----\s*$/,
    );
  });

  it("the agent applies only what the stack signed: unsigned and wrongly signed snapshots land in the node DLQ", async () => {
    const sqs = new SQSClient({
      region: "us-east-1",
      endpoint: info.awsEndpoint,
      credentials: EMULATOR_CREDENTIALS,
      useQueueUrlAsEndpoint: false,
    });
    try {
      const forged = (tag: string) =>
        JSON.stringify({
          v: 1,
          kind: "router-sync",
          router_id: routerId,
          revision: Number.MAX_SAFE_INTEGER,
          helpers: [],
          correlation_id: `forged-${tag}`,
          issued_at: new Date().toISOString(),
        });
      // Right key id, wrong key: whoever can SendMessage still cannot choose what the kernel holds.
      const impostor = testKey(info.signing.keyId);
      const bodies = [forged("unsigned"), forged("impostor")];
      for (const [index, body] of bodies.entries()) {
        await sqs.send(
          new SendMessageCommand({
            QueueUrl: info.queues.node,
            MessageBody: body,
            MessageGroupId: routerId,
            MessageDeduplicationId: randomUUID(),
            ...(index === 1 ? { MessageAttributes: await signedAttributes(impostor, body) } : {}),
          }),
        );
      }
      const parked: string[] = [];
      await until("both forgeries parked in the node DLQ", 30_000, async () => {
        const got = await sqs.send(
          new ReceiveMessageCommand({
            QueueUrl: info.queues.nodeDlq,
            MaxNumberOfMessages: 10,
            WaitTimeSeconds: 1,
            MessageAttributeNames: ["All"],
          }),
        );
        // FIFO: the next message of the router's group shows only once this one is deleted.
        for (const message of got.Messages ?? []) {
          parked.push(message.Body ?? "");
          await sqs.send(
            new DeleteMessageCommand({
              QueueUrl: info.queues.nodeDlq,
              ReceiptHandle: message.ReceiptHandle!,
            }),
          );
        }
        return parked.length >= 2 ? true : undefined;
      });
      expect(parked.sort()).toEqual([...bodies].sort());
      // The kernel still holds the tenant's rule and the API still tells the truth about it.
      expect(await rawTable(`qrouter-${routerId}`)).toContain("--helper ftp");
      const owner = await signToken(key, { projectId: PROJECT });
      // The next real change still applies: the forged revision 2^53-1 poisoned nothing.
      const post = await addHelper(owner, routerId, "udp", 69, "tftp");
      expect(post.status).toBe(202);
      await until("the tftp rule next to the ftp one", 60_000, async () => {
        const text = await rawTable(`qrouter-${routerId}`);
        return text.includes("--helper tftp") && text.includes("--helper ftp") ? true : undefined;
      });
      await until("in_sync again", 60_000, async () => {
        const body = (await (await api(`/v1/routers/${routerId}/conntrack-helpers`, owner)).json()) as {
          in_sync: boolean;
        };
        return body.in_sync ? true : undefined;
      });
    } finally {
      sqs.destroy();
    }
  });

  it("npm run emit delivers a real EventBridge envelope to the events function", async () => {
    const { stdout, stderr } = await run(
      "npm",
      [
        "run",
        "-s",
        "emit",
        "--",
        "Router Upserted",
        JSON.stringify({ router_id: eventRouterId, project_id: PROJECT, host: "local" }),
      ],
      { cwd: root, env: { ...process.env, CTH_LOCAL_DIR: dir } },
    );
    expect(stdout.trim()).toMatch(/^[0-9a-f-]{36}$/);
    expect(JSON.parse(stderr.trim().split("\n").at(-1)!)).toMatchObject({
      id: stdout.trim(),
      invocation: "succeeded",
    });
    const owner = await signToken(key, { projectId: PROJECT });
    expect((await addHelper(owner, eventRouterId, "udp", 69, "tftp")).status).toBe(202);
    await until("the tftp rule", 60_000, async () =>
      (await rawTable(`qrouter-${eventRouterId}`)).includes("--helper tftp") ? true : undefined,
    );
  });

  it("Router Deleted through npm run emit removes the router, its rules and the namespace the agent made", async () => {
    const emit = (type: string, detail: unknown) =>
      run("npm", ["run", "-s", "emit", "--", type, JSON.stringify(detail)], {
        cwd: root,
        env: { ...process.env, CTH_LOCAL_DIR: dir },
      });
    await emit("Router Upserted", { router_id: deletedRouterId, project_id: PROJECT, host: "local" });
    const owner = await signToken(key, { projectId: PROJECT });
    expect((await addHelper(owner, deletedRouterId, "tcp", 21, "ftp")).status).toBe(202);
    const ns = `qrouter-${deletedRouterId}`;
    await until("the ftp rule", 60_000, async () =>
      (await rawTable(ns)).includes("--helper ftp") ? true : undefined,
    );
    const { stderr } = await emit("Router Deleted", { router_id: deletedRouterId });
    expect(JSON.parse(stderr.trim().split("\n").at(-1)!)).toMatchObject({ invocation: "succeeded" });
    await until("the namespace removed", 60_000, async () =>
      (await namespaces()).includes(ns) ? undefined : true,
    );
    expect((await api(`/v1/routers/${deletedRouterId}/conntrack-helpers`, owner)).status).toBe(404);
  });

  interface HelperState {
    in_sync: boolean;
    revision: number;
    replicas: { host: string; namespace: string; applied_revision: number; in_sync: boolean }[];
    draining: { host: string; revision: number }[];
  }
  const stateOf = async (router: string, token: string) =>
    (await (await api(`/v1/routers/${router}/conntrack-helpers`, token)).json()) as HelperState;

  it("a DVR router's rules go into snat-<id> on its node, and none into qrouter-<id>", async () => {
    const admin = await signToken(key, { projectId: "operator", roles: ["admin"] });
    const owner = await signToken(key, { projectId: PROJECT });
    const put = await api(`/v1/routers/${dvrRouterId}`, admin, {
      method: "PUT",
      body: JSON.stringify({ project_id: PROJECT, bindings: [{ host: "local", namespace: "snat" }] }),
    });
    expect(put.status, await put.clone().text()).toBe(201);
    expect((await addHelper(owner, dvrRouterId, "tcp", 21, "ftp")).status).toBe(202);
    await until("the ftp rule in snat-<id>", 60_000, async () =>
      (await rawTable(`snat-${dvrRouterId}`)).includes("--helper ftp") ? true : undefined,
    );
    expect(await namespaces()).not.toContain(`qrouter-${dvrRouterId}`);
    const state = await until("in_sync", 60_000, async () => {
      const body = await stateOf(dvrRouterId, admin);
      return body.in_sync ? body : undefined;
    });
    expect(state.replicas).toMatchObject([{ host: "local", namespace: "snat", in_sync: true }]);
  });

  it("migrating a legacy router to DVR moves its rules from qrouter-<id> to snat-<id>", async () => {
    const admin = await signToken(key, { projectId: "operator", roles: ["admin"] });
    const owner = await signToken(key, { projectId: PROJECT });
    const register = (namespace: string) =>
      api(`/v1/routers/${migratedRouterId}`, admin, {
        method: "PUT",
        body: JSON.stringify({ project_id: PROJECT, bindings: [{ host: "local", namespace }] }),
      });
    expect((await register("qrouter")).status).toBe(201);
    expect((await addHelper(owner, migratedRouterId, "tcp", 21, "ftp")).status).toBe(202);
    await until("the ftp rule in qrouter-<id>", 60_000, async () =>
      (await rawTable(`qrouter-${migratedRouterId}`)).includes("--helper ftp") ? true : undefined,
    );
    expect((await register("snat")).status).toBe(200);
    await until("the ftp rule in snat-<id>", 60_000, async () =>
      (await rawTable(`snat-${migratedRouterId}`)).includes("--helper ftp") ? true : undefined,
    );
    // The agent made qrouter-<id> itself, so emptying it removes it.
    await until("qrouter-<id> gone", 60_000, async () =>
      (await namespaces()).includes(`qrouter-${migratedRouterId}`) ? undefined : true,
    );
    await until("in_sync after the move", 60_000, async () =>
      (await stateOf(migratedRouterId, admin)).in_sync ? true : undefined,
    );
  });

  it("a second host without an agent: 202, a node queue for it, that replica behind; unbinding it brings in_sync back", async () => {
    const admin = await signToken(key, { projectId: "operator", roles: ["admin"] });
    const owner = await signToken(key, { projectId: PROJECT });
    const bind = (hosts: string[]) =>
      api(`/v1/routers/${haRouterId}`, admin, {
        method: "PUT",
        body: JSON.stringify({
          project_id: PROJECT,
          bindings: hosts.map((host) => ({ host, namespace: "qrouter" })),
        }),
      });
    expect((await bind(["local", "net-2"])).status).toBeLessThan(300);
    const post = await addHelper(owner, haRouterId, "tcp", 21, "ftp");
    expect(post.status).toBe(202);
    const nodes = (JSON.parse(readFileSync(join(dir, "stack.json"), "utf8")) as StackInfo).nodes;
    expect(nodes.map((node) => node.host).sort()).toEqual(["local", "net-2"]);
    expect(nodes.find((node) => node.host === "net-2")?.queue).toMatch(/\/cth-local-node-net-2\.fifo$/);
    const behind = await until("the local replica in sync, net-2 behind", 60_000, async () => {
      const body = await stateOf(haRouterId, admin);
      return body.replicas[0]?.in_sync ? body : undefined;
    });
    expect(behind.in_sync).toBe(false);
    expect(behind.replicas).toMatchObject([
      { host: "local", in_sync: true, applied_revision: behind.revision },
      { host: "net-2", in_sync: false, applied_revision: 0 },
    ]);
    expect((await bind(["local"])).status).toBe(200);
    const healed = await until("in_sync with net-2 unbound", 60_000, async () => {
      const body = await stateOf(haRouterId, admin);
      return body.in_sync ? body : undefined;
    });
    expect(healed.replicas.map((replica) => replica.host)).toEqual(["local"]);
    // net-2 never confirms its empty snapshot (no agent): it stays listed as draining, not as a replica.
    expect(healed.draining).toEqual([{ host: "net-2", revision: healed.revision }]);
  });

  it("SIGTERM stops everything: no process of the stack left, its namespaces removed", async () => {
    expect((await namespaces()).filter((n) => ownNamespaces.includes(n)).length).toBeGreaterThanOrEqual(2);
    process.kill(-stack.pid!, "SIGTERM");
    await exited;
    await until("the stack process to exit", 60_000, async () => (alive(info.pid) ? undefined : true));
    expect(alive(info.agentPid)).toBe(false);
    // npm, sh and tsx wrap the stack in the same process group; all of them must go.
    let group = "";
    await until("the process group to empty", 15_000, async () => {
      group = (await run("ps", ["-o", "pid=,args=", "-g", String(stack.pid)]).catch(() => ({ stdout: "" })))
        .stdout;
      return group.trim() === "" ? true : undefined;
    }).catch(() => undefined);
    expect(group.trim()).toBe("");
    // The agent leads a process group of its own; its command helper lives there and must be gone too.
    let agentGroup = "";
    await until("the agent's process group to empty", 15_000, async () => {
      agentGroup = (
        await run("ps", ["-o", "pid=,args=", "-g", String(info.agentPid)]).catch(() => ({ stdout: "" }))
      ).stdout;
      return agentGroup.trim() === "" ? true : undefined;
    }).catch(() => undefined);
    expect(agentGroup.trim()).toBe("");
    expect(output).toContain("local stack stopped");
    const left = (await namespaces()).filter((n) => ownNamespaces.includes(n));
    expect(left).toEqual([]);
    expect(existsSync(join(dir, "stack.json"))).toBe(false);
  });

  it("a second npm start in the same directory works, and Ctrl-C (SIGINT to the job) stops it cleanly", async () => {
    const second = spawn("npm", ["start"], {
      cwd: root,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env,
        PORT: String(await freePort()),
        CTH_LOCAL_DIR: dir,
        CTH_LOCAL_METRICS_PORT: "0",
        CTH_LOCAL_DEMO_ROUTER: demoRouterId,
      },
    });
    let text = "";
    second.stdout!.on("data", (chunk: Buffer) => {
      text += chunk.toString();
    });
    second.stderr!.on("data", (chunk: Buffer) => {
      text += chunk.toString();
    });
    try {
      await until("the second stack to be ready", 120_000, async () => {
        if (second.exitCode !== null) throw new Error(`second npm start exited early:\n${text}`);
        return text.includes("cth local stack ready in") ? true : undefined;
      });
      const again = JSON.parse(readFileSync(join(dir, "stack.json"), "utf8")) as StackInfo;
      // The same dev key as before: tokens minted for the first run still verify.
      const owner = await signToken(key, { projectId: "demo" });
      const res = await fetch(`${again.apiUrl}/v1/routers/${demoRouterId}/conntrack-helpers`, {
        headers: { authorization: `Bearer ${owner}` },
      });
      expect(res.status).toBe(200);
      process.kill(-second.pid!, "SIGINT");
      await until("the second stack to exit", 60_000, async () =>
        alive(again.pid) || alive(again.agentPid) ? undefined : true,
      );
      expect(text).toContain("local stack stopped");
      expect((await namespaces()).filter((n) => ownNamespaces.includes(n))).toEqual([]);
    } finally {
      if (second.pid && alive(second.pid)) process.kill(-second.pid, "SIGKILL");
    }
  });
});
