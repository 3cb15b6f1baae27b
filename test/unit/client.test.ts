/**
 * The typed client and the CLI's error and usage paths, against a tiny loopback server that answers canned,
 * API-shaped responses (the happy path against the real stack is test/e2e/cli.test.ts).
 */
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ApiError, createClient, UnexpectedResponseError, UnreachableError } from "../../lib/client.ts";
import type { RouterViewBody } from "../../lib/schemas/api.ts";
import { main, parseBinding, table } from "../../scripts/cth.ts";

interface Seen {
  readonly method: string;
  readonly url: URL;
  readonly headers: IncomingMessage["headers"];
  readonly body: string;
}

type Reply = (request: Seen, res: ServerResponse) => void;

let server: Server;
let url: string;
let reply: Reply;
let seen: Seen[];

const send = (res: ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}) => {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body));
};

const router = (overrides: Partial<RouterViewBody> = {}): RouterViewBody => ({
  router_id: randomUUID(),
  project_id: "p1",
  host: "node-a",
  bindings: [
    { host: "node-a", namespace: "qrouter" },
    { host: "node-b", namespace: "snat" },
  ],
  revision: 3,
  in_sync: true,
  ...overrides,
});

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const request = {
        method: req.method ?? "",
        url: new URL(req.url ?? "/", "http://127.0.0.1"),
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      };
      seen.push(request);
      reply(request, res);
    });
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(() => new Promise<void>((done) => server.close(() => done())));

beforeEach(() => {
  seen = [];
  reply = (_request, res) => send(res, 500, "unset");
});

async function cli(argv: string[], env: NodeJS.ProcessEnv = { CTH_URL: url }) {
  let stdout = "";
  let stderr = "";
  const code = await main(argv, env, {
    stdout: (text) => {
      stdout += text;
    },
    stderr: (text) => {
      stderr += text;
    },
  });
  return { code, stdout, stderr };
}

