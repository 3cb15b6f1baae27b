/** What only the nftables backend has to get right, over its in-memory model (the contract covers the rest). */
import { expect, it } from "vitest";
import { MemoryNft } from "../../agent/nftables/memory.ts";
import { readView, TABLE } from "../../agent/nftables/render.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { nftablesBackend } from "../support/backends.ts";
import { helperRule } from "../support/factories.ts";

it("an edit against a table that vanished behind its back is rewritten, and no helper is blamed for it", async () => {
  const port = new MemoryNft();
  const backend = nftablesBackend(port);
  await port.createNamespace("ns1");
  const ftp = helperRule("ftp", "tcp", 21);
  const sip = helperRule("sip", "udp", 5060);
  await backend.converge("ns1", [ftp], []);
  await port.tamper("ns1", `delete table inet ${TABLE}\n`);
  // The cached view still holds ftp: the edit adds sip's object first, which fails with the table gone.
  const verified = await backend.converge("ns1", [ftp, sip], [ftp]);
  expect(verified.errors).toEqual([]);
  expect(backend.unavailable.ipv4.size + backend.unavailable.ipv6.size).toBe(0);
  const listing = await port.list("ns1");
  expect(
    readView(listing ?? "", new HelperCatalog())
      .rules.map((r) => r.id)
      .sort(),
  ).toEqual([ftp.id, sip.id].sort());
});
