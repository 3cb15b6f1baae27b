/**
 * The one reader of configuration values, for the functions (lib/config.ts), the agent (agent/cli.ts) and
 * the local stack (scripts/local/stack.ts): the same spelling means the same thing everywhere, and a value
 * that does not parse is an error naming its setting, never a silent default (an agent that read `on` or a
 * typo as "off" was the reason for this module).
 */

export type Env = Readonly<Record<string, string | undefined>>;

/** A value that does not parse; `setting` names the flag and variable it came from. */
export class SettingError extends Error {
  override readonly name = "SettingError";
  constructor(
    readonly setting: string,
    message: string,
  ) {
    super(`${setting} ${message}`);
  }
}

const TRUE = ["1", "true", "yes", "on"];
const FALSE = ["0", "false", "no", "off"];

/** The raw value, `undefined` when absent or empty (an empty variable is an unset one). */
export function raw(env: Env, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value === "" ? undefined : value;
}

/** 1, true, yes, on / 0, false, no, off (any case); anything else is an error. */
export function booleanSetting(value: string | undefined, setting: string, fallback: boolean): boolean {
  if (value === undefined || value.trim() === "") return fallback;
  const word = value.trim().toLowerCase();
  if (TRUE.includes(word)) return true;
  if (FALSE.includes(word)) return false;
  throw new SettingError(setting, `must be one of ${[...TRUE, ...FALSE].join(", ")}, got "${value}"`);
}

/** A whole number in [min, max]. */
export function integerSetting(
  value: string | undefined,
  setting: string,
  fallback: number,
  min = 1,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (value === undefined || value.trim() === "") return fallback;
  const number = Number(value.trim());
  if (!/^-?\d+$/.test(value.trim()) || !Number.isSafeInteger(number) || number < min || number > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
    throw new SettingError(setting, `must be an integer ${range}, got "${value}"`);
  }
  return number;
}

/** One of `choices`. */
export function choiceSetting<T extends string>(
  value: string | undefined,
  setting: string,
  choices: readonly T[],
  fallback: T,
): T {
  if (value === undefined || value.trim() === "") return fallback;
  const choice = value.trim();
  if (!(choices as readonly string[]).includes(choice)) {
    throw new SettingError(setting, `must be one of ${choices.join(", ")}, got "${value}"`);
  }
  return choice as T;
}

/** Comma-separated, trimmed, empty items dropped. */
export function listSetting(value: string | undefined): string[] {
  return (value ?? "")
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item.length > 0);
}
