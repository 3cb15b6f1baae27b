import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { OTHER_VARIABLES, resolveOptions, usage } from "../../agent/cli.ts";
import { flag, loadConfig, loadLimits } from "../../lib/config.ts";

const required = [
  "--node",
  "net-1",
  "--queue-url",
  "http://127.0.0.1:1/000000000000/cth-net-1.fifo",
  "--verify-keys",
  "/etc/cth-agent/verify-keys",
];

describe("agent CLI options", () => {
  it("--help lists every flag with its default and environment variable", () => {
    const text = usage();
    for (const flag of [
      "--node",
      "--queue-url",
      "--status-queue-url",
      "--dlq-url",
      "--endpoint",
      "--region",
      "--state-dir",
      "--metrics-port",
      "--drift-interval",
      "--namespace-pattern",
      "--create-namespaces",
      "--backend",
      "--verify-keys",
    ]) {
      expect(text).toContain(flag);
    }
    expect(text).toContain("(default: {namespace}-{router_id})");
    expect(text).toMatch(/\{namespace\} its kind \(qrouter, or snat for a DVR router\)/);
    expect(text).toContain("(default: 60)");
    expect(text).toContain("[env CTH_AGENT_QUEUE_URL]");
    expect(text).toContain("[env CTH_AGENT_VERIFY_KEYS]");
    expect(resolveOptions(["--help"], {})).toEqual({ help: true });
  });

  it("applies defaults", () => {
    const options = resolveOptions(required, {});
    expect(options).toMatchObject({
      help: false,
      node: "net-1",
      verifyKeysDir: "/etc/cth-agent/verify-keys",
      region: "us-east-1",
      stateDir: "/var/lib/cth-agent",
      metricsPort: 9469,
      driftIntervalSeconds: 60,
      namespacePattern: "{namespace}-{router_id}",
      createNamespaces: false,
      backend: "iptables",
      spawner: "helper",
      probe: true,
      families: ["ipv4", "ipv6"],
      waitSeconds: 20,
      visibilitySeconds: 30,
      // Three long polls.
      healthzStaleSeconds: 60,
      version: false,
    });
  });

  it("--healthz-stale-seconds (CTH_AGENT_HEALTHZ_STALE_SECONDS) sets the /healthz threshold, else 3 polls", () => {
    expect(resolveOptions([...required, "--wait-seconds", "5"], {}).healthzStaleSeconds).toBe(30);
    expect(resolveOptions([...required, "--wait-seconds", "15"], {})).toMatchObject({
      healthzStaleSeconds: 45,
    });
    expect(resolveOptions(required, { CTH_AGENT_HEALTHZ_STALE_SECONDS: "90" })).toMatchObject({
      healthzStaleSeconds: 90,
    });
    expect(
      resolveOptions([...required, "--healthz-stale-seconds", "7"], {
        CTH_AGENT_HEALTHZ_STALE_SECONDS: "90",
      }),
    ).toMatchObject({ healthzStaleSeconds: 7 });
    expect(() => resolveOptions([...required, "--healthz-stale-seconds", "0"], {})).toThrow(
      /^--healthz-stale-seconds \(CTH_AGENT_HEALTHZ_STALE_SECONDS\) must be an integer >= 1, got "0"$/,
    );
    expect(usage()).toContain("[env CTH_AGENT_HEALTHZ_STALE_SECONDS]");
  });

  it("--version prints package.json's version and exits 0, needing no other flag (the CLI entry)", async () => {
    const root = fileURLToPath(new URL("../..", import.meta.url));
    const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
    const { stdout, stderr } = await promisify(execFile)(
      process.execPath,
      ["--import", "tsx", "agent/cli.ts", "--version"],
      { cwd: root, env: { PATH: process.env.PATH }, timeout: 30_000 },
    );
    expect(stdout).toBe(`${version}\n`);
    expect(stderr).toBe("");
    expect(resolveOptions(["--version"], {})).toEqual({ help: false, version: true });
  });

  it("reads every flag from the environment; a flag beats its variable", () => {
    const env = {
      CTH_AGENT_NODE: "env-node",
      CTH_AGENT_QUEUE_URL: "http://q/1/env.fifo",
      CTH_AGENT_VERIFY_KEYS: "/etc/keys",
      CTH_AGENT_STATUS_QUEUE_URL: "http://q/1/status",
      CTH_AGENT_DLQ_URL: "http://q/1/dlq.fifo",
      CTH_AGENT_ENDPOINT: "http://127.0.0.1:4566",
      CTH_AGENT_REGION: "eu-west-1",
      CTH_AGENT_STATE_DIR: "/tmp/x",
      CTH_AGENT_METRICS_PORT: "off",
      CTH_AGENT_DRIFT_INTERVAL: "5",
      CTH_AGENT_NAMESPACE_PATTERN: "ns-{router_id}",
      CTH_AGENT_CREATE_NAMESPACES: "true",
      CTH_AGENT_BACKEND: "dry-run",
      CTH_AGENT_FAMILIES: "ipv4",
    };
    expect(resolveOptions([], env)).toMatchObject({
      node: "env-node",
      queueUrl: "http://q/1/env.fifo",
      verifyKeysDir: "/etc/keys",
      statusQueueUrl: "http://q/1/status",
      dlqUrl: "http://q/1/dlq.fifo",
      endpoint: "http://127.0.0.1:4566",
      region: "eu-west-1",
      stateDir: "/tmp/x",
      metricsPort: undefined,
      driftIntervalSeconds: 5,
      namespacePattern: "ns-{router_id}",
      createNamespaces: true,
      backend: "dry-run",
      families: ["ipv4"],
      // The dry-run backend has no kernel to probe.
      probe: false,
    });
    expect(resolveOptions(["--node", "flag-node", "--region", "ap-south-1"], env)).toMatchObject({
      node: "flag-node",
      region: "ap-south-1",
    });
  });

  it("a pattern without {router_id} is refused: every router would share one namespace", () => {
    expect(() => resolveOptions([...required, "--namespace-pattern", "{namespace}-router"], {})).toThrow(
      "--namespace-pattern must contain {router_id}",
    );
  });

  it("a pattern whose rendered name exceeds 64 characters is refused, naming the flag and the name", () => {
    // 21 + 7 ("qrouter", the longer kind) + 36 = 64: just fits.
    const fits = `${"p".repeat(20)}-{namespace}{router_id}`;
    expect(resolveOptions([...required, "--namespace-pattern", fits], {})).toMatchObject({
      namespacePattern: fits,
    });
    const tooLong = `${"p".repeat(21)}-{namespace}{router_id}`;
    expect(() => resolveOptions([...required, "--namespace-pattern", tooLong], {})).toThrow(
      `--namespace-pattern "${tooLong}" gives the unsafe or too long name "${"p".repeat(21)}-qrouter00000000-0000-4000-8000-000000000000" for a qrouter router`,
    );
  });

  it("rejects what would be unsafe or meaningless, before starting anything", () => {
    expect(() => resolveOptions([], {})).toThrow(/--node/);
    expect(() => resolveOptions(["--node", "n"], {})).toThrow(/--queue-url/);
    // Without the dispatcher's keys the agent would have to trust whoever can send to its queue.
    expect(() => resolveOptions(required.slice(0, 4), {})).toThrow(
      /--verify-keys \(or CTH_AGENT_VERIFY_KEYS\) is required/,
    );
    expect(() => resolveOptions(required.slice(0, 4), { CTH_AGENT_VERIFY_KEYS: "" })).toThrow(
      /--verify-keys/,
    );
    expect(() => resolveOptions([...required, "--namespace-pattern", "qrouter"], {})).toThrow(/router_id/);
    expect(() => resolveOptions([...required, "--namespace-pattern", "../{router_id}"], {})).toThrow(
      /unsafe/,
    );
    expect(() => resolveOptions([...required, "--namespace-pattern", "a b {router_id}"], {})).toThrow(
      /unsafe/,
    );
    expect(() => resolveOptions([...required, "--backend", "nft"], {})).toThrow(/backend/);
    expect(() => resolveOptions([...required, "--namespace-pattern", "{namespace}/{router_id}"], {})).toThrow(
      /unsafe/,
    );
    expect(() => resolveOptions([...required, "--spawner", "sh"], {})).toThrow(
      /--spawner \(CTH_AGENT_SPAWNER\) must be one of helper, direct/,
    );
    expect(() => resolveOptions([...required, "--families", "ipv4,arp"], {})).toThrow(/families/);
    expect(() => resolveOptions([...required, "--drift-interval", "0"], {})).toThrow(/drift-interval/);
    expect(() => resolveOptions([...required, "--metrics-port", "x"], {})).toThrow(/metrics-port/);
    expect(() =>
      resolveOptions(["--node", "bad name", "--queue-url", "u", "--verify-keys", "k"], {}),
    ).toThrow(/letters, digits/);
    expect(() => resolveOptions([...required, "--unknown"], {})).toThrow();
  });

  it("reads a boolean variable the one way every component does: a typo is an error, `on` is true", () => {
    expect(resolveOptions(required, { CTH_AGENT_CREATE_NAMESPACES: "on" })).toMatchObject({
      createNamespaces: true,
    });
    expect(resolveOptions(required, { CTH_AGENT_NO_PROBE: "off" })).toMatchObject({ probe: true });
    expect(() => resolveOptions(required, { CTH_AGENT_CREATE_NAMESPACES: "maybe" })).toThrow(
      /--create-namespaces \(CTH_AGENT_CREATE_NAMESPACES\) must be one of 1, true, yes, on, 0, false, no, off, got "maybe"/,
    );
  });

  it("reads a boolean word as the functions read it", () => {
    for (const word of ["1", "true", "YES", "on", "0", "False", "no", "OFF"]) {
      expect(resolveOptions(required, { CTH_AGENT_CREATE_NAMESPACES: word }).createNamespaces, word).toBe(
        flag({ X: word }, "X", false),
      );
    }
  });

  it("reads ports, integers and choices with the flag and variable in every error", () => {
    expect(() => resolveOptions([...required, "--metrics-port", "70000"], {})).toThrow(
      /^--metrics-port \(CTH_AGENT_METRICS_PORT\) must be a port from 0 to 65535 or "off", got "70000"$/,
    );
    expect(resolveOptions(required, { CTH_AGENT_METRICS_PORT: "OFF" })).toMatchObject({
      metricsPort: undefined,
    });
    expect(() => resolveOptions(required, { CTH_AGENT_WAIT_SECONDS: "-1" })).toThrow(
      /^--wait-seconds \(CTH_AGENT_WAIT_SECONDS\) must be an integer >= 0, got "-1"$/,
    );
    expect(() => resolveOptions(required, { CTH_AGENT_BACKEND: "nft" })).toThrow(
      /^--backend \(CTH_AGENT_BACKEND\) must be one of iptables, nftables, dry-run, got "nft"$/,
    );
  });

  it("an empty variable is an unset one, as in the functions", () => {
    const env = {
      CTH_AGENT_REGION: "",
      AWS_REGION: "",
      AWS_DEFAULT_REGION: "eu-north-1",
      CTH_AWS_ENDPOINT: "",
    };
    expect(resolveOptions(required, env)).toMatchObject({ region: "eu-north-1", endpoint: undefined });
    expect(loadConfig(env)).toMatchObject({ region: "eu-north-1", awsEndpoint: undefined });
    expect(resolveOptions(required, { CTH_AGENT_METRICS_PORT: "", LOG_LEVEL: "" })).toMatchObject({
      metricsPort: 9469,
      logLevel: "info",
    });
    expect(loadConfig({ LOG_LEVEL: "" }).logLevel).toBe("info");
  });

  it("takes --backend nftables", () => {
    expect(resolveOptions([...required, "--backend", "nftables"], {})).toMatchObject({
      backend: "nftables",
      probe: true,
    });
  });

  it("--help names every environment variable the agent reads", () => {
    const read = new Set<string>();
    const recording = new Proxy({} as NodeJS.ProcessEnv, {
      get: (_, name) => {
        if (typeof name === "string") read.add(name);
        return undefined;
      },
    });
    resolveOptions(required, recording);
    loadLimits(recording);
    // What main() reads from process.env directly, found in the source so that a new read cannot hide.
    const source = readFileSync(new URL("../../agent/cli.ts", import.meta.url), "utf8");
    for (const match of source.matchAll(/process\.env\.([A-Z_]+)/g)) read.add(match[1]!);
    const text = usage();
    expect(read.size).toBeGreaterThan(20);
    for (const name of read) expect(text, name).toContain(name);
    for (const name of Object.keys(OTHER_VARIABLES)) expect(text).toContain(name);
  });
});
