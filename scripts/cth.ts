/**
 * The operator CLI: `npm run -s cth -- COMMAND` (or the `cth` bin). A readable table by default, the API's
 * JSON with --json; an API error is printed as the API's message with exit 1, a usage error exits 2.
 */
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { ApiError, type Client, createClient } from "../lib/client.ts";
import { isAppError } from "../lib/errors.ts";
import type { RouterStateBody, RouterViewBody } from "../lib/schemas/api.ts";
import type { HelperChange, NamespaceKind } from "../lib/schemas/index.ts";

export const DEFAULT_URL = "http://127.0.0.1:3000";

export const USAGE = `Usage: cth [--url URL] [--token TOKEN] [--json] COMMAND

Commands:
  routers ls [--out-of-sync] [--project P] [--host H] [--limit N]
                         every router matching the filters (all pages; --limit is the page size)
  routers show ROUTER_ID
  routers put ROUTER_ID --project P --binding HOST[:snat]...
                         register a router or replace its project and bindings (admin);
                         HOST is a qrouter binding, HOST:snat a DVR router's snat namespace
  routers rm ROUTER_ID   delete a router (admin)
  helpers ls ROUTER_ID   a router's desired helpers and what each host applied
  helpers add ROUTER_ID --protocol tcp|udp --port N --helper NAME [--id UUID]
                         add a helper (a new id unless --id is given); prints the new revision
  helpers rm ROUTER_ID HELPER_ID...
                         remove helpers by id; prints the new revision

Options:
  --url URL      the API's endpoint (default: CTH_URL, else ${DEFAULT_URL})
  --token TOKEN  bearer token (default: CTH_TOKEN)
  --json         print JSON (a listing is every page, as one {"routers": [...], "next_cursor": null})
  -h, --help     this text

A 429 or 503 is retried twice (reads, puts and helper changes, which carry an Idempotency-Key).
Exit status: 0 done, 1 the API (or the network) refused, 2 usage error.`;

const OPTIONS = {
  url: { type: "string" },
  token: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
  "out-of-sync": { type: "boolean" },
  project: { type: "string" },
  host: { type: "string" },
  limit: { type: "string" },
  binding: { type: "string", multiple: true },
  protocol: { type: "string" },
  port: { type: "string" },
  helper: { type: "string" },
  id: { type: "string" },
} as const;

type OptionName = keyof typeof OPTIONS;
type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>["values"];

const GLOBAL: readonly OptionName[] = ["url", "token", "json", "help"];

interface Command {
  /** Positionals after the two command words: required names, then whether more may follow. */
  readonly args: readonly string[];
  readonly variadic?: boolean;
  readonly options: readonly OptionName[];
  readonly run: (client: Client, args: readonly string[], values: Values, out: Output) => Promise<void>;
}

export class UsageError extends Error {}

export interface Io {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
}

interface Output {
  readonly json: boolean;
  print(text: string): void;
  printJson(value: unknown): void;
}

/** Columns padded to their widest cell; the last one is not padded. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((title, column) =>
    Math.max(title.length, ...rows.map((row) => (row[column] ?? "").length)),
  );
  return [header, ...rows]
    .map((row) =>
      row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!))).join("  "),
    )
    .join("\n");
}

const yesNo = (value: boolean | undefined): string => (value === undefined ? "-" : value ? "yes" : "no");

/** "-" when there are none to show: a member is never told node names, and a blank cell reads as a bug. */
const bindingsText = (router: RouterViewBody): string =>
  router.bindings.length === 0
    ? "-"
    : router.bindings
        .map((binding) => (binding.namespace === "qrouter" ? binding.host : `${binding.host}:snat`))
        .join(",");

function routerLines(router: RouterViewBody): string {
  return table(
    ["router_id:", router.router_id],
    [
      ["project:", router.project_id],
      ["bindings:", bindingsText(router)],
      ["revision:", String(router.revision)],
      ["in_sync:", yesNo(router.in_sync)],
    ],
  );
}