describe("client", () => {
  it("parses a router and returns its ETag, sending the bearer token", async () => {
    const view = router();
    reply = (_request, res) => send(res, 200, view, { etag: '"3"' });
    const answer = await createClient({ url, token: "t0k" }).getRouter(view.router_id);
    expect(answer).toEqual({ status: 200, body: view, etag: '"3"' });
    expect(seen[0]!.url.pathname).toBe(`/v1/routers/${view.router_id}`);
    expect(seen[0]!.headers.authorization).toBe("Bearer t0k");
  });

  it("sends no Authorization header without a token", async () => {
    reply = (_request, res) => send(res, 204);
    await createClient({ url }).deleteRouter(randomUUID());
    expect(seen[0]!.method).toBe("DELETE");
    expect(seen[0]!.headers.authorization).toBeUndefined();
  });

  it("turns the function's error body into an ApiError with code, message and details", async () => {
    reply = (_request, res) =>
      send(res, 422, {
        error: {
          code: "validation_failed",
          message: "invalid router",
          details: [{ path: "bindings.0.host", message: "may contain only letters" }],
        },
      });
    const error = await createClient({ url })
      .putRouter(randomUUID(), { project_id: "p", bindings: [{ host: "a b", namespace: "qrouter" }] })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ApiError);
    expect(error).toMatchObject({
      status: 422,
      code: "validation_failed",
      message: "invalid router",
      details: [{ path: "bindings.0.host", message: "may contain only letters" }],
    });
  });

  it("turns the gateway's {message} body into an ApiError", async () => {
    reply = (_request, res) => send(res, 429, { message: "Too Many Requests" });
    await expect(createClient({ url, retries: 0 }).getRouter(randomUUID())).rejects.toMatchObject({
      status: 429,
      message: "Too Many Requests",
    });
  });

  it("an error status without an error body names the route", async () => {
    reply = (_request, res) => send(res, 502, "<html>bad gateway</html>");
    const error = await createClient({ url })
      .getRouterHelpers(randomUUID())
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(UnexpectedResponseError);
    expect((error as Error).message).toContain("GET /v1/routers/{router_id}/conntrack-helpers answered 502");
  });

  it("a body that does not match the schema is an error naming the route and the field", async () => {
    reply = (_request, res) => send(res, 200, { ...router(), revision: "3" });
    const error = await createClient({ url })
      .getRouter(randomUUID())
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(UnexpectedResponseError);
    expect((error as Error).message).toBe(
      "GET /v1/routers/{router_id} answered a body that does not match its schema",
    );
    expect((error as UnexpectedResponseError).details).toEqual([
      expect.objectContaining({ path: "revision" }),
    ]);
  });

  it("a success body that is not JSON is an error naming the route", async () => {
    reply = (_request, res) => send(res, 200, "not json");
    await expect(createClient({ url }).listRouters()).rejects.toThrow(
      "GET /v1/routers answered 200 with no JSON body",
    );
  });

  it("a success status the route does not document is an error", async () => {
    reply = (_request, res) => send(res, 202, router());
    await expect(createClient({ url }).getRouter(randomUUID())).rejects.toThrow(
      "GET /v1/routers/{router_id} answered an undocumented 202",
    );
  });

  it("nothing listening is an UnreachableError naming the endpoint", async () => {
    const closed = createServer();
    await new Promise<void>((done) => closed.listen(0, "127.0.0.1", done));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((done) => closed.close(() => done()));
    const error = await createClient({ url: `http://127.0.0.1:${port}` })
      .listRouters()
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(UnreachableError);
    expect((error as Error).message).toContain(`cannot reach http://127.0.0.1:${port} (GET /v1/routers)`);
  });

  it("allRouters follows next_cursor to the end and sends the filters on every page", async () => {
    const pages = [[router(), router()], [router(), router()], [router()]];
    reply = (request, res) => {
      const index = Number(request.url.searchParams.get("cursor") ?? "0");
      send(res, 200, {
        routers: pages[index],
        next_cursor: index + 1 < pages.length ? String(index + 1) : null,
      });
    };
    const listed: RouterViewBody[] = [];
    for await (const item of createClient({ url }).allRouters({
      projectId: "p1",
      host: "node-a",
      outOfSync: true,
      limit: 2,
    })) {
      listed.push(item);
    }
    expect(listed).toEqual(pages.flat());
    expect(seen.map((request) => request.url.search)).toEqual([
      "?project_id=p1&host=node-a&in_sync=false&limit=2",
      "?project_id=p1&host=node-a&in_sync=false&limit=2&cursor=1",
      "?project_id=p1&host=node-a&in_sync=false&limit=2&cursor=2",
    ]);
  });

  it("a cursor given twice is an error, not an endless listing", async () => {
    reply = (_request, res) => send(res, 200, { routers: [], next_cursor: "same" });
    const listing = async () => {
      for await (const _ of createClient({ url }).allRouters()) {
        // drain
      }
    };
    await expect(listing()).rejects.toThrow("GET /v1/routers gave the cursor same twice");
    expect(seen).toHaveLength(2);
  });

  it("a 503 on a submission is retried with the same Idempotency-Key", async () => {
    const routerId = randomUUID();
    reply = (_request, res) => {
      if (seen.length === 1)
        return send(
          res,
          503,
          { error: { code: "service_unavailable", message: "later" } },
          { "retry-after": "0" },
        );
      send(res, 202, { routers: [{ router_id: routerId, revision: 2 }] });
    };
    const helper = {
      id: randomUUID(),
      router_id: routerId,
      protocol: "tcp" as const,
      port: 21,
      helper: "ftp",
    };
    const answer = await createClient({ url }).submitNotification(
      { event: "created", conntrack_helpers: [helper] },
      "key-2",
    );
    expect(answer.body.routers).toEqual([{ router_id: routerId, revision: 2 }]);
    expect(seen.map((request) => request.headers["idempotency-key"])).toEqual(["key-2", "key-2"]);
  });

  it("a GET answered 429 every time gives up after the retries with the gateway's message", async () => {
    reply = (_request, res) => send(res, 429, { message: "Too Many Requests" }, { "retry-after": "0" });
    await expect(createClient({ url, retries: 2 }).listRouters()).rejects.toMatchObject({
      status: 429,
      message: "Too Many Requests",
    });
    expect(seen).toHaveLength(3);
  });

  it("a DELETE answered 503 is not repeated (a repeat of one that took effect would answer 404)", async () => {
    reply = (_request, res) =>
      send(res, 503, { error: { code: "service_unavailable", message: "later" } }, { "retry-after": "0" });
    await expect(createClient({ url }).deleteRouter(randomUUID())).rejects.toMatchObject({
      status: 503,
      message: "later",
    });
    expect(seen).toHaveLength(1);
  });

  it("submitNotification sends the body and the Idempotency-Key", async () => {
    const routerId = randomUUID();
    reply = (_request, res) => send(res, 202, { routers: [{ router_id: routerId, revision: 4 }] });
    const notification = {
      event: "created" as const,
      conntrack_helpers: [
        { id: randomUUID(), router_id: routerId, protocol: "tcp" as const, port: 21, helper: "ftp" },
      ],
    };
    const answer = await createClient({ url }).submitNotification(notification, "key-1");
    expect(answer.body.routers).toEqual([{ router_id: routerId, revision: 4 }]);
    expect(seen[0]!.headers["idempotency-key"]).toBe("key-1");
    expect(seen[0]!.headers["content-type"]).toBe("application/json");
    expect(JSON.parse(seen[0]!.body)).toEqual(notification);
  });
});

