/**
 * `npm start`: the whole system locally (see scripts/local/stack.ts). Ctrl-C or SIGTERM stops everything:
 * the agent by its PID, the servers, the emulators, and the namespaces this stack created.
 */
import type { RunningStack } from "./local/stack.ts";

// fauxqs keeps its state in node:sqlite, whose "experimental" warning is noise on every start.
const emitWarning = process.emitWarning.bind(process);
process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
  if (String(warning instanceof Error ? warning.message : warning).includes("SQLite")) return;
  (emitWarning as (...args: unknown[]) => void)(warning, ...rest);
}) as typeof process.emitWarning;
const { DEMO_PROJECT, optionsFromEnv, startStack } = await import("./local/stack.ts");

const print = (line: string) => process.stdout.write(`${line}\n`);

function banner(stack: RunningStack): string {
  const { apiUrl, demoRouterId, backend, agentPid } = stack.info;
  const helper = "3f1e7c2a-9d4b-4e8f-a1c6-5b2d8e0f7a19";
  const body = JSON.stringify({
    event: "created",
    conntrack_helpers: [{ id: helper, router_id: demoRouterId, protocol: "tcp", port: 21, helper: "ftp" }],
  });
  return [
    "",
    `cth local stack ready in ${stack.readyMs} ms (${Object.entries(stack.phases)
      .map(([name, ms]) => `${name} ${ms}`)
      .join(", ")})`,
    `  API          ${apiUrl} (OpenAPI: ${apiUrl}/v1/openapi.json)`,
    `  agent        node "local", backend ${backend}${agentPid ? `, pid ${agentPid}` : ""}`,
    `  demo router  ${demoRouterId} (project "${DEMO_PROJECT}", host "local")`,
    "",
    `export TOKEN=${stack.demoToken}`,
    `export ADMIN_TOKEN=${stack.adminToken}`,
    "",
    "# add an ftp helper to the demo router, then read the router's state:",
    `curl -sS -X POST ${apiUrl}/v1/notifications -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '${body}'`,
    `curl -sS ${apiUrl}/v1/routers/${demoRouterId}/conntrack-helpers -H "authorization: Bearer $TOKEN"`,
    ...(backend === "iptables" ? [`ip netns exec qrouter-${demoRouterId} iptables-save -t raw`] : []),
    ...(backend === "nftables"
      ? [`ip netns exec qrouter-${demoRouterId} nft list table inet cth-helpers`]
      : []),
    "",
    "More tokens: npm run -s token -- --project P [--role admin|service]. Events: npm run emit -- 'Router Upserted' '{...}'.",
    "Ctrl-C stops everything.",
    "",
  ].join("\n");
}

async function main(): Promise<void> {
  let stack: RunningStack;
  try {
    stack = await startStack(optionsFromEnv(process.env, print));
  } catch (error) {
    const hint =
      (error as NodeJS.ErrnoException).code === "EADDRINUSE"
        ? " (set PORT to a free port, or PORT=0 for any)"
        : "";
    process.stderr.write(
      `local stack failed to start: ${error instanceof Error ? error.message : String(error)}${hint}\n`,
    );
    process.exit(1);
  }
  print(banner(stack));
  let stoppingSince: number | undefined;
  const shutdown = (signal: NodeJS.Signals) => {
    if (stoppingSince !== undefined) {
      // Ctrl-C reaches us twice (from the terminal and relayed by tsx): only a later, deliberate one forces.
      if (Date.now() - stoppingSince < 3_000) return;
      process.stderr.write(`${signal} again: exiting now, without cleaning up\n`);
      process.exit(130);
    }
    stoppingSince = Date.now();
    print(`${signal}: stopping the local stack...`);
    stack.stop().then(
      () => {
        print("local stack stopped");
        process.exit(0);
      },
      (error: unknown) => {
        process.stderr.write(`stop failed: ${String(error)}\n`);
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", shutdown);
  process.on("SIGTERM", shutdown);
  process.on("SIGHUP", shutdown);
}

await main();
