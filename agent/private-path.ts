/** Start-up checks on the node's own files: what others could write, they could use to steer the agent. */
import { type Stats, statSync } from "node:fs";

/** A start-up refusal caused by the node's own files (the CLI exits 2, as for a bad flag). */
export class AgentSetupError extends Error {
  override readonly name = "AgentSetupError";
}

/** Refuses a path that others could write to, or that belongs to another user (root may own it). */
export function assertPrivatePath(path: string, what: string, allowRoot: boolean): void {
  let stats: Stats;
  try {
    stats = statSync(path);
  } catch (error) {
    throw new AgentSetupError(`${what} ${path} is not readable: ${(error as Error).message}`);
  }
  const uid = process.getuid?.();
  if (uid !== undefined && stats.uid !== uid && !(allowRoot && stats.uid === 0)) {
    throw new AgentSetupError(`${what} ${path} is owned by uid ${stats.uid}, not by this agent (uid ${uid})`);
  }
  if ((stats.mode & 0o022) !== 0) {
    throw new AgentSetupError(
      `${what} ${path} is group- or world-writable (mode ${(stats.mode & 0o7777).toString(8).padStart(4, "0")})`,
    );
  }
}
