import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  identityFromClaims,
  isAdmin,
  isService,
  powersFromScope,
  scopeFor,
} from "../../lib/domain/identity.ts";
import { UnauthorizedError } from "../../lib/errors.ts";

const project = "0f2c4a6e8b1d3f5a7c9e0b2d4f6a8c1e";
const powersOf = (claims: Record<string, unknown>) =>
  [...identityFromClaims({ project_id: project, ...claims }).roles].sort();

/** What API Gateway's HTTP API hands the function for an array claim (apigw-http-jwt.json, fixtures README). */
const flattened = (items: readonly string[]) => `[${items.join(" ")}]`;

describe("identityFromClaims: powers come from the scope string only", () => {
  it("reads cth:admin and cth:service out of a space-delimited scope string", () => {
    expect(powersOf({ scope: "openid cth:admin" })).toEqual(["admin"]);
    expect(powersOf({ scope: "cth:service" })).toEqual(["service"]);
    expect(powersOf({ scope: "cth:service profile cth:admin" })).toEqual(["admin", "service"]);
  });

  it("treats a token without scope as a plain project member", () => {
    const identity = identityFromClaims({ project_id: project });
    expect(identity).toEqual({ projectId: project, roles: new Set() });
    expect(isAdmin(identity) || isService(identity)).toBe(false);
  });

  // Finding 4: "[cloud admin]" used to be split into cloud and admin. The flattened form cannot tell
  // ["x cth:admin"] from ["x","cth:admin"], so it never grants anything, in any claim.
  it.each([
    ["a role with a space, flattened", { roles: flattened(["cloud admin"]) }],
    ["the old roles claim, flattened", { roles: "[admin service]" }],
    ["the old roles claim as a plain word", { roles: "admin" }],
    ["the old roles claim as a real array", { roles: ["admin", "service"] }],
    ["a scope array element with a space, flattened", { scope: flattened(["x cth:admin"]) }],
    ["a scope array, flattened", { scope: flattened(["x", "cth:admin"]) }],
    ["a one-element scope array, flattened", { scope: flattened(["cth:admin"]) }],
    ["a scope array padded inside brackets", { scope: "[ cth:admin ]" }],
    ["a scope token between brackets mid-string", { scope: "x [y cth:admin z]" }],
    ["a real scope array", { scope: ["cth:admin"] }],
    ["a real scope array with a whitespace element", { scope: ["x cth:admin"] }],
    ["a scope object", { scope: { "cth:admin": true } }],
    ["a numeric scope", { scope: 1 }],
    ["scp instead of scope", { scp: "cth:admin" }],
    ["scp as an array", { scp: ["cth:admin"] }],
    ["groups", { groups: "[cth:admin]" }],
    ["a substring", { scope: "cth:administrator not-cth:admin cth:admins x-cth:service" }],
    ["another case", { scope: "CTH:ADMIN Cth:Service" }],
    ["the bare role words", { scope: "admin service" }],
    ["a tab separator", { scope: "x\tcth:admin" }],
    ["a newline separator", { scope: "x\ncth:admin" }],
    ["two spaces", { scope: "x  cth:admin" }],
    ["a leading space", { scope: " cth:admin" }],
    ["a trailing NUL", { scope: "cth:admin\u0000" }],
    ["a quote", { scope: '"cth:admin"' }],
    ["a comma list", { scope: "x,cth:admin" }],
    ["a JSON array in a string", { scope: '["cth:admin"]' }],
    ["an oversize scope", { scope: `${"x".repeat(4096)} cth:admin` }],
  ])("grants nothing for %s", (_what, claims) => {
    const identity = identityFromClaims({ project_id: project, ...claims });
    expect(isAdmin(identity)).toBe(false);
    expect(isService(identity)).toBe(false);
    expect(identity.roles.size).toBe(0);
  });

  it("never reads a scope inherited through an own __proto__ claim", () => {
    const claims = JSON.parse(`{"project_id":"${project}","__proto__":{"scope":"cth:admin"}}`) as object;
    expect(identityFromClaims(claims).roles.size).toBe(0);
  });

  it("reads the REST API (v1) claims form the same way", () => {
    const rest = JSON.parse(
      readFileSync(new URL("../fixtures/aws-events/apigw-rest-jwt.json", import.meta.url), "utf8"),
    ) as { requestContext: { authorizer: { claims: Record<string, string> } } };
    const claims = { ...rest.requestContext.authorizer.claims, project_id: project, scope: "cth:admin" };
    const identity = identityFromClaims(claims);
    expect(isAdmin(identity)).toBe(true);
    expect(identity.subject).toBe("d2f50444-0041-7036-aea2-a955fca33d37");
  });

  it("keeps a usable sub as the subject and drops an unusable one", () => {
    expect(identityFromClaims({ project_id: project, sub: "user-1" }).subject).toBe("user-1");
    for (const sub of ["", "a b", 7, "x".repeat(256), ["u"]])
      expect(identityFromClaims({ project_id: project, sub }).subject).toBeUndefined();
  });

  it("scopeFor emits what powersFromScope reads", () => {
    expect(scopeFor(["service", "admin"])).toBe("cth:admin cth:service");
    expect([...powersFromScope(scopeFor(["admin", "service"]))].sort()).toEqual(["admin", "service"]);
    expect(scopeFor([])).toBe("");
  });

  it.each([
    ["no claims", undefined],
    ["claims that are a string", "project_id=x"],
    ["claims that are an array", [project]],
    ["no project_id", { scope: "cth:admin" }],
    ["an empty project_id", { project_id: "" }],
    ["a project_id with shell characters", { project_id: "p;rm -rf" }],
    ["a numeric project_id", { project_id: 42 }],
    ["a flattened project_id array", { project_id: `[${project}]` }],
  ])("refuses %s with 401", (_what, claims) => {
    expect(() => identityFromClaims(claims)).toThrow(UnauthorizedError);
  });
});
