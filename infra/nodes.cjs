// Per-node resources from the `nodes` parameter (a comma-separated list): CloudFormation has no loops, and
// osls runs a `${file(x.cjs):key}` resolver as JS, so this generates them with no plugin.
// Each node gets: a FIFO command queue (group = router id) with a FIFO DLQ, alarms on DLQ depth and on backlog
// age, a standard status queue of its own (the status function takes the reporting host from the record's
// eventSourceARN, so the queue's policy is what binds a report to its node), an agent managed policy and an
// agent role carrying it (a queue policy can only name a principal that exists).
"use strict";

const { parsePrincipals } = require("./principals.cjs");

// Same alphabet and length as lib/schemas/primitives.ts `host`: the node name is part of the queue name.
const NODE_NAME = /^[A-Za-z0-9_-]{1,48}$/;
const FOURTEEN_DAYS = 1_209_600;
const MAX_QUEUE_NAME = 80;
const MAX_ROLE_NAME = 64;
// AWS's rule for Lambda consumers: at least 6x the function timeout (status: 30 s, serverless.yml).
const STATUS_VISIBILITY = 180;
// The roles of the functions that send snapshots: the only principals a node queue accepts messages from.
const SENDER_ROLES = [
  "HttpFunctionRole",
  "EventsFunctionRole",
  "StatusFunctionRole",
  "ReconcileFunctionRole",
];

function logicalSuffix(node) {
  return node
    .split(/[-_]/)
    .filter((part) => part.length > 0)
    .map((part) => part[0].toUpperCase() + part.slice(1))
    .join("");
}

function parseNodes(raw) {
  const nodes = String(raw ?? "")
    .split(",")
    .map((node) => node.trim())
    .filter((node) => node.length > 0);
  if (nodes.length === 0) {
    throw new Error('param "nodes" is required: a comma-separated list of network node names');
  }
  const seen = new Map();
  for (const node of nodes) {
    if (!NODE_NAME.test(node)) {
      throw new Error(`node name "${node}" must match ${NODE_NAME} (it becomes part of an SQS queue name)`);
    }
    const suffix = logicalSuffix(node);
    if (seen.has(suffix)) {
      throw new Error(`node names "${seen.get(suffix)}" and "${node}" map to the same resource id ${suffix}`);
    }
    seen.set(suffix, node);
  }
  return nodes;
}

const arnOf = (queueName) => ({
  "Fn::Sub": `arn:\${AWS::Partition}:sqs:\${AWS::Region}:\${AWS::AccountId}:${queueName}`,
});

/** Deny SendMessage to `queue` for every principal but `allowed` (role logical ids); identity policies grant. */
function sendOnlyFrom(queue, allowed, sid) {
  return {
    Type: "AWS::SQS::QueuePolicy",
    Properties: {
      Queues: [{ Ref: queue }],
      PolicyDocument: {
        Version: "2012-10-17",
        Statement: [
          {
            Sid: sid,
            Effect: "Deny",
            Principal: { AWS: "*" },
            Action: "sqs:SendMessage",
            Resource: { "Fn::GetAtt": [queue, "Arn"] },
            Condition: {
              ArnNotEquals: { "aws:PrincipalArn": allowed.map((role) => ({ "Fn::GetAtt": [role, "Arn"] })) },
            },
          },
        ],
      },
    },
  };
}

// Services that can hand a node the agent role: an instance profile (EC2) or IAM Roles Anywhere (on-premises
// nodes with X.509 certificates; it also tags the session and sets a source identity).
const AGENT_SERVICES = {
  "ec2.amazonaws.com": ["sts:AssumeRole"],
  "rolesanywhere.amazonaws.com": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
};

