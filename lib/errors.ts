/**
 * One error hierarchy. Each error knows its HTTP status, a stable machine code and whether its message may
 * be shown to the caller. Only lib/http/errors middleware turns these into responses.
 */
export interface FieldIssue {
  /** Dotted path into the request body, e.g. "conntrack_helpers.3.port". */
  readonly path: string;
  readonly message: string;
}

export abstract class AppError extends Error {
  abstract readonly status: number;
  abstract readonly code: string;
  /** Whether `message` and `details` are safe to return to the caller. */
  readonly expose: boolean = true;
  readonly details: unknown;
  /** Response headers the error carries (a 412's current ETag); the error middleware adds them. */
  readonly headers: Readonly<Record<string, string>> = {};

  constructor(message: string, details?: unknown, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.details = details;
  }
}

export class BadRequestError extends AppError {
  readonly status = 400;
  readonly code = "bad_request";
}

export class ValidationError extends AppError {
  readonly status = 422;
  readonly code = "validation_failed";
  declare readonly details: readonly FieldIssue[];
  constructor(message: string, issues: readonly FieldIssue[]) {
    super(message, issues);
  }
}

export class UnauthorizedError extends AppError {
  readonly status = 401;
  readonly code = "unauthorized";
}

export class ForbiddenError extends AppError {
  readonly status = 403;
  readonly code = "forbidden";
}

/** Unknown and foreign routers must be indistinguishable: always build this through `routerNotFound`. */
export class NotFoundError extends AppError {
  readonly status = 404;
  readonly code = "not_found";
}

export const routerNotFound = (routerId: string): NotFoundError =>
  new NotFoundError(`router ${routerId} not found`);

export class ConflictError extends AppError {
  readonly status = 409;
  readonly code = "conflict";
}

/** If-Match did not admit the router's current state; `etag` is that state's tag (absent: no router). */
export class PreconditionFailedError extends AppError {
  readonly status = 412;
  readonly code = "precondition_failed";
  override readonly headers: Readonly<Record<string, string>>;
  constructor(message: string, etag: string | undefined) {
    super(message);
    this.headers = etag === undefined ? {} : { etag };
  }
}

export class PayloadTooLargeError extends AppError {
  readonly status = 413;
  readonly code = "payload_too_large";
}

export class UnsupportedMediaTypeError extends AppError {
  readonly status = 415;
  readonly code = "unsupported_media_type";
}

/** A dependency failed after retries; the caller may retry (with the same Idempotency-Key). */
export class ServiceUnavailableError extends AppError {
  readonly status = 503;
  readonly code = "service_unavailable";
}

/** Optimistic concurrency lost the race; retried internally, surfaces only as 503 once retries run out. */
export class RevisionConflictError extends AppError {
  readonly status = 503;
  readonly code = "service_unavailable";
  override readonly expose = false;
}

export class InternalError extends AppError {
  readonly status = 500;
  readonly code = "internal_error";
  override readonly expose = false;
}

export function isAppError(error: unknown): error is AppError {
  return error instanceof AppError;
}
