import { defineConfig } from "vitest/config";

// `npm run soak`: long load and fault runs (minutes), kept out of `npm test`.
export default defineConfig({
  test: {
    include: ["test/soak/**/*.test.ts"],
    testTimeout: 900_000,
    hookTimeout: 300_000,
    // One file at a time: each drives the kernel and the whole machine hard.
    maxWorkers: 1,
    reporters: ["default"],
  },
});
