/**
 * A loopback HTTP proxy in front of one emulator that a test can cut like a network failure: `down()` closes
 * the listening socket and resets every open connection (new connections get ECONNREFUSED), `up()` listens
 * again on the same port. `cutBefore(target, n)` cuts just before the n-th request with that X-Amz-Target
 * (counted from the call), so a fault lands at an exact point inside one request's sequence of writes.
 */
import http from "node:http";
import type { AddressInfo, Socket } from "node:net";

export interface CutProxy {
  readonly url: string;
  /** Requests forwarded, by X-Amz-Target. */
  readonly seen: Map<string, number>;
  down(): Promise<void>;
  up(): Promise<void>;
  cutBefore(target: string, n: number): void;
  stop(): Promise<void>;
}

export async function startCutProxy(upstreamUrl: string): Promise<CutProxy> {
  const upstream = new URL(upstreamUrl);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  const sockets = new Set<Socket>();
  const seen = new Map<string, number>();
  let trigger: { target: string; remaining: number } | undefined;
  let port = 0;
  let listening = false;

  const server = http.createServer((req, res) => {
    const target = String(req.headers["x-amz-target"] ?? "");
    if (trigger && target === trigger.target && --trigger.remaining <= 0) {
      trigger = undefined;
      // The request never reaches the emulator: as if the network went away right here.
      void down();
      req.socket.destroy();
      return;
    }
    seen.set(target, (seen.get(target) ?? 0) + 1);
    const forward = http.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent,
      },
      (reply) => {
        res.writeHead(reply.statusCode ?? 502, reply.headers);
        reply.pipe(res);
      },
    );
    forward.on("error", () => req.socket.destroy());
    req.pipe(forward);
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });

  const listen = () =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => {
        server.off("error", reject);
        port = (server.address() as AddressInfo).port;
        listening = true;
        resolve();
      });
    });

  const down = async () => {
    if (!listening) return;
    listening = false;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of sockets) socket.destroy();
    await closed;
  };

  await listen();
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    down,
    up: async () => {
      if (!listening) await listen();
    },
    cutBefore(target, n) {
      trigger = { target, remaining: n };
    },
    async stop() {
      await down();
      agent.destroy();
    },
  };
}
