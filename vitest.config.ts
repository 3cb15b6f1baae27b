import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    exclude: ["test/soak/**", "node_modules/**"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Kernel tests share the host's netns machinery; emulators bind loopback ports. Two cores: two workers.
    maxWorkers: 2,
    reporters: ["default"],
  },
});
