/**
 * Agent installation on a network node: the bundle and its command helper run outside the repository (no
 * node_modules, no TypeScript source), the example environment file alone configures the agent, and the
 * systemd unit is valid and hardened.
 */
import { execFile, spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveOptions, usage } from "../../agent/cli.ts";
import { HELPER_BUNDLE_FILE } from "../../agent/exec-helper.ts";

const run = promisify(execFile);
const root = resolve(import.meta.dirname, "../..");
const unitText = readFileSync(join(root, "infra/cth-agent.service"), "utf8");
const envText = readFileSync(join(root, "infra/cth-agent.env.example"), "utf8");

function directives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line.startsWith("[")) continue;
    const at = line.indexOf("=");
    const list = out.get(line.slice(0, at)) ?? [];
    list.push(line.slice(at + 1));
    out.set(line.slice(0, at), list);
  }
  return out;
}

function envFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const match = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (match) out[match[1]!] = match[2]!;
  }
  return out;
}

describe("agent bundle", () => {
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "cth-agent-bundle-"));
    await run("npx", ["tsx", "scripts/build-agent.ts", "--outfile", join(dir, "cth-agent.mjs")], {
      cwd: root,
      timeout: 120_000,
    });
  }, 150_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("runs from a directory with no node_modules and prints the agent's usage", async () => {
    const size = statSync(join(dir, "cth-agent.mjs")).size;
    console.info(`agent bundle: ${size} bytes`);
    expect(size).toBeLessThan(4 * 1024 * 1024);
    const { stdout } = await run(process.execPath, [join(dir, "cth-agent.mjs"), "--help"], { cwd: dir });
    expect(stdout).toBe(`${usage()}\n`);
  });

  it("refuses to start without its node name, as the CLI does", async () => {
    const failure = await run(process.execPath, [join(dir, "cth-agent.mjs")], { cwd: dir, env: {} }).catch(
      (error: { code: number; stderr: string }) => error,
    );
    expect(failure).toMatchObject({ code: 2, stderr: expect.stringContaining("--node") });
  });

  it("has its command helper beside it, built from its source alone: node: imports only", () => {
    expect(readdirSync(dir).sort()).toEqual(
      ["cth-agent.mjs", "cth-agent.mjs.map", HELPER_BUNDLE_FILE].sort(),
    );
    const helper = readFileSync(join(dir, HELPER_BUNDLE_FILE), "utf8");
    const imports = [...helper.matchAll(/^import\b[^;]*?from\s*"([^"]+)"/gm)].map((m) => m[1]);
    expect(imports.sort()).toEqual(["node:child_process", "node:readline"]);
  });

  it("runs its firewall commands through the built helper beside it, not the TypeScript source", async () => {
    const work = mkdtempSync(join(tmpdir(), "cth-agent-run-"));
    try {
      const bin = join(work, "bin");
      const keys = join(work, "keys");
      mkdirSync(bin);
      mkdirSync(keys, { mode: 0o700 });
      const record = join(work, "parent");
      // Whichever firewall command the agent runs first (its start-up probe: unshare), a stand-in records
      // who started it: the command helper's argv.
      const script = `#!/bin/sh\ntr '\\0' '\\n' < /proc/$PPID/cmdline > ${record}.tmp && mv ${record}.tmp ${record}\n`;
      for (const name of ["unshare", "ip", "nft", "iptables-restore", "iptables-save"]) {
        writeFileSync(join(bin, name), script, { mode: 0o755 });
      }
      const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      writeFileSync(join(keys, "k1.pem"), publicKey.export({ type: "spki", format: "pem" }), { mode: 0o600 });
      const agent = spawn(
        process.execPath,
        [
          join(dir, "cth-agent.mjs"),
          "--node",
          "net-1",
          "--queue-url",
          "http://127.0.0.1:9/000000000000/cth-test-node-net-1.fifo",
          "--endpoint",
          "http://127.0.0.1:9",
          "--verify-keys",
          keys,
          "--state-dir",
          join(work, "state"),
          "--metrics-port",
          "off",
          "--families",
          "ipv4",
        ],
        {
          cwd: work,
          env: { PATH: `${bin}:${process.env.PATH}`, AWS_ACCESS_KEY_ID: "x", AWS_SECRET_ACCESS_KEY: "x" },
          stdio: ["ignore", "ignore", "pipe"],
        },
      );
      let stderr = "";
      agent.stderr!.on("data", (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      try {
        const deadline = Date.now() + 20_000;
        while (!existsSync(record) && Date.now() < deadline && agent.exitCode === null) {
          await new Promise((done) => setTimeout(done, 50));
        }
        expect(existsSync(record), `the agent ran no command through its helper; stderr: ${stderr}`).toBe(
          true,
        );
        expect(readFileSync(record, "utf8").split("\n").filter(Boolean)).toEqual([
          process.execPath,
          join(dir, HELPER_BUNDLE_FILE),
        ]);
      } finally {
        agent.kill("SIGKILL");
      }
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }, 30_000);
});

describe("environment file", () => {
  const env = envFile(envText);

  it("names only variables the agent or the shared configuration read", () => {
    const known = new Set([...usage().matchAll(/\[env ([A-Z0-9_]+)\]/g)].map((m) => m[1]));
    for (const name of Object.keys(env)) expect(known.has(name) || name.startsWith("AWS_"), name).toBe(true);
    for (const commented of envText.matchAll(/^#(CTH_[A-Z_]+)=/gm)) {
      expect(known.has(commented[1]) || /^CTH_(MAX_|ALLOWED_HELPERS)/.test(commented[1]!), commented[1]).toBe(
        true,
      );
    }
  });

  it("alone configures a production agent (real iptables, no namespace creation)", () => {
    const options = resolveOptions([], { ...env, CTH_AGENT_STATE_DIR: "/var/lib/cth-agent" });
    expect(options).toMatchObject({
      help: false,
      node: "net-1",
      backend: "iptables",
      createNamespaces: false,
      region: "eu-west-1",
      metricsPort: 9469,
      namespacePattern: "{namespace}-{router_id}",
    });
  });

  it("names this node's own status queue and the verify-keys directory", () => {
    // Per-node status queues (infra/nodes.cjs): cth-<stage>-node-<node>-status, for the node the file names.
    expect(env.CTH_AGENT_STATUS_QUEUE_URL).toMatch(
      new RegExp(`/cth-[a-z0-9]+-node-${env.CTH_AGENT_NODE}-status$`),
    );
    expect(env.CTH_AGENT_QUEUE_URL).toMatch(new RegExp(`/cth-[a-z0-9]+-node-${env.CTH_AGENT_NODE}\\.fifo$`));
    expect(env.CTH_AGENT_VERIFY_KEYS).toBe("/etc/cth-agent/verify-keys");
  });
});

describe("systemd unit", () => {
  const unit = directives(unitText);

  it("runs the installed bundle with the env file, restarts, and keeps state in its StateDirectory", () => {
    expect(unit.get("ExecStart")).toEqual(["/usr/bin/node /opt/cth-agent/cth-agent.mjs"]);
    expect(unit.get("EnvironmentFile")).toEqual(["/etc/cth-agent/agent.env"]);
    expect(unit.get("Restart")).toEqual(["always"]);
    expect(unit.get("StateDirectory")).toEqual(["cth-agent"]);
    expect(unit.get("Environment")).toContain("CTH_AGENT_STATE_DIR=/var/lib/cth-agent");
  });

  it("the install steps (unit header, README) copy the command helper beside the bundle", () => {
    const readme = readFileSync(join(root, "README.md"), "utf8");
    expect(unitText).toContain(`dist/${HELPER_BUNDLE_FILE}`);
    // The README's install line copies it with the bundle.
    const install = readme.split("\n").find((line) => line.includes("install -m0644 dist/cth-agent.mjs"));
    expect(install).toContain(` dist/${HELPER_BUNDLE_FILE} /opt/cth-agent/`);
  });

  it("is hardened: only the network and namespace capabilities, no privilege gain, read-only system", () => {
    expect(unit.get("CapabilityBoundingSet")).toEqual(["CAP_NET_ADMIN CAP_SYS_ADMIN CAP_NET_RAW"]);
    for (const [name, value] of [
      ["NoNewPrivileges", "yes"],
      ["ProtectSystem", "strict"],
      ["ProtectHome", "yes"],
      ["PrivateTmp", "yes"],
      ["ProtectKernelModules", "yes"],
      ["RestrictNamespaces", "mnt net"],
      ["RestrictAddressFamilies", "AF_UNIX AF_NETLINK AF_INET AF_INET6"],
      ["UMask", "0077"],
    ]) {
      expect(unit.get(name!), name).toEqual([value]);
    }
    expect(unitText).not.toMatch(/^CTH_AGENT_CREATE_NAMESPACES/m);
  });

  it("can read the verify keys but not write them: /etc stays visible and read-only under ProtectSystem=strict", () => {
    const keys = envFile(envText).CTH_AGENT_VERIFY_KEYS!;
    expect(keys.startsWith("/etc/")).toBe(true);
    // Nothing hides or shadows the directory (ProtectHome covers /home, /root, /run/user; PrivateTmp /tmp).
    for (const name of ["InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths"]) {
      for (const value of unit.get(name) ?? []) {
        for (const path of value.split(/\s+/))
          expect(keys.startsWith(path.replace(/^-/, "")), name).toBe(false);
      }
    }
    // And the agent cannot plant a key of its own there.
    for (const path of (unit.get("ReadWritePaths") ?? []).flatMap((v) => v.split(/\s+/))) {
      expect(keys.startsWith(path.replace(/^-/, "")), path).toBe(false);
    }
    expect(unit.get("ProtectSystem")).toEqual(["strict"]);
  });

  it("passes systemd-analyze verify", async () => {
    const tool = await run("systemd-analyze", ["--version"]).catch(() => undefined);
    if (!tool) {
      if (process.env.CI === "true") throw new Error("CI=true but systemd-analyze is missing");
      return;
    }
    const { stderr } = await run("systemd-analyze", ["verify", join(root, "infra/cth-agent.service")]);
    expect(stderr.trim()).toBe("");
  });
});
