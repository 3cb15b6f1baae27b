/**
 * Puts an EventBridge event to the running local stack, as the `conntrack.helpers` rule delivers it in AWS:
 *   npm run emit -- "Router Upserted" '{"router_id":"…","project_id":"demo","host":"local"}'
 * Prints the event id and what the events function made of it.
 */
import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { EventBridgeEvent } from "aws-lambda";
import { localDir, stackFile } from "./local/paths.ts";
import type { StackInfo } from "./local/stack.ts";

const USAGE = `Usage: npm run emit -- "DETAIL_TYPE" 'DETAIL_JSON'
  DETAIL_TYPE: "Conntrack Helper Notification" | "Router Upserted" | "Router Deleted"`;

/** The envelope EventBridge hands a rule target (see test/fixtures/aws-events/eventbridge-envelope.json). */
export function buildEnvelope(
  detailType: string,
  detailJson: string,
  now: Date = new Date(),
): EventBridgeEvent<string, unknown> {
  let detail: unknown;
  try {
    detail = JSON.parse(detailJson);
  } catch (error) {
    throw new Error(`DETAIL_JSON is not JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (typeof detail !== "object" || detail === null || Array.isArray(detail)) {
    throw new Error("DETAIL_JSON must be a JSON object (EventBridge rejects anything else)");
  }
  return {
    version: "0",
    id: randomUUID(),
    "detail-type": detailType,
    source: "conntrack.helpers",
    // The local functions run in account 000000000000 (their context ARN), and with no
    // CTH_EVENTS_*_ACCOUNTS set the events function accepts only its own account: keep the two equal.
    account: "000000000000",
    time: now.toISOString().replace(/\.\d{3}Z$/, "Z"),
    region: process.env.AWS_REGION ?? "us-east-1",
    resources: [],
    detail,
  };
}

async function main(): Promise<void> {
  const [detailType, detailJson, ...rest] = process.argv.slice(2);
  if (!detailType || detailJson === undefined || rest.length > 0) {
    process.stderr.write(`${USAGE}\n`);
    process.exit(2);
  }
  let envelope: EventBridgeEvent<string, unknown>;
  try {
    envelope = buildEnvelope(detailType, detailJson);
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(2);
  }
  let info: StackInfo;
  try {
    info = JSON.parse(await readFile(stackFile(localDir()), "utf8")) as StackInfo;
  } catch {
    process.stderr.write("no running local stack found (start one with npm start)\n");
    process.exit(1);
  }
  const response = await fetch(`${info.controlUrl}/events`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-cth-control-token": info.controlToken },
    body: JSON.stringify(envelope),
  });
  const result = (await response.json()) as Record<string, unknown>;
  process.stdout.write(`${envelope.id}\n`);
  process.stderr.write(`${JSON.stringify(result)}\n`);
  if (!response.ok || result.invocation !== "succeeded") process.exit(1);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
