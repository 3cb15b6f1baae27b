import { describe, expect, it } from "vitest";
import { correlationIdFrom, normalizeEvent } from "../../lib/http/api-event.ts";
import { base64DecodedLength, securityHeaders } from "../../lib/http/middlewares.ts";
import { httpApiClaims, httpApiEvent, restApiEvent } from "../support/events.ts";

describe("base64DecodedLength", () => {
  it.each(["", "a", "ab", "abc", "abcd", "x".repeat(1000), "é€"])(
    "matches the decoded size of %j",
    (text) => {
      const encoded = Buffer.from(text, "utf8").toString("base64");
      expect(base64DecodedLength(encoded)).toBe(Buffer.byteLength(text, "utf8"));
    },
  );
});

describe("correlationIdFrom", () => {
  it("keeps a safe request id", () => {
    expect(correlationIdFrom("e56434a3-0b5d-453c-9183-f07a5e91fbb3", () => "x")).toBe(
      "e56434a3-0b5d-453c-9183-f07a5e91fbb3",
    );
  });

  it("replaces characters a snapshot's correlation id may not carry", () => {
    expect(correlationIdFrom("req=1", () => "x")).toBe("req-1");
  });

  it("falls back when there is no request id", () => {
    expect(correlationIdFrom(undefined, () => "fresh")).toBe("fresh");
  });

  it("bounds the length", () => {
    expect(correlationIdFrom("a".repeat(500), () => "x")).toHaveLength(128);
  });
});

describe("normalizeEvent", () => {
  const claims = httpApiClaims("p1", ["admin"]);

  it("reads method, path, headers and JWT claims from an HTTP API (v2) event", () => {
    const request = normalizeEvent(
      httpApiEvent({
        method: "GET",
        path: "/v1/routers/x/conntrack-helpers",
        claims,
        headers: { "X-Test": "1" },
      }),
      "cid",
    );
    expect(request).toMatchObject({ method: "GET", path: "/v1/routers/x/conntrack-helpers", claims });
    expect(request.headers["x-test"]).toBe("1");
  });

  it("reads method, path and claims from a REST API (v1) event", () => {
    const request = normalizeEvent(restApiEvent({ method: "DELETE", path: "/v1/routers/x", claims }), "cid");
    expect(request).toMatchObject({ method: "DELETE", path: "/v1/routers/x", claims });
    expect(request.headers["user-agent"]).toBe("HTTPie/3.2.2");
  });

  it("drops a named stage from an HTTP API path", () => {
    const event = httpApiEvent({ method: "GET", path: "/prod/v1/routers/x/conntrack-helpers", claims });
    const staged = { ...event, requestContext: { ...event.requestContext, stage: "prod" } };
    expect(normalizeEvent(staged, "cid").path).toBe("/v1/routers/x/conntrack-helpers");
  });

  it("has no claims when the authorizer is absent", () => {
    expect(
      normalizeEvent(httpApiEvent({ method: "GET", path: "/", claims: undefined }), "cid").claims,
    ).toBeUndefined();
  });
});

describe("securityHeaders (@middy/http-security-headers' values, in lowercase)", () => {
  const apply = (phase: "after" | "onError", correlationId?: string) => {
    const request = {
      response: {
        statusCode: 200,
        headers: { "content-type": "application/json; charset=utf-8" } as Record<string, string>,
      },
      context: correlationId ? { cth: { request: { correlationId } } } : {},
    };
    (securityHeaders()[phase] as (r: unknown) => void)(request);
    return request.response.headers;
  };

  it("sets exactly the JSON API's set, beside the response's own headers and the correlation id", () => {
    expect(apply("after", "req-1")).toEqual({
      "content-type": "application/json; charset=utf-8",
      "cache-control": "no-store",
      "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
      "referrer-policy": "no-referrer",
      "strict-transport-security": "max-age=63072000; includeSubDomains",
      "x-content-type-options": "nosniff",
      "x-frame-options": "DENY",
      "x-correlation-id": "req-1",
    });
  });

  it("sets them on error responses too, and no correlation id when none was assigned", () => {
    const headers = apply("onError");
    expect(headers["x-content-type-options"]).toBe("nosniff");
    expect(headers).not.toHaveProperty("x-correlation-id");
  });
});
