/**
 * The one reader of configuration values, for the functions (lib/config.ts), the agent (agent/cli.ts) and
 * the local stack (scripts/local/stack.ts): the same spelling means the same thing everywhere, and a value
 * that does not parse is an error naming its setting, never a silent default (an agent that read `on` or a
 * typo as "off" was the reason for this module).
 *
 * Every reader takes the raw value (a flag's, else its variable's: see `raw`) and `setting`, the name an
 * error gives: the variable, or `--flag (VARIABLE)` when a flag can set it too. Absent and empty are the same.
 */
// cspell:words stringbool
import * as z from "zod";

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

export const TRUE_WORDS = ["1", "true", "yes", "on"];
export const FALSE_WORDS = ["0", "false", "no", "off"];
const BOOLEAN = z.stringbool({ truthy: TRUE_WORDS, falsy: FALSE_WORDS, case: "insensitive" });
/** Digits only (no 1e3, 0x10, 1.0 or blanks inside), then the number's bounds. */
const integer = (min: number, max: number) =>
  z
    .string()
    .regex(/^-?\d+$/)
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));

/** The string reader: the raw value, `undefined` when absent or empty (an empty variable is an unset one). */
export function raw(env: Env, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value === "" ? undefined : value;
}

/** `--flag (VARIABLE)`: how an error names a setting a flag and a variable both give. */
export function settingLabel(flag: string, variable?: string): string {
  return variable ? `--${flag} (${variable})` : `--${flag}`;
}

/** `fallback` when absent or blank; else the schema's reading of the trimmed value, or a SettingError. */
function read<T>(
  value: string | undefined,
  setting: string,
  fallback: T,
  schema: z.ZodType<T>,
  expected: string,
): T {
  if (value === undefined || value.trim() === "") return fallback;
  const parsed = schema.safeParse(value.trim());
  if (!parsed.success) throw new SettingError(setting, `must be ${expected}, got "${value}"`);
  return parsed.data;
}

/** 1, true, yes, on / 0, false, no, off (any case); anything else is an error. */
export function booleanSetting(value: string | undefined, setting: string, fallback: boolean): boolean {
  return read(value, setting, fallback, BOOLEAN, `one of ${[...TRUE_WORDS, ...FALSE_WORDS].join(", ")}`);
}

/** A whole number in [min, max]. */
export function integerSetting(
  value: string | undefined,
  setting: string,
  fallback: number,
  min = 1,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
  return read(value, setting, fallback, integer(min, max), `an integer ${range}`);
}

/** A TCP port (0: any free one), or `off` (any case) for none: `undefined`. */
export function portSetting(
  value: string | undefined,
  setting: string,
  fallback: number | undefined,
): number | undefined {
  const off = z
    .string()
    .regex(/^off$/i)
    .transform(() => undefined);
  return read(
    value,
    setting,
    fallback,
    z.union([off, integer(0, 65_535)]),
    `a port from 0 to 65535 or "off"`,
  );
}

/** One of `choices` (exact spelling). */
export function choiceSetting<const T extends string>(
  value: string | undefined,
  setting: string,
  choices: readonly T[],
  fallback: T,
): T {
  return read(value, setting, fallback, z.enum(choices as [T, ...T[]]), `one of ${choices.join(", ")}`);
}

/** Comma-separated, trimmed, empty items dropped. */
export function listSetting(value: string | undefined): string[] {
  return (value ?? "")
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item.length > 0);
}