function stateLines(state: RouterStateBody): string {
  const summary = `router ${state.router_id}: revision ${state.revision}, applied ${state.applied_revision}, in_sync ${yesNo(state.in_sync)}`;
  const helpers =
    state.helpers.length === 0
      ? "no helpers"
      : table(
          ["ID", "PROTOCOL", "PORT", "HELPER"],
          state.helpers.map((helper) => [helper.id, helper.protocol, String(helper.port), helper.helper]),
        );
  const replicas = table(
    ["HOST", "NAMESPACE", "APPLIED", "IN_SYNC", "ERRORS"],
    state.replicas.map((replica) => [
      replica.host ?? "-",
      replica.namespace,
      String(replica.applied_revision),
      yesNo(replica.in_sync),
      replica.applied_errors.map((error) => error.message).join("; ") || "-",
    ]),
  );
  return [summary, "", helpers, ...(state.replicas.length > 0 ? ["", replicas] : [])].join("\n");
}

/** `host` is a qrouter binding, `host:snat` (or `host:qrouter`) names the kind. */
export function parseBinding(text: string): { host: string; namespace: NamespaceKind } {
  const [host, kind, ...rest] = text.split(":");
  if (!host || rest.length > 0 || (kind !== undefined && kind !== "snat" && kind !== "qrouter")) {
    throw new UsageError(`--binding must be HOST or HOST:snat, got "${text}"`);
  }
  return { host, namespace: kind === "snat" ? "snat" : "qrouter" };
}

function positiveInteger(name: string, text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1) throw new UsageError(`--${name} must be a positive integer`);
  return Number(text);
}

function required(values: Values, name: "project" | "protocol" | "port" | "helper"): string {
  const value = values[name];
  if (value === undefined) throw new UsageError(`--${name} is required`);
  return value;
}

function printRevisions(out: Output, result: { routers: { router_id: string; revision: number }[] }): void {
  for (const router of result.routers) out.print(`router ${router.router_id}: revision ${router.revision}`);
}

const COMMANDS: Readonly<Record<string, Command>> = {
  "routers ls": {
    args: [],
    options: ["out-of-sync", "project", "host", "limit"],
    async run(client, _args, values, out) {
      const routers: RouterViewBody[] = [];
      for await (const router of client.allRouters({
        projectId: values.project,
        host: values.host,
        outOfSync: values["out-of-sync"],
        limit: values.limit === undefined ? undefined : positiveInteger("limit", values.limit),
      })) {
        routers.push(router);
      }
      if (out.json) return out.printJson({ routers, next_cursor: null });
      out.print(
        table(
          ["ROUTER_ID", "PROJECT", "BINDINGS", "REVISION", "IN_SYNC"],
          routers.map((router) => [
            router.router_id,
            router.project_id,
            bindingsText(router),
            String(router.revision),
            yesNo(router.in_sync),
          ]),
        ),
      );
    },
  },
  "routers show": {
    args: ["ROUTER_ID"],
    options: [],
    async run(client, [routerId], _values, out) {
      const { body } = await client.getRouter(routerId!);
      if (out.json) return out.printJson(body);
      out.print(routerLines(body));
    },
  },
  "routers put": {
    args: ["ROUTER_ID"],
    options: ["project", "binding"],
    async run(client, [routerId], values, out) {
      const project = required(values, "project");
      if (!values.binding?.length) throw new UsageError("--binding is required (repeat it for each host)");
      const bindings = values.binding.map(parseBinding);
      const { status, body } = await client.putRouter(routerId!, { project_id: project, bindings });
      if (out.json) return out.printJson(body);
      out.print(`${status === 201 ? "registered" : "updated"}\n${routerLines(body)}`);
    },
  },
  "routers rm": {
    args: ["ROUTER_ID"],
    options: [],
    async run(client, [routerId], _values, out) {
      await client.deleteRouter(routerId!);
      if (out.json) return out.printJson({ router_id: routerId, deleted: true });
      out.print(`router ${routerId} deleted`);
    },
  },
  "helpers ls": {
    args: ["ROUTER_ID"],
    options: [],
    async run(client, [routerId], _values, out) {
      const { body } = await client.getRouterHelpers(routerId!);
      if (out.json) return out.printJson(body);
      out.print(stateLines(body));
    },
  },
  "helpers add": {
    args: ["ROUTER_ID"],
    options: ["protocol", "port", "helper", "id"],
    async run(client, [routerId], values, out) {
      const protocol = required(values, "protocol");
      if (protocol !== "tcp" && protocol !== "udp") throw new UsageError("--protocol must be tcp or udp");
      const helper: HelperChange = {
        id: values.id ?? randomUUID(),
        router_id: routerId!,
        protocol,
        port: positiveInteger("port", required(values, "port")),
        helper: required(values, "helper"),
      };
      const { body } = await client.submitNotification(
        { event: "created", conntrack_helpers: [helper] },
        randomUUID(),
      );
      if (out.json) return out.printJson({ conntrack_helpers: [helper], routers: body.routers });
      out.print(`helper ${helper.id} added (${helper.protocol}/${helper.port} ${helper.helper})`);
      printRevisions(out, body);
    },
  },
  "helpers rm": {
    args: ["ROUTER_ID", "HELPER_ID"],
    variadic: true,
    options: [],
    async run(client, [routerId, ...helperIds], _values, out) {
      // A deletion names the whole helper: read the router's helpers for the fields of each id.
      const { body: state } = await client.getRouterHelpers(routerId!);
      const changes = helperIds.map((id): HelperChange => {
        const helper = state.helpers.find((candidate) => candidate.id === id);
        if (!helper) throw new ApiError(404, "not_found", `helper ${id} is not on router ${routerId}`);
        return { ...helper, router_id: routerId! };
      });
      const { body } = await client.submitNotification(
        { event: "deleted", conntrack_helpers: changes },
        randomUUID(),
      );
      if (out.json) return out.printJson({ conntrack_helpers: changes, routers: body.routers });
      for (const change of changes) out.print(`helper ${change.id} removed`);
      printRevisions(out, body);
    },
  },
};

