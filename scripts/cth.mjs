#!/usr/bin/env node
// The `cth` bin: loads the TypeScript CLI through tsx's loader, so an installed package runs without a build.
import { register } from "tsx/esm/api";

register();
const { run } = await import("./cth.ts");
await run();
