import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SqsStatusSink } from "../../lib/aws/sqs-status-sink.ts";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS } from "../../lib/config.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import { ServiceUnavailableError } from "../../lib/errors.ts";
import { buildSchemas, type StatusMessage } from "../../lib/schemas/index.ts";
import { type Emulators, startEmulators } from "../support/emulators.ts";

const schemas = buildSchemas(DEFAULT_LIMITS, new HelperCatalog());

describe("SqsStatusSink on fauxqs", () => {
  let emu: Emulators;

  beforeAll(async () => {
    emu = await startEmulators();
  });

  afterAll(async () => {
    await emu?.stop();
  });

  const applied = (): StatusMessage => ({
    v: 1,
    kind: "applied",
    router_id: randomUUID(),
    revision: 3,
    host: "net-1",
    namespace: "qrouter",
    digest: helperSetDigest([]),
    rules: { ipv4: 2, ipv6: 1 },
    errors: [{ helper_id: randomUUID(), code: "helper_unavailable", message: "ipv4: the kernel lacks snmp" }],
  });

  it("sends schema-valid reports and resync requests to a standard queue", async () => {
    const { url } = await emu.createStatusQueue(`st-${randomUUID().slice(0, 6)}`);
    const sink = new SqsStatusSink(emu.clients().sqs, url);
    const report = applied();
    await sink.send(report);
    await sink.send({ v: 1, kind: "resync-request", host: "net-1" });
    const bodies = (await emu.drain(url)).map((m) => schemas.statusMessage.parse(JSON.parse(m.Body!)));
    expect(bodies).toEqual([report, { v: 1, kind: "resync-request", host: "net-1" }]);
  });

  it("on a FIFO queue: a re-sent identical report is deduplicated, every resync request gets through", async () => {
    const { url } = await emu.createNodeQueue(`stf-${randomUUID().slice(0, 6)}`);
    const sink = new SqsStatusSink(emu.clients().sqs, url);
    const report = applied();
    await sink.send(report);
    await sink.send(report);
    await sink.send({ v: 1, kind: "resync-request", host: "net-1" });
    await sink.send({ v: 1, kind: "resync-request", host: "net-1" });
    const messages = await emu.drain(url);
    expect(messages.map((m) => JSON.parse(m.Body!).kind).sort()).toEqual([
      "applied",
      "resync-request",
      "resync-request",
    ]);
    expect(messages.find((m) => JSON.parse(m.Body!).kind === "applied")?.Attributes?.MessageGroupId).toBe(
      (report as { router_id: string }).router_id,
    );
  });

  it("a queue that cannot be reached surfaces as ServiceUnavailableError", async () => {
    const sink = new SqsStatusSink(emu.clients().sqs, `${emu.sqsEndpoint}/000000000000/no-such-queue`);
    await expect(sink.send({ v: 1, kind: "resync-request", host: "net-1" })).rejects.toBeInstanceOf(
      ServiceUnavailableError,
    );
  });
});
