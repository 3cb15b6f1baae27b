// The event bus resource policy from the `eventPublishers` param (comma-separated 12-digit accounts or IAM
// principal ARNs). CloudFormation cannot turn an optional list into principals, so this small resolver does.
"use strict";

const ACCOUNT = /^\d{12}$/;
const PRINCIPAL_ARN = /^arn:aws[a-z-]*:iam::\d{12}:(root|role\/[\w+=,.@/-]{1,512}|user\/[\w+=,.@/-]{1,512})$/;
const SOURCE = "conntrack.helpers";

function principals(raw) {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
  const own = { "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root" };
  const extra = String(raw ?? "")
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item.length > 0)
    .map((item) => {
      if (ACCOUNT.test(item)) return { "Fn::Sub": `arn:\${AWS::Partition}:iam::${item}:root` };
      if (PRINCIPAL_ARN.test(item)) return item;
      throw new Error(
        `eventPublishers entry "${item}" is neither a 12-digit account nor an IAM principal ARN`,
      );
    });
  return [own, ...extra];
}

function busPolicy(publishers, busName) {
  const busArn = {
    "Fn::Sub": `arn:\${AWS::Partition}:events:\${AWS::Region}:\${AWS::AccountId}:event-bus/${busName}`,
  };
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "AllowedPublishers",
        Effect: "Allow",
        Principal: { AWS: principals(publishers) },
        Action: "events:PutEvents",
        Resource: busArn,
        Condition: { StringEquals: { "events:source": SOURCE } },
      },
      {
        Sid: "OnlyConntrackHelpersSource",
        Effect: "Deny",
        Principal: { AWS: "*" },
        Action: "events:PutEvents",
        Resource: busArn,
        Condition: { StringNotEquals: { "events:source": SOURCE } },
      },
    ],
  };
}

module.exports = async ({ resolveVariable }) => {
  const [service, stage, publishers] = await Promise.all([
    resolveVariable("self:service"),
    resolveVariable("sls:stage"),
    resolveVariable("param:eventPublishers"),
  ]);
  return { busPolicy: busPolicy(publishers, `${service}-${stage}`) };
};
module.exports.principals = principals;
