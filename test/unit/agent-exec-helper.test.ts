/**
 * The agent's two command runners behave alike: stdout and stderr back, the exit status and stderr of a
 * failure in an ExecError, input on stdin, no shell. The helper also survives its own death, and runs as a
 * bare node on its TypeScript source here (the bundle's built helper: test/deploy/agent-install.test.ts).
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { stripTypeScriptTypes } from "node:module";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import {
  type CommandRunner,
  commandHelperPath,
  DirectRunner,
  ExecError,
  HELPER_BUNDLE_FILE,
  HelperRunner,
} from "../../agent/exec-helper.ts";
import { descendantPids } from "../support/netns.ts";

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const until = async (check: () => boolean, timeoutMs = 5_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

const node = process.execPath;

describe.each([
  ["helper", () => new HelperRunner()],
  ["direct", () => new DirectRunner()],
] as const)("command runner (%s)", (_name, make: () => CommandRunner) => {
  let runner: CommandRunner;
  afterEach(() => runner.close());

  it("hands input to stdin and returns stdout", async () => {
    runner = make();
    const input = '*raw\n-A cth-x -m comment --comment "a b; $(rm -rf /)"\nCOMMIT\n';
    const { stdout } = await runner.run(node, ["-e", "process.stdin.pipe(process.stdout)"], input);
    expect(stdout).toBe(input);
  });

  it("passes arguments verbatim, with no shell to expand them", async () => {
    runner = make();
    const args = ["$HOME", "a;b", "`id`", "*"];
    const { stdout } = await runner.run(node, [
      "-e",
      "console.log(JSON.stringify(process.argv.slice(1)))",
      ...args,
    ]);
    expect(JSON.parse(stdout)).toEqual(args);
  });

  it("rejects a non-zero exit with an ExecError carrying the exit code and stderr", async () => {
    runner = make();
    const failure = await runner
      .run(node, ["-e", "process.stderr.write('iptables-restore: line 2 failed'); process.exit(4)"])
      .catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ExecError);
    expect((failure as ExecError).code).toBe(4);
    expect((failure as ExecError).stderr).toBe("iptables-restore: line 2 failed");
  });

  it("rejects a command that does not exist with ENOENT", async () => {
    runner = make();
    const failure = await runner.run("/nonexistent/iptables-restore", []).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ExecError);
    expect((failure as ExecError).code).toBe("ENOENT");
  });

  it("kills a command that outlives its timeout", async () => {
    runner = make();
    const failure = await runner
      .run(node, ["-e", "setTimeout(() => {}, 10000)"], undefined, 300)
      .catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ExecError);
  });

  it("fails a command whose output passes 64 MiB", async () => {
    runner = make();
    const failure = await runner
      .run(node, ["-e", "process.stdout.write('x'.repeat(64 * 1024 * 1024 + 1))"])
      .catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ExecError);
    expect((failure as ExecError).code).toBe("ERR_CHILD_PROCESS_STDIO_MAXBUFFER");
  }, 20_000);
});

describe("command helper program", () => {
  const source = fileURLToPath(new URL("../../agent/command-helper.ts", import.meta.url));

  it("is the TypeScript source beside a source module, the built file beside a built one", () => {
    expect(commandHelperPath()).toBe(source);
    expect(commandHelperPath(new URL("../../agent/exec-helper.ts", import.meta.url).href)).toBe(source);
    expect(commandHelperPath("file:///opt/cth-agent/cth-agent.mjs")).toBe(
      `/opt/cth-agent/${HELPER_BUNDLE_FILE}`,
    );
  });

  it("runs as a bare node on that file: no execArgv of the agent's (tsx, vitest) and no flag", async () => {
    const runner = new HelperRunner();
    await runner.run(node, ["-e", "0"]);
    const argv = readFileSync(`/proc/${runner.pid}/cmdline`, "utf8").split("\0").filter(Boolean);
    expect(argv).toEqual([node, source]);
    runner.close();
  });

  it("is erasable TypeScript importing only node: built-ins (a type-only import is erased)", () => {
    const text = readFileSync(source, "utf8");
    // What node does to it before running it; throws on an enum, a namespace, a parameter property.
    expect(() => stripTypeScriptTypes(text, { mode: "strip" })).not.toThrow();
    const specifiers = [...text.matchAll(/^import\s+(type\s+)?[^;]*?from\s+"([^"]+)"/gm)];
    expect(specifiers.length).toBeGreaterThan(0);
    for (const [, typeOnly, specifier] of specifiers) {
      expect(typeOnly !== undefined || specifier!.startsWith("node:"), specifier).toBe(true);
    }
  });

  it("a missing helper file fails the command plainly, not as node's exit status", async () => {
    const runner = new HelperRunner(node, "/nonexistent/cth-agent-helper.mjs");
    const failure = await runner.run(node, ["-e", "0"]).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ExecError);
    expect((failure as ExecError).code).toBe("EHELPER");
    expect((failure as ExecError).message).toMatch(
      /command helper \/nonexistent\/cth-agent-helper\.mjs is missing/,
    );
    runner.close();
  });
});

describe("command helper process", () => {
  it("fails the commands it held when it dies, and the next command starts a new helper", async () => {
    const runner = new HelperRunner();
    await runner.run(node, ["-e", "0"]);
    const first = runner.pid!;
    const held = runner.run(node, ["-e", "setTimeout(() => {}, 10000)"]).catch((error: unknown) => error);
    process.kill(first, "SIGKILL");
    const failure = await held;
    expect(failure).toBeInstanceOf(ExecError);
    expect((failure as ExecError).code).toBe("EHELPER");
    const { stdout } = await runner.run(node, ["-e", "console.log('again')"]);
    expect(stdout).toBe("again\n");
    expect(runner.pid).not.toBe(first);
    runner.close();
  });

  it("close() while a command with a large output runs still delivers all of it", async () => {
    const runner = new HelperRunner();
    const big = runner.run(node, ["-e", "process.stdout.write('x'.repeat(2 * 1024 * 1024))"]);
    await until(() => runner.pid !== undefined);
    runner.close();
    expect((await big).stdout.length).toBe(2 * 1024 * 1024);
  });

  it("exits by itself once closed and its commands are done", async () => {
    const runner = new HelperRunner();
    await runner.run(node, ["-e", "0"]);
    const pid = runner.pid!;
    expect(alive(pid)).toBe(true);
    runner.close();
    await until(() => !alive(pid));
    await expect(runner.run(node, ["-e", "0"])).rejects.toThrow(/closed/);
  });

  it("ignores SIGTERM: a stop signal to the agent's group does not cut the command it runs", async () => {
    const runner = new HelperRunner();
    const slow = runner.run(node, ["-e", "setTimeout(() => console.log('finished'), 500)"]);
    await until(() => runner.pid !== undefined);
    // The command running means the helper's signal handlers are in (set before it reads a request); a
    // fixed delay was too short on a loaded machine.
    await until(() => descendantPids(runner.pid!).length > 0);
    process.kill(runner.pid!, "SIGTERM");
    expect((await slow).stdout).toBe("finished\n");
    runner.close();
  });

  it("when the agent dies (no farewell), kills the commands it runs and exits", async () => {
    const helperModule = fileURLToPath(new URL("../../agent/exec-helper.ts", import.meta.url));
    const agent = spawn(
      node,
      [
        "--import",
        "tsx",
        "--input-type=module",
        "-e",
        `import { HelperRunner } from ${JSON.stringify(helperModule)};
         const runner = new HelperRunner();
         runner.run(process.execPath, ["-e", "setTimeout(() => {}, 30000)"]).catch(() => {});
         setTimeout(() => console.log(runner.pid), 300);
         setInterval(() => {}, 1000);`,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    const [line] = (await once(agent.stdout!, "data")) as [Buffer];
    const helperPid = Number(line.toString().trim());
    await until(() => descendantPids(helperPid).length > 0);
    const [command] = descendantPids(helperPid);
    agent.kill("SIGKILL");
    await until(() => !alive(helperPid) && !alive(command!));
  });
});
