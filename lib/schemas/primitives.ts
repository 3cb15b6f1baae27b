// zod/mini: the same validation as classic zod at a quarter of the bundle (function cold starts).
import * as z from "zod/mini";
import { FIELD_LIMITS, HOST_ALPHABET } from "./field-limits.ts";
import "./locale.ts";

/** Canonical lowercase UUID (RFC 9562 layout). Mixed case is rejected so one router has exactly one id. */
export const uuid = z
  .string()
  .check(
    z.maxLength(36),
    z.regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, "must be a lowercase UUID"),
  );

/** Keystone project ids are 32 hex characters; other deployments use names. Never anything iptables could parse. */
export const projectId = z
  .string()
  .check(
    z.minLength(1),
    z.maxLength(FIELD_LIMITS.projectId),
    z.regex(/^[A-Za-z0-9_-]+$/, "may contain only letters, digits, '_' and '-'"),
  );

/** A network node's name; it also names the node's SQS queue, so SQS's queue-name alphabet applies. */
export const host = z
  .string()
  .check(
    z.minLength(1),
    z.maxLength(FIELD_LIMITS.host),
    z.regex(HOST_ALPHABET, "may contain only letters, digits, '_' and '-'"),
  );

export const protocol = z.enum(["tcp", "udp"]);

export const port = z.int().check(z.gte(1), z.lte(65_535));

export const helperName = z
  .string()
  .check(
    z.minLength(1),
    z.maxLength(FIELD_LIMITS.helperName),
    z.regex(/^[A-Za-z0-9.-]+$/, "is not a helper name"),
  );

export const revision = z.int().check(z.gte(0), z.lte(Number.MAX_SAFE_INTEGER));

export const correlationId = z
  .string()
  .check(
    z.minLength(1),
    z.maxLength(FIELD_LIMITS.correlationId),
    z.regex(/^[A-Za-z0-9_.:-]+$/, "may contain only letters, digits and '_.:-'"),
  );

export const notificationEvent = z.enum(["created", "updated", "deleted"]);

/** A bounded string (free text such as error messages). */
export const text = (min: number, max: number) => z.string().check(z.minLength(min), z.maxLength(max));

/** A bounded array. */
export const list = <T extends z.ZodMiniType>(item: T, min: number, max: number) =>
  z.array(item).check(z.minLength(min), z.maxLength(max));
