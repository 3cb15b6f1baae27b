/**
 * The FirewallBackend contract, one spec for every backend: run against each in-memory model (unit) and
 * against each real adapter in real namespaces (kernel suite), so what the core relies on holds on the kernel.
 * The harness reads what the kernel holds independently of the backend under test (iptables-save, or nft's
 * own listing), tampers as an operator would, and makes the kernel lack a helper.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeEach, expect, it } from "vitest";
import { type FirewallBackend, NamespaceMissingError } from "../../agent/backend.ts";
import type { Family } from "../../lib/catalog.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import type { HelperRule } from "../../lib/schemas/index.ts";

export interface BackendHarness {
  readonly backend: FirewallBackend;
  /** Creates a fresh namespace for one test. */
  namespace(): Promise<string>;
  /** Helper ids of ours the kernel holds in `ns`, per family, sorted (read without the backend). */
  held(ns: string): Promise<Record<Family, string[]>>;
  /** Removes our rule for helper `id` out of band, as a hand edit would. */
  remove(ns: string, id: string): Promise<void>;
  /** Writes rules that are not ours (Neutron's) into `ns`; the checker says whether they are intact. */
  addForeign(ns: string): Promise<() => Promise<boolean>>;
  /** From now on the kernel lacks `helper` (its module is not there). */
  lack(helper: string): void;
  cleanup(): Promise<void>;
}

const rule = (helper: string, protocol: "tcp" | "udp", port: number): HelperRule => ({
  id: randomUUID(),
  protocol,
  port,
  helper,
});

const sorted = (rules: readonly HelperRule[]) => rules.map((r) => r.id).sort();