/** agentTrustPrincipal: `self`, accounts or IAM principal ARNs, and/or one of AGENT_SERVICES. */
function parseAgentTrust(raw) {
  const entries = String(raw ?? "")
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item.length > 0);
  const services = entries.filter((item) => Object.hasOwn(AGENT_SERVICES, item));
  const principals = parsePrincipals(
    entries.filter((item) => !services.includes(item)).join(","),
    "agentTrustPrincipal",
  );
  if (principals.length + services.length === 0) {
    throw new Error('param "agentTrustPrincipal" must name at least one principal');
  }
  return { principals, services };
}

function agentTrust({ principals, services }) {
  const statements = [];
  if (principals.length > 0) {
    statements.push({
      Effect: "Allow",
      Principal: { AWS: principals.map((entry) => entry.principal) },
      Action: "sts:AssumeRole",
    });
  }
  for (const service of services) {
    statements.push({
      Effect: "Allow",
      Principal: { Service: service },
      Action: AGENT_SERVICES[service],
      // Confused-deputy guard: only this account's trust anchors (EC2 passes instance profiles of this
      // account only, and sets no source account).
      ...(service === "rolesanywhere.amazonaws.com"
        ? { Condition: { StringEquals: { "aws:SourceAccount": { Ref: "AWS::AccountId" } } } }
        : {}),
    });
  }
  return { Version: "2012-10-17", Statement: statements };
}