function parse(argv: readonly string[]) {
  try {
    return parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
}

/** Runs one command; the exit status is returned, never thrown. */
export async function main(argv: readonly string[], env: NodeJS.ProcessEnv, io: Io): Promise<number> {
  try {
    const { values, positionals } = parse(argv);
    const [noun, verb, ...args] = positionals;
    if (values.help) {
      io.stdout(`${USAGE}\n`);
      return 0;
    }
    if (noun === undefined) {
      io.stderr(`${USAGE}\n`);
      return 2;
    }
    const name = `${noun} ${verb ?? ""}`;
    const command = COMMANDS[name];
    if (!command) throw new UsageError(`unknown command "${name.trim()}"`);
    const given = Object.keys(values) as OptionName[];
    const foreign = given.find((option) => !GLOBAL.includes(option) && !command.options.includes(option));
    if (foreign) throw new UsageError(`${name} takes no --${foreign}`);
    const fixed = command.args.length;
    if (args.length < fixed || (!command.variadic && args.length > fixed)) {
      const expected = command.args.join(" ") + (command.variadic ? "..." : "");
      throw new UsageError(`${name} takes ${expected || "no arguments"}`);
    }
    const client = createClient({
      url: values.url ?? (env.CTH_URL || DEFAULT_URL),
      token: values.token ?? (env.CTH_TOKEN || undefined),
    });
    const out: Output = {
      json: values.json === true,
      print: (text) => io.stdout(`${text}\n`),
      printJson: (value) => io.stdout(`${JSON.stringify(value, null, 2)}\n`),
    };
    await command.run(client, args, values, out);
    return 0;
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr(`cth: ${error.message}\nRun cth --help for the commands.\n`);
      return 2;
    }
    if (isAppError(error)) {
      const details = Array.isArray(error.details)
        ? (error.details as { path: string; message: string }[])
        : [];
      io.stderr(
        `${[error.message, ...details.map((issue) => `  ${issue.path}: ${issue.message}`)].join("\n")}\n`,
      );
      return 1;
    }
    throw error;
  }
}

const io: Io = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

/** For the bin shim (scripts/cth.mjs), which loads this file through tsx. */
export const run = async (): Promise<void> => {
  process.exitCode = await main(process.argv.slice(2), process.env, io);
};

if (import.meta.url === `file://${process.argv[1]}`) await run();
