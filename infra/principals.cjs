// Principal lists in deploy params (event publishers, the agents' trust): comma-separated entries, each
// `self` (this account), a 12-digit account or an IAM principal ARN (root, role, user), or just `none` (the
// CLI cannot pass an empty param). Shared by
// infra/publishers.cjs and infra/nodes.cjs so that both params read the same way.
"use strict";

const ACCOUNT = /^\d{12}$/;
const PRINCIPAL_ARN =
  /^arn:aws[a-z-]*:iam::(\d{12}):(root|role\/[\w+=,.@/-]{1,512}|user\/[\w+=,.@/-]{1,512})$/;
// biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
const OWN_ROOT = { "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root" };
const OWN_ACCOUNT = { Ref: "AWS::AccountId" };

/**
 * Each entry as { principal, account, arn? }: `principal` for a policy's Principal, `account` the account
 * it belongs to, `arn` set only for a single principal (not a whole account). Throws on anything else.
 */
function parsePrincipals(raw, param) {
  if (String(raw ?? "").trim() === "none") return [];
  return String(raw ?? "")
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item.length > 0)
    .map((item) => {
      if (item === "self") return { principal: OWN_ROOT, account: OWN_ACCOUNT, whole: true };
      if (ACCOUNT.test(item)) {
        return {
          principal: { "Fn::Sub": `arn:\${AWS::Partition}:iam::${item}:root` },
          account: item,
          whole: true,
        };
      }
      const arn = PRINCIPAL_ARN.exec(item);
      if (arn) {
        // An account's root ARN means the whole account, as it does in a Principal element.
        return { principal: item, account: arn[1], whole: arn[2] === "root", arn: item };
      }
      throw new Error(
        `${param} entry "${item}" is neither "self", a 12-digit account nor an IAM principal ARN ("none" alone for nobody)`,
      );
    });
}

/** Distinct accounts of the entries, comma-joined (a CloudFormation value); "none" when there are none. */
function accountList(entries) {
  const seen = new Set();
  const accounts = [];
  for (const { account } of entries) {
    const key = JSON.stringify(account);
    if (seen.has(key)) continue;
    seen.add(key);
    accounts.push(account);
  }
  return accounts.length === 0 ? "none" : { "Fn::Join": [",", accounts] };
}

module.exports = { parsePrincipals, accountList, OWN_ROOT };
