/**
 * Real traffic for kernel suites: a router namespace with a TCP listener, a client namespace on a veth pair
 * (198.18.0.0/15, nothing routed out), and the conntrack entry one connection leaves in the router namespace.
 */
import { eventually, inNs, type Sandbox } from "./netns.ts";

export const ROUTER_IP = "198.18.7.1";
export const CLIENT_IP = "198.18.7.2";

/**
 * Creates `ns` (exactly that name) and a client namespace wired to it, with a listener on `port` that sends an
 * FTP-style banner, and a stateful filter rule, as every Neutron router has: conntrack stays active in the
 * namespace whether or not our raw chain exists. Returns the client namespace.
 */
export async function routerWithListener(sandbox: Sandbox, ns: string, port: number): Promise<string> {
  await sandbox.namespace("", ns);
  const client = await sandbox.namespace("cthcl");
  await sandbox.veth(client, `${CLIENT_IP}/24`, ns, `${ROUTER_IP}/24`);
  await inNs(ns, [
    "iptables",
    "-A",
    "INPUT",
    "-m",
    "conntrack",
    "--ctstate",
    "NEW,ESTABLISHED",
    "-j",
    "ACCEPT",
  ]);
  const listener = sandbox.spawn("ip", [
    "netns",
    "exec",
    ns,
    process.execPath,
    "-e",
    `require('net').createServer(s=>s.end('220 cth test\\r\\n')).listen(${port},'${ROUTER_IP}',()=>console.log('ready'))`,
  ]);
  await new Promise<void>((resolve, reject) => {
    listener.stdout?.once("data", () => resolve());
    listener.once("exit", (code) => reject(new Error(`listener exited ${code}`)));
  });
  return client;
}

/** Connects from `client` to the listener in `ns`, reads the banner; the connection's conntrack entry. */
export async function trackedConnection(client: string, ns: string, port: number): Promise<string> {
  const script = `const s=require('net').connect(${port},'${ROUTER_IP}',()=>console.log(s.localPort));s.on('data',()=>{});s.on('end',()=>process.exit(0));s.on('error',e=>{console.error(e.message);process.exit(1)});`;
  const sport = Number((await inNs(client, [process.execPath, "-e", script])).stdout.trim());
  return eventually(
    async () => {
      const { stdout } = await inNs(ns, ["conntrack", "-L", "-p", "tcp", "--sport", String(sport)]).catch(
        (error: { stdout?: string }) => ({ stdout: error.stdout ?? "" }),
      );
      return stdout.includes(`sport=${sport}`) ? stdout : undefined;
    },
    10_000,
    "the connection's conntrack entry",
  );
}
