/** Listing cursors: a round trip for the same caller and filters, and one 400 for everything else. */
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { SSMClient } from "@aws-sdk/client-ssm";
import { describe, expect, it } from "vitest";
import type { LazyClient } from "../../lib/aws/clients.ts";
import { ifMatchAdmits, routerEtag } from "../../lib/domain/etag.ts";
import type { Identity } from "../../lib/domain/identity.ts";
import { BadRequestError } from "../../lib/errors.ts";
import { type CursorFilters, cursorCodec, cursorKeyFrom, cursorKeyLoader } from "../../lib/http/cursor.ts";
import type { RouterRecord } from "../../lib/ports.ts";
import { replica, routerRecord, storedHelper } from "../support/factories.ts";

const codec = cursorCodec(cursorKeyFrom("a deployment secret of at least thirty-two bytes"));
const member: Identity = { projectId: "p1", roles: new Set(), subject: "alice" };
const filters: CursorFilters = { projectId: "p1", outOfSyncOnly: false };
const POSITION = '{"router_id":"r-1","project_id":"p1"}';

const invalid = (run: () => unknown) => {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(BadRequestError);
    expect((error as Error).message).toBe("invalid cursor");
    return;
  }
  throw new Error("the cursor was accepted");
};

describe("listing cursors", () => {
  it("opens to the sealed position for the same caller and filters, and hides it", () => {
    const cursor = codec.seal(POSITION, member, filters);
    expect(cursor).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(cursor).not.toContain("r-1");
    expect(Buffer.from(cursor, "base64url").toString("latin1")).not.toContain("router_id");
    expect(codec.open(cursor, { ...member, roles: new Set() }, { ...filters })).toBe(POSITION);
  });

  it("refuses a cursor with any bit flipped", () => {
    const raw = Buffer.from(codec.seal(POSITION, member, filters), "base64url");
    for (const index of [0, 13, raw.length - 1]) {
      const forged = Buffer.from(raw);
      forged[index]! ^= 1;
      invalid(() => codec.open(forged.toString("base64url"), member, filters));
    }
  });

  it("refuses a cursor issued to another caller: project, powers or subject", () => {
    const cursor = codec.seal(POSITION, member, filters);
    invalid(() => codec.open(cursor, { ...member, projectId: "p2" }, filters));
    invalid(() => codec.open(cursor, { ...member, roles: new Set(["admin"]) }, filters));
    invalid(() => codec.open(cursor, { ...member, subject: "mallory" }, filters));
    const { subject: _, ...withoutSubject } = member;
    invalid(() => codec.open(cursor, withoutSubject, filters));
  });

  it("refuses a cursor issued for other filters", () => {
    const cursor = codec.seal(POSITION, member, filters);
    invalid(() => codec.open(cursor, member, { ...filters, projectId: undefined }));
    invalid(() => codec.open(cursor, member, { ...filters, host: "node-a" }));
    invalid(() => codec.open(cursor, member, { ...filters, outOfSyncOnly: true }));
  });

  it("refuses a cursor sealed under another key", () => {
    const other = cursorCodec(cursorKeyFrom("another deployment's secret, also long enough"));
    invalid(() => codec.open(other.seal(POSITION, member, filters), member, filters));
  });

  it("refuses garbage, padding, stray bits, a short token and an oversized one", () => {
    const cursor = codec.seal(POSITION, member, filters);
    for (const garbage of ["", "not a cursor", `${cursor}=`, "AAAA", "A".repeat(5000), `${cursor}.x`]) {
      invalid(() => codec.open(garbage, member, filters));
    }
    // The same bytes with non-zero trailing bits decode alike but are not what the codec wrote.
    const last = cursor.at(-1)!;
    if (cursor.length % 4 !== 0) {
      const sibling = `${cursor.slice(0, -1)}${last === "A" ? "B" : "A"}`;
      invalid(() => codec.open(sibling, member, filters));
    }
  });

  it("refuses a secret too short to key it", () => {
    expect(() => cursorKeyFrom("short")).toThrow(/at least 32 bytes/);
  });
});

describe("router ETags", () => {
  const record = routerRecord({ revision: 3, helpers: [storedHelper()] });

  it("are strong, quoted, and name the revision", () => {
    expect(routerEtag(record)).toMatch(/^"r3-[0-9a-f]{16}"$/);
  });

  it("change with the revision, the project, the bindings and the helpers", () => {
    const tag = routerEtag(record);
    expect(routerEtag({ ...record, revision: 4 })).not.toBe(tag);
    expect(routerEtag({ ...record, projectId: "other" })).not.toBe(tag);
    expect(routerEtag({ ...record, bindings: [{ host: "node-a", namespace: "snat" }] })).not.toBe(tag);
    expect(routerEtag({ ...record, helpers: [] })).not.toBe(tag);
    // An agent's report is no write a client could conflict with.
    const reported: RouterRecord = { ...record, replicas: { "node-a": replica(3) } };
    expect(routerEtag(reported)).toBe(tag);
  });

  it("If-Match admits the current tag, a list holding it and *, never a weak or absent one", () => {
    const tag = routerEtag(record);
    expect(ifMatchAdmits(tag, tag)).toBe(true);
    expect(ifMatchAdmits(`"other", ${tag}`, tag)).toBe(true);
    expect(ifMatchAdmits("*", tag)).toBe(true);
    expect(ifMatchAdmits(`W/${tag}`, tag)).toBe(false);
    expect(ifMatchAdmits('"r3-0000000000000000"', tag)).toBe(false);
    expect(ifMatchAdmits("*", undefined)).toBe(false);
  });
});

describe("the production cursor key", () => {
  const ssm: LazyClient<SSMClient> = {
    get: () => Promise.reject(new Error("no SSM in this test")),
    destroy: () => undefined,
  };

  it("derives from the signing key file, loaded once", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cth-cursor-"));
    const path = join(dir, "key.pem");
    writeFileSync(path, "-----BEGIN PRIVATE KEY-----\nnot really a key, but secret bytes\n");
    const load = cursorKeyLoader({ kind: "file", path, keyId: "k1" }, ssm);
    const key = await load();
    expect(key).toEqual(cursorKeyFrom(readFileSync(path, "utf8")));
    writeFileSync(path, "another secret of thirty-two bytes or more, rotated");
    expect(await load()).toBe(key);
  });

  it("fails without a signing key, and retries a failed read", async () => {
    await expect(cursorKeyLoader(undefined, ssm)()).rejects.toThrow(/no snapshot signing key/);
    const dir = mkdtempSync(join(tmpdir(), "cth-cursor-"));
    const path = join(dir, "late.pem");
    const load = cursorKeyLoader({ kind: "file", path, keyId: "k1" }, ssm);
    await expect(load()).rejects.toThrow(/ENOENT/);
    writeFileSync(path, "a key that arrived after the first listing asked for it");
    expect(await load()).toHaveLength(32);
  });
});
