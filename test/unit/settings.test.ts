/** lib/settings.ts: one reading of configuration values for functions, agent and local stack. */
import { describe, expect, it } from "vitest";
import {
  booleanSetting,
  choiceSetting,
  integerSetting,
  listSetting,
  raw,
  SettingError,
} from "../../lib/settings.ts";

describe("settings", () => {
  it("reads booleans in one vocabulary, any case", () => {
    for (const word of ["1", "true", "YES", "on"]) expect(booleanSetting(word, "X", false)).toBe(true);
    for (const word of ["0", "False", "no", "OFF"]) expect(booleanSetting(word, "X", true)).toBe(false);
    expect(booleanSetting(undefined, "X", true)).toBe(true);
    expect(booleanSetting("", "X", false)).toBe(false);
  });

  it("refuses a boolean it does not know, naming the setting and the value", () => {
    expect(() => booleanSetting("maybe", "CTH_X", false)).toThrow(SettingError);
    expect(() => booleanSetting("maybe", "CTH_X", false)).toThrow(/^CTH_X must be one of .* got "maybe"$/);
  });

  it("reads integers within bounds and refuses the rest", () => {
    expect(integerSetting("42", "N", 1)).toBe(42);
    expect(integerSetting(undefined, "N", 7)).toBe(7);
    expect(() => integerSetting("0", "N", 1, 1)).toThrow(/N must be an integer >= 1, got "0"/);
    expect(() => integerSetting("70000", "PORT", 1, 0, 65_535)).toThrow(/from 0 to 65535/);
    for (const bad of ["1.5", "1e3", "x", "0x10"])
      expect(() => integerSetting(bad, "N", 1)).toThrow(/N must be/);
  });

  it("reads one of a set of choices", () => {
    expect(choiceSetting("nftables", "B", ["iptables", "nftables"] as const, "iptables")).toBe("nftables");
    expect(choiceSetting(undefined, "B", ["iptables", "nftables"] as const, "iptables")).toBe("iptables");
    expect(() => choiceSetting("nft", "B", ["iptables", "nftables"] as const, "iptables")).toThrow(
      /B must be one of iptables, nftables, got "nft"/,
    );
  });

  it("treats an empty variable as unset and splits lists", () => {
    expect(raw({ A: "" }, "A")).toBeUndefined();
    expect(raw({ A: "v" }, "A")).toBe("v");
    expect(listSetting(" a, ,b ,")).toEqual(["a", "b"]);
  });
});