export function backendContract(makeHarness: () => BackendHarness): void {
  const harness = makeHarness();
  const { backend } = harness;
  let ns: string;
  const ftp = rule("ftp", "tcp", 21);
  const irc = rule("irc", "tcp", 6667);
  const sip = rule("sip", "udp", 5060);
  const tftp = rule("tftp", "udp", 69);

  beforeEach(async () => {
    ns = await harness.namespace();
  });

  afterAll(async () => {
    await harness.cleanup();
  });

  it("converges a set in one go and proves it: the digest is of what the kernel returned", async () => {
    const verified = await backend.converge(ns, [ftp, irc, sip], []);
    expect(verified.changed).toBe(true);
    expect(verified.errors).toEqual([]);
    // irc is IPv4-only: in ipv4 and nowhere else.
    expect(verified.rules).toEqual({ ipv4: 3, ipv6: 2 });
    expect(verified.digest).toBe(helperSetDigest([ftp, irc, sip]));
    expect(await harness.held(ns)).toEqual({ ipv4: sorted([ftp, irc, sip]), ipv6: sorted([ftp, sip]) });
    expect(await backend.holds(ns, [ftp, irc, sip])).toBe(true);
  });

  it("writes nothing for a set already in place", async () => {
    await backend.converge(ns, [ftp, sip], []);
    const again = await backend.converge(ns, [ftp, sip], [ftp, sip]);
    expect(again.changed).toBe(false);
    expect(again.digest).toBe(helperSetDigest([ftp, sip]));
  });

  it("adds and removes single helpers, leaving the others in place", async () => {
    await backend.converge(ns, [ftp, sip], []);
    const verified = await backend.converge(ns, [ftp, tftp], [ftp, sip]);
    expect(verified.changed).toBe(true);
    expect(verified.digest).toBe(helperSetDigest([ftp, tftp]));
    expect(await harness.held(ns)).toEqual({ ipv4: sorted([ftp, tftp]), ipv6: sorted([ftp, tftp]) });
  });

  it("the empty set removes everything it owns", async () => {
    await backend.converge(ns, [ftp, irc], []);
    const verified = await backend.converge(ns, [], [ftp, irc]);
    expect(verified.digest).toBe(helperSetDigest([]));
    expect(verified.rules).toEqual({ ipv4: 0, ipv6: 0 });
    expect(await harness.held(ns)).toEqual({ ipv4: [], ipv6: [] });
    expect(await backend.holds(ns, [])).toBe(true);
  });

  it("a second helper on one port is left out with a port_conflict error", async () => {
    const second = rule("sane", "tcp", 21);
    const verified = await backend.converge(ns, [ftp, second], []);
    const expectedWinner = [ftp, second].sort((a, b) => (a.id < b.id ? -1 : 1))[0]!;
    const loser = expectedWinner === ftp ? second : ftp;
    expect(verified.errors.map((e) => [e.helper_id, e.code])).toEqual([
      [loser.id, "port_conflict"],
      [loser.id, "port_conflict"],
    ]);
    expect(await harness.held(ns)).toEqual({ ipv4: [expectedWinner.id], ipv6: [expectedWinner.id] });
  });

  it("drift: a rule removed out of band is seen by holds and repaired by converge", async () => {
    await backend.converge(ns, [ftp, sip, tftp], []);
    await harness.remove(ns, sip.id);
    expect(await backend.holds(ns, [ftp, sip, tftp])).toBe(false);
    const repaired = await backend.converge(ns, [ftp, sip, tftp], [ftp, sip, tftp]);
    expect(repaired.digest).toBe(helperSetDigest([ftp, sip, tftp]));
    expect(await harness.held(ns)).toEqual({
      ipv4: sorted([ftp, sip, tftp]),
      ipv6: sorted([ftp, sip, tftp]),
    });
  });

  it("an edit against a view gone stale behind its back falls back to a whole rewrite", async () => {
    await backend.converge(ns, [ftp, sip, tftp], []);
    // The backend still believes sip is there and will delete it in place: the kernel refuses, it rewrites.
    await harness.remove(ns, sip.id);
    const verified = await backend.converge(ns, [ftp, tftp], [ftp, sip, tftp]);
    expect(verified.digest).toBe(helperSetDigest([ftp, tftp]));
    expect(await harness.held(ns)).toEqual({ ipv4: sorted([ftp, tftp]), ipv6: sorted([ftp, tftp]) });
  });

  it("a namespace forgotten after a restart (state says what it wrote) converges without a read first", async () => {
    await backend.converge(ns, [ftp, sip], []);
    backend.forget(ns);
    const verified = await backend.converge(ns, [ftp, tftp], [ftp, sip]);
    expect(verified.digest).toBe(helperSetDigest([ftp, tftp]));
    expect(await harness.held(ns)).toEqual({ ipv4: sorted([ftp, tftp]), ipv6: sorted([ftp, tftp]) });
  });

  it("a wrong guess of what is there (state lost) still converges", async () => {
    await backend.converge(ns, [ftp, sip], []);
    backend.forget(ns);
    const verified = await backend.converge(ns, [tftp], []);
    expect(verified.digest).toBe(helperSetDigest([tftp]));
    expect(await harness.held(ns)).toEqual({ ipv4: [tftp.id], ipv6: [tftp.id] });
  });

  it("rules that are not ours are never touched, whatever it writes or removes", async () => {
    const intact = await harness.addForeign(ns);
    await backend.converge(ns, [ftp, irc], []);
    await backend.converge(ns, [sip], [ftp, irc]);
    await backend.converge(ns, [], [sip]);
    await backend.release(ns);
    expect(await intact()).toBe(true);
  });

  it("release removes what it owns, and says whether there was anything", async () => {
    await backend.converge(ns, [ftp, sip], []);
    backend.forget(ns);
    expect(await backend.release(ns)).toBe(true);
    expect(await harness.held(ns)).toEqual({ ipv4: [], ipv6: [] });
    expect(await backend.release(ns)).toBe(false);
  });

  it("describe reports what the namespace holds, not what was meant", async () => {
    await backend.converge(ns, [ftp, sip], []);
    await harness.remove(ns, sip.id);
    backend.forget(ns);
    const found = await backend.describe(ns, [ftp, sip]);
    expect(found.digest).toBe(helperSetDigest([ftp]));
    expect(found.digest).not.toBe(helperSetDigest([ftp, sip]));
  });

  it("a namespace that does not exist is NamespaceMissingError", async () => {
    await expect(backend.converge(`cthgone-${process.pid}-${Date.now()}`, [ftp], [])).rejects.toBeInstanceOf(
      NamespaceMissingError,
    );
  });

  // Last: the harness's kernel lacks this helper from here on.
  it("a helper the kernel lacks is reported per helper; the router's other helpers apply", async () => {
    harness.lack("sip");
    const verified = await backend.converge(ns, [ftp, sip, tftp], []);
    expect(verified.errors.filter((e) => e.helper_id === sip.id).map((e) => e.code)).toContain(
      "helper_unavailable",
    );
    expect(verified.errors.every((e) => e.helper_id === sip.id)).toBe(true);
    expect(await harness.held(ns)).toEqual({ ipv4: sorted([ftp, tftp]), ipv6: sorted([ftp, tftp]) });
    expect(backend.unavailable.ipv4.has("sip")).toBe(true);
    // Held is what was applied: the digest is of ftp and tftp, so the status side sees this replica differ.
    expect(verified.digest).toBe(helperSetDigest([ftp, tftp]));
  });
}