function build({ prefix, nodes, maxReceiveCount, visibility, agentTrustPrincipal = "self" }) {
  const trusted = parseAgentTrust(agentTrustPrincipal);
  const resources = {};
  const outputs = {};
  const queueArns = [];
  const dlqArns = [];
  const statusQueueArns = [];
  const statusEvents = [];
  for (const node of nodes) {
    const id = logicalSuffix(node);
    const queueName = `${prefix}-node-${node}.fifo`;
    const dlqName = `${prefix}-node-${node}-dlq.fifo`;
    const statusName = `${prefix}-node-${node}-status`;
    const roleName = `${prefix}-agent-${node}`;
    for (const name of [dlqName, statusName]) {
      if (name.length > MAX_QUEUE_NAME) {
        throw new Error(
          `queue name ${name} is longer than ${MAX_QUEUE_NAME} characters: shorten stage or node`,
        );
      }
    }
    if (roleName.length > MAX_ROLE_NAME) {
      throw new Error(
        `role name ${roleName} is longer than ${MAX_ROLE_NAME} characters: shorten stage or node`,
      );
    }
    const queue = `NodeQueue${id}`;
    const dlq = `NodeDlq${id}`;
    const statusQueue = `NodeStatusQueue${id}`;
    const agentRole = `AgentRole${id}`;
    resources[dlq] = {
      Type: "AWS::SQS::Queue",
      Properties: {
        QueueName: dlqName,
        FifoQueue: true,
        MessageRetentionPeriod: FOURTEEN_DAYS,
        SqsManagedSseEnabled: true,
        // Only the node's own queue may dead-letter here (built as a string: GetAtt would be a cycle).
        RedriveAllowPolicy: { redrivePermission: "byQueue", sourceQueueArns: [arnOf(queueName)] },
        Tags: [{ Key: "cth:node", Value: node }],
      },
    };
    resources[queue] = {
      Type: "AWS::SQS::Queue",
      Properties: {
        QueueName: queueName,
        FifoQueue: true,
        // Producers set MessageDeduplicationId = router id + revision; content dedup would hide re-sends.
        ContentBasedDeduplication: false,
        // High-throughput FIFO: ordering and dedup per router (message group), not per queue.
        DeduplicationScope: "messageGroup",
        FifoThroughputLimit: "perMessageGroupId",
        MessageRetentionPeriod: FOURTEEN_DAYS,
        VisibilityTimeout: visibility,
        ReceiveMessageWaitTimeSeconds: 20,
        SqsManagedSseEnabled: true,
        RedrivePolicy: { deadLetterTargetArn: { "Fn::GetAtt": [dlq, "Arn"] }, maxReceiveCount },
        Tags: [{ Key: "cth:node", Value: node }],
      },
    };
    // Only the functions put snapshots here (the agent also checks each one's signature).
    resources[`NodeQueuePolicy${id}`] = sendOnlyFrom(queue, SENDER_ROLES, "OnlyDispatcherFunctions");
    resources[statusQueue] = {
      Type: "AWS::SQS::Queue",
      Properties: {
        QueueName: statusName,
        MessageRetentionPeriod: FOURTEEN_DAYS,
        VisibilityTimeout: STATUS_VISIBILITY,
        SqsManagedSseEnabled: true,
        RedrivePolicy: { deadLetterTargetArn: { "Fn::GetAtt": ["StatusDlq", "Arn"] }, maxReceiveCount },
        Tags: [{ Key: "cth:node", Value: node }],
      },
    };
    // A report on this queue comes from this node's agent: no other principal may send to it.
    resources[`NodeStatusQueuePolicy${id}`] = sendOnlyFrom(statusQueue, [agentRole], "OnlyThisNodesAgent");
    resources[agentRole] = {
      Type: "AWS::IAM::Role",
      Properties: {
        RoleName: roleName,
        Description: `cth agent on ${node} (assumed through an instance profile, IAM Roles Anywhere or sts)`,
        AssumeRolePolicyDocument: agentTrust(trusted),
        ManagedPolicyArns: [{ Ref: `AgentPolicy${id}` }],
        Tags: [{ Key: "cth:node", Value: node }],
      },
    };
    if (trusted.services.includes("ec2.amazonaws.com")) {
      resources[`AgentInstanceProfile${id}`] = {
        Type: "AWS::IAM::InstanceProfile",
        Properties: { InstanceProfileName: roleName, Roles: [{ Ref: agentRole }] },
      };
      outputs[`AgentInstanceProfileArn${id}`] = {
        Description: `Instance profile for the agent on ${node} (role AgentRoleArn${id})`,
        Value: { "Fn::GetAtt": [`AgentInstanceProfile${id}`, "Arn"] },
      };
    }
    resources[`NodeDlqDepthAlarm${id}`] = {
      Type: "AWS::CloudWatch::Alarm",
      Properties: {
        AlarmName: `${prefix}-node-${node}-dlq-depth`,
        AlarmDescription: `Commands for node ${node} were dead-lettered: inspect ${dlqName} and redrive`,
        Namespace: "AWS/SQS",
        MetricName: "ApproximateNumberOfMessagesVisible",
        Dimensions: [{ Name: "QueueName", Value: { "Fn::GetAtt": [dlq, "QueueName"] } }],
        Statistic: "Maximum",
        Period: 60,
        EvaluationPeriods: 1,
        Threshold: 1,
        ComparisonOperator: "GreaterThanOrEqualToThreshold",
        TreatMissingData: "notBreaching",
        AlarmActions: [{ Ref: "AlarmTopic" }],
        OKActions: [{ Ref: "AlarmTopic" }],
      },
    };
    resources[`NodeBacklogAlarm${id}`] = {
      Type: "AWS::CloudWatch::Alarm",
      Properties: {
        AlarmName: `${prefix}-node-${node}-backlog-age`,
        AlarmDescription: `The agent on ${node} has not taken commands for 10 minutes: is it running?`,
        Namespace: "AWS/SQS",
        MetricName: "ApproximateAgeOfOldestMessage",
        Dimensions: [{ Name: "QueueName", Value: { "Fn::GetAtt": [queue, "QueueName"] } }],
        Statistic: "Maximum",
        Period: 60,
        EvaluationPeriods: 10,
        Threshold: 600,
        ComparisonOperator: "GreaterThanThreshold",
        TreatMissingData: "notBreaching",
        AlarmActions: [{ Ref: "AlarmTopic" }],
        OKActions: [{ Ref: "AlarmTopic" }],
      },
    };
    resources[`AgentPolicy${id}`] = {
      Type: "AWS::IAM::ManagedPolicy",
      Properties: {
        ManagedPolicyName: `${prefix}-agent-${node}`,
        Description: `cth agent on ${node}: its own command queue, its DLQ (parking invalid commands), its status queue`,
        PolicyDocument: {
          Version: "2012-10-17",
          Statement: [
            {
              Sid: "OwnCommandQueue",
              Effect: "Allow",
              Action: [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
              ],
              Resource: { "Fn::GetAtt": [queue, "Arn"] },
            },
            {
              // The agent finds its DLQ from the queue's RedrivePolicy (GetQueueUrl) and parks invalid commands.
              Sid: "ParkInvalidCommands",
              Effect: "Allow",
              Action: ["sqs:GetQueueUrl", "sqs:SendMessage"],
              Resource: { "Fn::GetAtt": [dlq, "Arn"] },
            },
            {
              Sid: "OwnStatusQueue",
              Effect: "Allow",
              Action: ["sqs:SendMessage"],
              Resource: { "Fn::GetAtt": [statusQueue, "Arn"] },
            },
          ],
        },
      },
    };
    outputs[`NodeQueueUrl${id}`] = {
      Description: `Command queue of node ${node} (agent --queue-url)`,
      Value: { Ref: queue },
    };
    outputs[`NodeDlqUrl${id}`] = {
      Description: `Dead-letter queue of node ${node}`,
      Value: { Ref: dlq },
    };
    outputs[`AgentPolicyArn${id}`] = {
      Description: `Managed policy of the agent on ${node} (carried by AgentRoleArn${id})`,
      Value: { Ref: `AgentPolicy${id}` },
    };
    outputs[`NodeStatusQueueUrl${id}`] = {
      Description: `Status queue of node ${node} (agent --status-queue-url)`,
      Value: { Ref: statusQueue },
    };
    outputs[`AgentRoleArn${id}`] = {
      Description: `Role the agent on ${node} runs as: the only principal its status queue accepts`,
      Value: { "Fn::GetAtt": [agentRole, "Arn"] },
    };
    queueArns.push({ "Fn::GetAtt": [queue, "Arn"] });
    dlqArns.push({ "Fn::GetAtt": [dlq, "Arn"] });
    statusQueueArns.push({ "Fn::GetAtt": [statusQueue, "Arn"] });
    statusEvents.push({
      sqs: {
        arn: { "Fn::GetAtt": [statusQueue, "Arn"] },
        batchSize: 10,
        maximumBatchingWindow: 1,
        functionResponseType: "ReportBatchItemFailures",
      },
    });
  }
  return {
    resources,
    outputs,
    queueArns,
    dlqArns,
    statusQueueArns,
    statusEvents,
    queueUrlTemplate: {
      "Fn::Sub": `https://sqs.\${AWS::Region}.\${AWS::URLSuffix}/\${AWS::AccountId}/${prefix}-node-{node}.fifo`,
    },
    // The functions refuse bindings to any other host (CTH_NODES): it has no queue to send to.
    nodeList: nodes.join(","),
  };
}

function positive(name, raw) {
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`param "${name}" must be a positive integer`);
  return value;
}

module.exports = async ({ resolveVariable }) => {
  const [service, stage, nodes, maxReceiveCount, visibility, agentTrustPrincipal] = await Promise.all([
    resolveVariable("self:service"),
    resolveVariable("sls:stage"),
    resolveVariable("param:nodes"),
    resolveVariable("param:maxReceiveCount"),
    resolveVariable("param:nodeQueueVisibilitySeconds"),
    resolveVariable("param:agentTrustPrincipal"),
  ]);
  return build({
    prefix: `${service}-${stage}`,
    nodes: parseNodes(nodes),
    maxReceiveCount: positive("maxReceiveCount", maxReceiveCount),
    visibility: positive("nodeQueueVisibilitySeconds", visibility),
    agentTrustPrincipal,
  });
};
module.exports.parseNodes = parseNodes;
module.exports.parseAgentTrust = parseAgentTrust;
module.exports.build = build;
