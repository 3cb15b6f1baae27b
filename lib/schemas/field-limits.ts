/**
 * Field length caps, a leaf module: the schemas (primitives.ts) and the AWS size bounds (lib/aws/limits.ts)
 * both need them, and lib/config.ts (which re-exports them) checks settings with those bounds, so they must
 * not come from config.ts itself (an import cycle that evaluates primitives.ts before config.ts).
 */

/** Field length caps: every string that crosses a trust boundary is bounded. */
export const FIELD_LIMITS = {
  projectId: 64,
  host: 48,
  helperName: 32,
  correlationId: 128,
  idempotencyKey: 128,
  errorMessage: 512,
} as const;

/** A network node's name names its SQS queues, so SQS's queue-name alphabet applies (primitives.host). */
export const HOST_ALPHABET = /^[A-Za-z0-9_-]+$/;
