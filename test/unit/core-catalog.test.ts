/** The kernel helper catalog and the operator's narrowing of it (CTH_ALLOWED_HELPERS). */
import { describe, expect, it } from "vitest";
import { HelperCatalog } from "../../lib/catalog.ts";
import { DEFAULT_LIMITS, loadCatalog } from "../../lib/config.ts";
import { ValidationError } from "../../lib/errors.ts";
import { buildSchemas, parseNotificationBody } from "../../lib/schemas/index.ts";
import { newId } from "../support/factories.ts";

const body = (helper: string, protocol: "tcp" | "udp", port: number) => ({
  event: "created",
  conntrack_helpers: [{ id: newId(), router_id: newId(), protocol, port, helper }],
});

describe("helper catalog", () => {
  it("knows the kernel's helpers with their protocols and families", () => {
    const catalog = new HelperCatalog();
    expect(catalog.resolve("ftp", "tcp")).toBe("ftp");
    expect(catalog.resolve("ftp", "udp")).toBeUndefined();
    expect(catalog.resolve("amanda", "tcp")).toBeUndefined();
    expect(catalog.resolve("amanda", "udp")).toBe("amanda");
    expect(catalog.families("irc")).toEqual(["ipv4"]);
    expect(catalog.families("sip")).toEqual(["ipv4", "ipv6"]);
  });

  it("resolves Neutron's h323 per protocol, and only to what the operator allows", () => {
    expect(new HelperCatalog().resolve("h323", "udp")).toBe("RAS");
    expect(new HelperCatalog().resolve("h323", "tcp")).toBe("Q.931");
    const rasOnly = loadCatalog({ CTH_ALLOWED_HELPERS: "RAS" });
    expect(rasOnly.resolve("h323", "udp")).toBe("RAS");
    expect(rasOnly.resolve("h323", "tcp")).toBeUndefined();
  });

  it("narrowed by CTH_ALLOWED_HELPERS, refuses the others with 422 and the field path", () => {
    const schemas = buildSchemas(DEFAULT_LIMITS, loadCatalog({ CTH_ALLOWED_HELPERS: " tftp , sip" }));
    expect(parseNotificationBody(schemas, body("tftp", "udp", 69)).conntrack_helpers[0]?.helper).toBe("tftp");
    let refused: unknown;
    try {
      parseNotificationBody(schemas, body("ftp", "tcp", 21));
    } catch (error) {
      refused = error;
    }
    expect(refused).toBeInstanceOf(ValidationError);
    expect((refused as ValidationError).status).toBe(422);
    expect(JSON.stringify((refused as ValidationError).details)).toContain("conntrack_helpers.0.helper");
    expect(JSON.stringify((refused as ValidationError).details)).toContain("allowed: tftp, sip");
  });

  it("refuses at start a narrowing that names a helper the kernel catalog lacks", () => {
    expect(() => loadCatalog({ CTH_ALLOWED_HELPERS: "ftp,h323x" })).toThrow(
      /"h323x" is not in the kernel catalog/,
    );
  });

  it("an empty narrowing means the whole catalog", () => {
    expect(loadCatalog({ CTH_ALLOWED_HELPERS: "" }).names()).toEqual(new HelperCatalog().names());
  });
});
