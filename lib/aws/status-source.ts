/**
 * The reporting host of a status record, from the queue it arrived on. Each node has its own status queue
 * whose policy admits only that node's agent principal, so the queue (the record's eventSourceARN, set by
 * Lambda's event source mapping) is something a node cannot forge; the report's body is.
 */
import { host as hostSchema } from "../schemas/primitives.ts";

/** `arn:aws:sqs:<region>:<account>:<name>` → the host the template names, or undefined for any other queue. */
export function hostFromQueueArn(template: string, arn: string | undefined): string | undefined {
  const name = arn?.split(":")[5];
  if (name === undefined || arn?.split(":").length !== 6) return undefined;
  const [prefix = "", suffix = ""] = template.split("{node}");
  if (name.length <= prefix.length + suffix.length || !name.startsWith(prefix) || !name.endsWith(suffix)) {
    return undefined;
  }
  const host = name.slice(prefix.length, name.length - suffix.length);
  return hostSchema.safeParse(host).success ? host : undefined;
}
