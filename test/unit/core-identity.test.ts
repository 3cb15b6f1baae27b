import { describe, expect, it } from "vitest";
import { identityFromClaims, isAdmin, isService } from "../../lib/domain/identity.ts";
import { UnauthorizedError } from "../../lib/errors.ts";

const project = "0f2c4a6e8b1d3f5a7c9e0b2d4f6a8c1e";
const rolesOf = (roles: unknown) => [...identityFromClaims({ project_id: project, roles }).roles].sort();

describe("identityFromClaims", () => {
  it("reads HTTP API's bracketed, space-separated array claim", () => {
    expect(rolesOf("[admin service]")).toEqual(["admin", "service"]);
  });

  it("reads a real array", () => {
    expect(rolesOf(["service"])).toEqual(["service"]);
  });

  it("reads comma- and space-separated strings", () => {
    expect(rolesOf("admin,service")).toEqual(["admin", "service"]);
    expect(rolesOf("admin service")).toEqual(["admin", "service"]);
  });

  it("reads a JSON array serialized into the claim", () => {
    expect(rolesOf('["admin","member"]')).toEqual(["admin", "member"]);
  });

  it("treats a token without roles as a plain project member", () => {
    const identity = identityFromClaims({ project_id: project });
    expect(identity).toEqual({ projectId: project, roles: new Set() });
    expect(isAdmin(identity) || isService(identity)).toBe(false);
  });

  it("never grants a role from a substring", () => {
    const identity = identityFromClaims({
      project_id: project,
      roles: "[superadmin service-admin not-service]",
    });
    expect(isAdmin(identity)).toBe(false);
    expect(isService(identity)).toBe(false);
  });

  it("matches role names exactly, case included", () => {
    expect(isAdmin(identityFromClaims({ project_id: project, roles: "[Admin]" }))).toBe(false);
  });

  it.each([
    ["no claims", undefined],
    ["claims that are a string", "project_id=x"],
    ["claims that are an array", [project]],
    ["no project_id", { roles: "[admin]" }],
    ["an empty project_id", { project_id: "" }],
    ["a project_id with shell characters", { project_id: "p;rm -rf" }],
    ["a numeric project_id", { project_id: 42 }],
    ["an unterminated role list", { project_id: project, roles: "[admin service" }],
    ["nested brackets", { project_id: project, roles: "[[admin]]" }],
    ["a roles object", { project_id: project, roles: { admin: true } }],
    ["a non-string role in an array", { project_id: project, roles: ["admin", 1] }],
    ["a JSON roles value that is not an array", { project_id: project, roles: '["admin"' }],
    ["too many roles", { project_id: project, roles: Array.from({ length: 33 }, (_, i) => `r${i}`) }],
  ])("refuses %s with 401", (_what, claims) => {
    expect(() => identityFromClaims(claims)).toThrow(UnauthorizedError);
  });
});
