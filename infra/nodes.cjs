// Per-node resources from the `nodes` parameter (a comma-separated list): CloudFormation has no loops, and
// osls runs a `${file(x.cjs):key}` resolver as JS, so this generates them with no plugin.
// Each node gets: a FIFO queue (group = router id) with a FIFO DLQ, alarms on DLQ depth and on backlog age,
// and a managed policy that the node's agent credentials attach.
"use strict";

// Same alphabet and length as lib/schemas/primitives.ts `host`: the node name is part of the queue name.
const NODE_NAME = /^[A-Za-z0-9_-]{1,48}$/;
const FOURTEEN_DAYS = 1_209_600;
const MAX_QUEUE_NAME = 80;

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

function build({ prefix, nodes, maxReceiveCount, visibility }) {
  const resources = {};
  const outputs = {};
  const queueArns = [];
  const dlqArns = [];
  for (const node of nodes) {
    const id = logicalSuffix(node);
    const queueName = `${prefix}-node-${node}.fifo`;
    const dlqName = `${prefix}-node-${node}-dlq.fifo`;
    if (dlqName.length > MAX_QUEUE_NAME) {
      throw new Error(
        `queue name ${dlqName} is longer than ${MAX_QUEUE_NAME} characters: shorten stage or node`,
      );
    }
    const queue = `NodeQueue${id}`;
    const dlq = `NodeDlq${id}`;
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
        Description: `cth agent on ${node}: its own command queue, its DLQ (parking invalid commands), status reports`,
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
              Sid: "StatusReports",
              Effect: "Allow",
              Action: ["sqs:SendMessage"],
              Resource: { "Fn::GetAtt": ["StatusQueue", "Arn"] },
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
      Description: `Managed policy to attach to the agent credentials on ${node}`,
      Value: { Ref: `AgentPolicy${id}` },
    };
    queueArns.push({ "Fn::GetAtt": [queue, "Arn"] });
    dlqArns.push({ "Fn::GetAtt": [dlq, "Arn"] });
  }
  return {
    resources,
    outputs,
    queueArns,
    dlqArns,
    queueUrlTemplate: {
      "Fn::Sub": `https://sqs.\${AWS::Region}.\${AWS::URLSuffix}/\${AWS::AccountId}/${prefix}-node-{node}.fifo`,
    },
  };
}

function positive(name, raw) {
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`param "${name}" must be a positive integer`);
  return value;
}

module.exports = async ({ resolveVariable }) => {
  const [service, stage, nodes, maxReceiveCount, visibility] = await Promise.all([
    resolveVariable("self:service"),
    resolveVariable("sls:stage"),
    resolveVariable("param:nodes"),
    resolveVariable("param:maxReceiveCount"),
    resolveVariable("param:nodeQueueVisibilitySeconds"),
  ]);
  return build({
    prefix: `${service}-${stage}`,
    nodes: parseNodes(nodes),
    maxReceiveCount: positive("maxReceiveCount", maxReceiveCount),
    visibility: positive("nodeQueueVisibilitySeconds", visibility),
  });
};
module.exports.parseNodes = parseNodes;
module.exports.build = build;
