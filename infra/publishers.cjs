// The event bus resource policy and the events function's allowed accounts, from two params: who may put
// lifecycle events (`Router Upserted`, `Router Deleted`: admin powers) and who may put notifications.
// Each is a comma-separated list of `self` (this account), 12-digit accounts or IAM principal ARNs.
//
// An Allow in a bus policy only admits other accounts; this account's principals are admitted by their own
// IAM policies. So each kind also gets a Deny for every principal not listed for it, which binds this account
// too: with `lifecyclePublishers=arn:aws:iam::<this account>:role/neutron-bridge`, no other principal of the
// account can put a lifecycle event, whatever its IAM policy says.
"use strict";

const { accountList, parsePrincipals } = require("./principals.cjs");

const SOURCE = "conntrack.helpers";
const LIFECYCLE = ["Router Upserted", "Router Deleted"];
const NOTIFICATION = ["Conntrack Helper Notification"];

/** Deny putting `detailTypes` unless the caller's account or principal ARN is one of `entries`. */
function denyOthers(sid, entries, detailTypes, busArn) {
  const accounts = entries.filter((e) => e.whole).map((e) => e.account);
  const arns = entries.filter((e) => !e.whole).map((e) => e.arn);
  // Several condition operators are ANDed: denied when the account is not listed and the ARN is not either.
  const condition = { StringEquals: { "events:detail-type": detailTypes } };
  if (accounts.length > 0) condition.StringNotEquals = { "aws:PrincipalAccount": accounts };
  if (arns.length > 0) condition.ArnNotEquals = { "aws:PrincipalArn": arns };
  return {
    Sid: sid,
    Effect: "Deny",
    Principal: { AWS: "*" },
    Action: "events:PutEvents",
    Resource: busArn,
    Condition: condition,
  };
}

function allow(sid, entries, detailTypes, busArn) {
  return {
    Sid: sid,
    Effect: "Allow",
    Principal: { AWS: entries.map((e) => e.principal) },
    Action: "events:PutEvents",
    Resource: busArn,
    Condition: { StringEquals: { "events:source": SOURCE, "events:detail-type": detailTypes } },
  };
}

function busPolicy(lifecycle, notification, busName) {
  const busArn = {
    "Fn::Sub": `arn:\${AWS::Partition}:events:\${AWS::Region}:\${AWS::AccountId}:event-bus/${busName}`,
  };
  const statements = [];
  if (lifecycle.length > 0) statements.push(allow("LifecyclePublishers", lifecycle, LIFECYCLE, busArn));
  if (notification.length > 0) {
    statements.push(allow("NotificationPublishers", notification, NOTIFICATION, busArn));
  }
  statements.push(
    denyOthers("LifecycleOnlyFromLifecyclePublishers", lifecycle, LIFECYCLE, busArn),
    denyOthers("NotificationsOnlyFromNotificationPublishers", notification, NOTIFICATION, busArn),
    {
      Sid: "OnlyConntrackHelpersSource",
      Effect: "Deny",
      Principal: { AWS: "*" },
      Action: "events:PutEvents",
      Resource: busArn,
      Condition: { StringNotEquals: { "events:source": SOURCE } },
    },
  );
  return { Version: "2012-10-17", Statement: statements };
}

function build({ lifecyclePublishers, notificationPublishers, busName }) {
  const lifecycle = parsePrincipals(lifecyclePublishers, "lifecyclePublishers");
  const notification = parsePrincipals(notificationPublishers, "notificationPublishers");
  return {
    busPolicy: busPolicy(lifecycle, notification, busName),
    // The events function checks the envelope's `account` against these too (lib/config.ts).
    lifecycleAccounts: accountList(lifecycle),
    notificationAccounts: accountList(notification),
  };
}

module.exports = async ({ resolveVariable }) => {
  const [service, stage, lifecyclePublishers, notificationPublishers, legacy] = await Promise.all([
    resolveVariable("self:service"),
    resolveVariable("sls:stage"),
    resolveVariable("param:lifecyclePublishers"),
    resolveVariable("param:notificationPublishers"),
    resolveVariable("param:eventPublishers, null"),
  ]);
  if (legacy !== null && legacy !== undefined && legacy !== "") {
    // Refuse rather than guess which powers the old all-powerful list was meant to grant.
    throw new Error(
      'param "eventPublishers" is gone: name publishers in "lifecyclePublishers" and "notificationPublishers"',
    );
  }
  return build({ lifecyclePublishers, notificationPublishers, busName: `${service}-${stage}` });
};
module.exports.build = build;
