import * as z from "zod";
import { FIELD_LIMITS } from "../config.ts";

/** Canonical lowercase UUID (RFC 9562 layout). Mixed case is rejected so one router has exactly one id. */
export const uuid = z
  .string()
  .max(36)
  .regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, "must be a lowercase UUID");

/** Keystone project ids are 32 hex characters; other deployments use names. Never anything iptables could parse. */
export const projectId = z
  .string()
  .min(1)
  .max(FIELD_LIMITS.projectId)
  .regex(/^[A-Za-z0-9_-]+$/, "may contain only letters, digits, '_' and '-'");

/** A network node's name; it also names the node's SQS queue, so SQS's queue-name alphabet applies. */
export const host = z
  .string()
  .min(1)
  .max(FIELD_LIMITS.host)
  .regex(/^[A-Za-z0-9_-]+$/, "may contain only letters, digits, '_' and '-'");

export const protocol = z.enum(["tcp", "udp"]);

export const port = z.int().min(1).max(65_535);

export const helperName = z
  .string()
  .min(1)
  .max(FIELD_LIMITS.helperName)
  .regex(/^[A-Za-z0-9.-]+$/, "is not a helper name");

export const revision = z.int().min(0).max(Number.MAX_SAFE_INTEGER);

export const correlationId = z
  .string()
  .min(1)
  .max(FIELD_LIMITS.correlationId)
  .regex(/^[A-Za-z0-9_.:-]+$/, "may contain only letters, digits and '_.:-'");

export const notificationEvent = z.enum(["created", "updated", "deleted"]);
