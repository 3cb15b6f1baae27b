/** Importing a function module must not read the environment or build clients: cold starts and tests rely on it. */
import { afterEach, describe, expect, it, vi } from "vitest";

describe("function modules", () => {
  afterEach(() => {
    vi.unstubAllEnvs();
    vi.resetModules();
  });

  it.each([
    "../../functions/http.ts",
    "../../functions/events.ts",
    "../../functions/status.ts",
    "../../functions/reconcile.ts",
  ])("%s imports cleanly with an invalid environment and reads it only on first invocation", async (path) => {
    vi.stubEnv("CTH_MAX_BODY_BYTES", "not-a-number");
    const module = (await import(path)) as {
      handler: (event: unknown, context: unknown) => Promise<unknown>;
    };
    expect(typeof module.handler).toBe("function");
    await expect(module.handler({}, {})).rejects.toThrow("CTH_MAX_BODY_BYTES must be an integer >= 1");
  });
});