describe("cth CLI (in process)", () => {
  it.each([
    [["routers"], 'unknown command "routers"'],
    [["routers", "bogus"], 'unknown command "routers bogus"'],
    [["routers", "show"], "routers show takes ROUTER_ID"],
    [["routers", "show", "a", "b"], "routers show takes ROUTER_ID"],
    [["routers", "ls", "extra"], "routers ls takes no arguments"],
    [["helpers", "rm", "r"], "helpers rm takes ROUTER_ID HELPER_ID..."],
    [["routers", "show", "x", "--limit", "2"], "routers show takes no --limit"],
    [["routers", "ls", "--limit", "0"], "--limit must be a positive integer"],
    [["routers", "ls", "--bogus"], "Unknown option '--bogus'"],
    [["routers", "put", "r", "--binding", "a"], "--project is required"],
    [["routers", "put", "r", "--project", "p"], "--binding is required"],
    [
      ["routers", "put", "r", "--project", "p", "--binding", "a:dvr"],
      '--binding must be HOST or HOST:snat, got "a:dvr"',
    ],
    [
      ["helpers", "add", "r", "--protocol", "sctp", "--port", "1", "--helper", "x"],
      "--protocol must be tcp or udp",
    ],
    [["helpers", "add", "r", "--protocol", "tcp", "--helper", "ftp"], "--port is required"],
    [
      ["helpers", "add", "r", "--protocol", "tcp", "--port", "21x", "--helper", "ftp"],
      "--port must be a positive integer",
    ],
  ])("%j is a usage error (exit 2, nothing sent)", async (argv, message) => {
    const result = await cli(argv);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(message);
    expect(result.stdout).toBe("");
    expect(seen).toHaveLength(0);
  });

  it("no command prints the usage to stderr with exit 2; --help prints it to stdout with exit 0", async () => {
    const bare = await cli([]);
    expect(bare.code).toBe(2);
    expect(bare.stderr).toContain("Usage: cth");
    const help = await cli(["routers", "ls", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("routers put ROUTER_ID --project P --binding HOST[:snat]...");
  });

  it("prints the API's message and each detail's path to stderr with exit 1", async () => {
    reply = (_request, res) =>
      send(res, 422, {
        error: {
          code: "validation_failed",
          message: "invalid router",
          details: [{ path: "project_id", message: "may contain only letters, digits, '_' and '-'" }],
        },
      });
    const result = await cli(["routers", "put", randomUUID(), "--project", "a.b", "--binding", "n"]);
    expect(result).toEqual({
      code: 1,
      stdout: "",
      stderr: "invalid router\n  project_id: may contain only letters, digits, '_' and '-'\n",
    });
  });

  it("--binding host and host:snat become qrouter and snat bindings", async () => {
    expect(parseBinding("node-a")).toEqual({ host: "node-a", namespace: "qrouter" });
    expect(parseBinding("node-b:snat")).toEqual({ host: "node-b", namespace: "snat" });
    expect(parseBinding("node-c:qrouter")).toEqual({ host: "node-c", namespace: "qrouter" });
    expect(() => parseBinding(":snat")).toThrow("--binding must be HOST or HOST:snat");
    expect(() => parseBinding("a:snat:x")).toThrow("--binding must be HOST or HOST:snat");
  });

  it("--url beats CTH_URL and --token beats CTH_TOKEN; the variables apply without the flags", async () => {
    const view = router();
    reply = (_request, res) => send(res, 200, view);
    const env = { CTH_URL: "http://127.0.0.1:9", CTH_TOKEN: "from-env" };
    expect(
      (await cli(["--url", url, "--token", "from-flag", "routers", "show", view.router_id], env)).code,
    ).toBe(0);
    expect(seen[0]!.headers.authorization).toBe("Bearer from-flag");
    expect(
      (await cli(["routers", "show", view.router_id], { CTH_URL: url, CTH_TOKEN: "from-env" })).code,
    ).toBe(0);
    expect(seen[1]!.headers.authorization).toBe("Bearer from-env");
    const unreachable = await cli(["routers", "show", view.router_id], env);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toContain("cannot reach http://127.0.0.1:9");
  });

  it("helpers rm of an id the router does not hold is an error and submits nothing", async () => {
    const routerId = randomUUID();
    reply = (_request, res) =>
      send(res, 200, {
        router_id: routerId,
        revision: 2,
        applied_revision: 2,
        in_sync: true,
        helpers: [],
        applied_errors: [],
        replicas: [],
        draining: [],
      });
    const missing = randomUUID();
    const result = await cli(["helpers", "rm", routerId, missing]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(`helper ${missing} is not on router ${routerId}\n`);
    expect(seen.map((request) => request.method)).toEqual(["GET"]);
  });

  it("routers ls shows '-' for the bindings a member is not shown, the hosts for an operator", async () => {
    const hidden = router({ bindings: [] });
    const shown = router();
    reply = (_request, res) => send(res, 200, { routers: [hidden, shown], next_cursor: null });
    const { code, stdout } = await cli(["routers", "ls"]);
    expect(code).toBe(0);
    const rows = stdout
      .trimEnd()
      .split("\n")
      .slice(1)
      .map((line) => line.split(/ +/));
    expect(rows.map((cells) => [cells[0], cells[2]])).toEqual([
      [hidden.router_id, "-"],
      [shown.router_id, "node-a,node-b:snat"],
    ]);
  });

  it("a table pads every column but the last", () => {
    expect(table(["A", "LONGER"], [["xyz", "1"]])).toBe("A    LONGER\nxyz  1");
  });
});
