/** lib/settings.ts: one reading of configuration values for functions, agent and local stack. */
import { describe, expect, it } from "vitest";
import {
  booleanSetting,
  choiceSetting,
  integerSetting,
  listSetting,
  portSetting,
  raw,
  SettingError,
  settingLabel,
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
    for (const bad of ["y", "enabled", "2", "tru", "o n"]) {
      expect(() => booleanSetting(bad, "CTH_X", false)).toThrow(
        `CTH_X must be one of 1, true, yes, on, 0, false, no, off, got "${bad}"`,
      );
    }
  });

  it("names the flag and the variable when both can give a value", () => {
    const setting = settingLabel("create-namespaces", "CTH_AGENT_CREATE_NAMESPACES");
    expect(setting).toBe("--create-namespaces (CTH_AGENT_CREATE_NAMESPACES)");
    expect(settingLabel("help")).toBe("--help");
    let error: unknown;
    try {
      booleanSetting("sure", setting, false);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(SettingError);
    expect((error as SettingError).setting).toBe(setting);
    expect((error as SettingError).message).toMatch(
      /^--create-namespaces \(CTH_AGENT_CREATE_NAMESPACES\) must be/,
    );
  });

  it("reads integers within bounds and refuses the rest", () => {
    expect(integerSetting("42", "N", 1)).toBe(42);
    expect(integerSetting(undefined, "N", 7)).toBe(7);
    expect(() => integerSetting("0", "N", 1, 1)).toThrow(/N must be an integer >= 1, got "0"/);
    expect(() => integerSetting("70000", "PORT", 1, 0, 65_535)).toThrow(/from 0 to 65535/);
    expect(() => integerSetting("-1", "N", 1, 0)).toThrow(/N must be an integer >= 0, got "-1"/);
    expect(() => integerSetting("9007199254740993", "N", 1)).toThrow(/N must be an integer >= 1/);
    for (const bad of ["1.5", "1e3", "x", "0x10", "1 0", "+1"])
      expect(() => integerSetting(bad, "N", 1)).toThrow(`N must be an integer >= 1, got "${bad}"`);
    expect(integerSetting(" 8 ", "N", 1)).toBe(8);
  });

  it("reads a port or off, refusing the rest", () => {
    expect(portSetting("0", "P", 9469)).toBe(0);
    expect(portSetting("65535", "P", 9469)).toBe(65_535);
    expect(portSetting("off", "P", 9469)).toBeUndefined();
    expect(portSetting("OFF", "P", 9469)).toBeUndefined();
    expect(portSetting(undefined, "P", 9469)).toBe(9469);
    for (const bad of ["65536", "-1", "of", "no", "http"]) {
      expect(() => portSetting(bad, "P", 9469)).toThrow(
        `P must be a port from 0 to 65535 or "off", got "${bad}"`,
      );
    }
  });

  it("reads one of a set of choices", () => {
    expect(choiceSetting("nftables", "B", ["iptables", "nftables"] as const, "iptables")).toBe("nftables");
    expect(choiceSetting(undefined, "B", ["iptables", "nftables"] as const, "iptables")).toBe("iptables");
    expect(() => choiceSetting("nft", "B", ["iptables", "nftables"] as const, "iptables")).toThrow(
      /B must be one of iptables, nftables, got "nft"/,
    );
    // Exact spelling: a choice names a program or a mode, not a word of the boolean vocabulary.
    expect(() => choiceSetting("IPTABLES", "B", ["iptables"] as const, "iptables")).toThrow(SettingError);
  });

  it("treats an empty variable as unset and splits lists", () => {
    expect(raw({ A: "" }, "A")).toBeUndefined();
    expect(raw({ A: "v" }, "A")).toBe("v");
    expect(listSetting(" a, ,b ,")).toEqual(["a", "b"]);
  });
});
