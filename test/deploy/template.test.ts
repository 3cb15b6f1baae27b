/**
 * Packages the real service with the osls CLI (no AWS credentials at all) and asserts on the CloudFormation it
 * generates: least privilege, FIFO + DLQ pairing, retention and visibility, encryption, the JWT authorizer on
 * every route, alarms, and the size of each bundle.
 */
import { readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DETAIL_TYPES, EVENT_SOURCE } from "../../functions/events.ts";
import {
  BINDING_SLOTS,
  bindingSlotIndex,
  ROUTERS_BY_PROJECT_INDEX,
  ROUTERS_OUT_OF_SYNC_INDEX,
  routersTableDefinition,
} from "../../lib/aws/tables.ts";
import { ROUTES } from "../../lib/http/routes.ts";
import { type PackagedService, packageService } from "./package-template.ts";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const require = createRequire(import.meta.url);

const NODES = ["net-1", "net_b2"] as const;
const ISSUER = "https://idp.example.test/realms/cloud";
const AUDIENCE = "cth-api";
const STAGE = "ci";
const FOURTEEN_DAYS = 1_209_600;

type Json = unknown;
interface Resource {
  Type: string;
  Properties: Record<string, Json>;
  DependsOn?: Json;
}
interface Statement {
  Sid?: string;
  Effect: string;
  Action: string | string[];
  Resource: Json;
  Condition?: Record<string, Record<string, Json>>;
  Principal?: Json;
}

let outDir: string;
let template: { Resources: Record<string, Resource>; Outputs: Record<string, { Value: Json }> };
let resources: Record<string, Resource>;
const bundleSizes: Record<string, number> = {};

const ofType = (type: string) => Object.entries(resources).filter(([, r]) => r.Type === type);
const getAtt = (id: string, attr = "Arn") => ({ "Fn::GetAtt": [id, attr] });
const asList = <T>(value: T | T[]): T[] => (Array.isArray(value) ? value : [value]);
const nodeId = (node: string) =>
  node
    .split(/[-_]/)
    .map((p) => p[0]!.toUpperCase() + p.slice(1))
    .join("");

function statementsOf(roleId: string): Statement[] {
  const role = resources[roleId];
  expect(role?.Type, roleId).toBe("AWS::IAM::Role");
  const policies = role!.Properties.Policies as { PolicyDocument: { Statement: Statement[] } }[];
  expect(role!.Properties.ManagedPolicyArns, `${roleId} has no managed policies`).toBeUndefined();
  return policies.flatMap((p) => p.PolicyDocument.Statement);
}

/** A role's grants as "action -> sorted resources", so each test pins the whole surface at once. */
function grants(statements: readonly Statement[]): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const statement of statements) {
    expect(statement.Effect).toBe("Allow");
    for (const action of asList(statement.Action)) {
      const list = out[action] ?? [];
      for (const res of asList(statement.Resource)) list.push(JSON.stringify(res));
      out[action] = list.sort();
    }
  }
  return out;
}

const logs = (fn: string) => ({
  "logs:CreateLogStream": [
    JSON.stringify({
      "Fn::Sub": `arn:\${AWS::Partition}:logs:\${AWS::Region}:\${AWS::AccountId}:log-group:/aws/lambda/cth-${STAGE}-${fn}:*`,
    }),
  ],
  "logs:PutLogEvents": [
    JSON.stringify({
      "Fn::Sub": `arn:\${AWS::Partition}:logs:\${AWS::Region}:\${AWS::AccountId}:log-group:/aws/lambda/cth-${STAGE}-${fn}:*`,
    }),
  ],
});
const routers = JSON.stringify(getAtt("RoutersTable"));
const idem = JSON.stringify(getAtt("IdempotencyTable"));
const nodeQueues = NODES.map((n) => JSON.stringify(getAtt(`NodeQueue${nodeId(n)}`))).sort();
const statusQueues = NODES.map((n) => JSON.stringify(getAtt(`NodeStatusQueue${nodeId(n)}`))).sort();
const SENDER_ROLES = [
  "HttpFunctionRole",
  "EventsFunctionRole",
  "StatusFunctionRole",
  "ReconcileFunctionRole",
];
const SIGNING_PARAMETER = `/cth/${STAGE}/snapshot-signing-key`;
const signingParameterArn = {
  "Fn::Sub": `arn:\${AWS::Partition}:ssm:\${AWS::Region}:\${AWS::AccountId}:parameter${SIGNING_PARAMETER}`,
};
/** What every snapshot sender may do with the signing key; nothing else in the template may. */
const signing = {
  "ssm:GetParameter": [JSON.stringify(signingParameterArn)],
  "kms:Decrypt": [JSON.stringify(getAtt("SigningKeyKmsKey"))],
};

let packaged: PackagedService | undefined;

beforeAll(async () => {
  packaged = await packageService({ stage: STAGE, nodes: NODES, jwtIssuer: ISSUER, jwtAudience: AUDIENCE });
  outDir = packaged.dir;
  template = packaged.template;
  resources = template.Resources;
  for (const file of packaged.bundles) bundleSizes[file] = statSync(join(outDir, file)).size;
}, 300_000);

afterAll(() => {
  packaged?.remove();
});

describe("functions", () => {
  const functions = ["Http", "Events", "Status", "Reconcile"];

  it("are Node 22 on arm64, each with its own role, and no shared default role exists", () => {
    expect(
      ofType("AWS::Lambda::Function")
        .map(([id]) => id)
        .sort(),
    ).toEqual(functions.map((f) => `${f}LambdaFunction`).sort());
    const roles = new Set<string>();
    for (const fn of functions) {
      const props = resources[`${fn}LambdaFunction`]!.Properties;
      expect(props.Runtime).toBe("nodejs22.x");
      expect(props.Architectures).toEqual(["arm64"]);
      expect(props.Role).toEqual(getAtt(`${fn}FunctionRole`));
      roles.add(JSON.stringify(props.Role));
    }
    expect(roles.size).toBe(functions.length);
    expect(resources.IamRoleLambdaExecution).toBeUndefined();
  });

  it("get the configuration lib/config.ts reads", () => {
    for (const fn of functions) {
      const vars = (
        resources[`${fn}LambdaFunction`]!.Properties.Environment as { Variables: Record<string, Json> }
      ).Variables;
      expect(vars.CTH_ROUTERS_TABLE).toEqual({ Ref: "RoutersTable" });
      expect(vars.CTH_IDEMPOTENCY_TABLE).toEqual({ Ref: "IdempotencyTable" });
      // Nothing reads a shared status queue any more: each node has its own (see "queues").
      expect(vars.CTH_STATUS_QUEUE_URL).toBeUndefined();
      expect(vars.CTH_SIGNING_KEY_PARAMETER).toBe(SIGNING_PARAMETER);
      expect(vars.CTH_NODE_QUEUE_URL_TEMPLATE).toEqual({
        "Fn::Sub": `https://sqs.\${AWS::Region}.\${AWS::URLSuffix}/\${AWS::AccountId}/cth-${STAGE}-node-{node}.fifo`,
      });
      // The functions refuse bindings to hosts the deployment made no queues for.
      expect(vars.CTH_NODES).toBe(NODES.join(","));
      expect(vars).toMatchObject({
        CTH_MAX_BODY_BYTES: "65536",
        CTH_MAX_HELPERS_PER_NOTIFICATION: "64",
        CTH_MAX_HELPERS_PER_ROUTER: "128",
      });
    }
    const reconcileVars = (resources.ReconcileLambdaFunction!.Properties.Environment as { Variables: object })
      .Variables;
    expect(reconcileVars).toMatchObject({ CTH_RECONCILE_STALE_SECONDS: "900" });
    const statusVars = (resources.StatusLambdaFunction!.Properties.Environment as { Variables: object })
      .Variables;
    expect(statusVars).toMatchObject({ CTH_STATUS_QUEUE_NAME_TEMPLATE: `cth-${STAGE}-node-{node}-status` });
    // With the default params only this account may put either kind of event.
    const eventsVars = (resources.EventsLambdaFunction!.Properties.Environment as { Variables: object })
      .Variables;
    expect(eventsVars).toMatchObject({
      CTH_EVENTS_LIFECYCLE_ACCOUNTS: { "Fn::Join": [",", [{ Ref: "AWS::AccountId" }]] },
      CTH_EVENTS_NOTIFICATION_ACCOUNTS: { "Fn::Join": [",", [{ Ref: "AWS::AccountId" }]] },
    });
  });

  it("the node queue URL and status queue name templates name exactly the queues the template creates", () => {
    for (const node of NODES) {
      expect(resources[`NodeQueue${nodeId(node)}`]!.Properties.QueueName).toBe(
        `cth-${STAGE}-node-${node}.fifo`,
      );
      expect(resources[`NodeStatusQueue${nodeId(node)}`]!.Properties.QueueName).toBe(
        `cth-${STAGE}-node-${node}-status`,
      );
    }
  });

  it("bundles are small ESM with source maps and no AWS SDK inside", () => {
    // Reported for the README; the bound is loose on purpose (DESIGN: about 90 KB zipped per function).
    console.info(`bundle sizes (zip bytes): ${JSON.stringify(bundleSizes)}`);
    expect(Object.keys(bundleSizes).sort()).toEqual([
      "events.zip",
      "http.zip",
      "reconcile.zip",
      "status.zip",
    ]);
    for (const [file, size] of Object.entries(bundleSizes)) {
      expect(size, file).toBeLessThan(400 * 1024);
      const zip = readFileSync(join(outDir, file)).toString("latin1");
      const name = file.replace(".zip", "");
      expect(zip).toContain(`functions/${name}.mjs`);
      expect(zip).toContain(`functions/${name}.mjs.map`);
      expect(zip).not.toContain("node_modules/");
    }
    for (const fn of functions) {
      expect(resources[`${fn}LambdaFunction`]!.Properties.Handler).toBe(
        `functions/${fn.toLowerCase()}.handler`,
      );
    }
  });
});

/** A routers-table index's ARN as the roles name it. */
const index = (name: string) => JSON.stringify({ "Fn::Sub": `\${RoutersTable.Arn}/index/${name}` });

describe("least privilege", () => {
  it("http: routers read/write, idempotency records, send to node queues; nothing else", () => {
    expect(grants(statementsOf("HttpFunctionRole"))).toEqual({
      ...logs("http"),
      "dynamodb:GetItem": [idem, routers].sort(),
      "dynamodb:BatchGetItem": [routers],
      "dynamodb:PutItem": [idem, routers].sort(),
      "dynamodb:DeleteItem": [idem],
      "dynamodb:UpdateItem": [idem, routers].sort(),
      // GET /v1/routers: Query the indexes its filters name, Scan only unfiltered (the table's keys or the
      // out-of-sync index); never a Query of the table itself.
      "dynamodb:Query": [
        index(ROUTERS_OUT_OF_SYNC_INDEX),
        index(ROUTERS_BY_PROJECT_INDEX),
        ...Array.from({ length: BINDING_SLOTS }, (_, slot) => index(bindingSlotIndex(slot))),
      ].sort(),
      "dynamodb:Scan": [routers, index(ROUTERS_OUT_OF_SYNC_INDEX)].sort(),
      "sqs:SendMessage": nodeQueues,
      ...signing,
    });
  });

  it("events: routers read/write and node queues (no idempotency table), plus its failure destination", () => {
    expect(grants(statementsOf("EventsFunctionRole"))).toEqual({
      ...logs("events"),
      "dynamodb:GetItem": [routers],
      "dynamodb:BatchGetItem": [routers],
      "dynamodb:PutItem": [routers],
      "dynamodb:UpdateItem": [routers],
      "sqs:SendMessage": [...nodeQueues, JSON.stringify(getAtt("EventsDlq"))].sort(),
      ...signing,
    });
  });

  it("status: record applied status, list a node's routers, resync, consume the node status queues", () => {
    expect(grants(statementsOf("StatusFunctionRole"))).toEqual({
      ...logs("status"),
      "dynamodb:GetItem": [routers],
      "dynamodb:BatchGetItem": [routers],
      "dynamodb:UpdateItem": [routers],
      "dynamodb:Query": Array.from({ length: BINDING_SLOTS }, (_, slot) => index(bindingSlotIndex(slot))),
      "sqs:SendMessage": nodeQueues,
      "sqs:ReceiveMessage": statusQueues,
      "sqs:DeleteMessage": statusQueues,
      "sqs:GetQueueAttributes": statusQueues,
      ...signing,
    });
  });

  it("status: UpdateItem may touch only the applied-status attributes, never desired state", () => {
    // A stolen status role could otherwise rewrite helpers, owner, host or revision of any router.
    const updates = statementsOf("StatusFunctionRole").filter((s) =>
      asList(s.Action).includes("dynamodb:UpdateItem"),
    );
    expect(updates).toHaveLength(1);
    expect(asList(updates[0]!.Action)).toEqual(["dynamodb:UpdateItem"]);
    expect(updates[0]!.Condition).toEqual({
      // out_of_sync is the sparse index's flag; sync_revision the desired revision's mirror it conditions on.
      "ForAllValues:StringEquals": {
        "dynamodb:Attributes": ["router_id", "replicas", "draining", "out_of_sync", "sync_revision"],
      },
      // IAM requires this beside an attribute condition: other ReturnValues would read whole items.
      StringEqualsIfExists: { "dynamodb:ReturnValues": ["NONE", "UPDATED_NEW"] },
    });
    // No other write action at all (PutItem or DeleteItem would bypass the attribute condition).
    const actions = statementsOf("StatusFunctionRole").flatMap((s) => asList(s.Action));
    for (const write of ["dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"]) {
      expect(actions).not.toContain(write);
    }
  });

  it("reconcile: scan only the out-of-sync index, re-read its routers, send snapshots, un-flag", () => {
    expect(grants(statementsOf("ReconcileFunctionRole"))).toEqual({
      ...logs("reconcile"),
      "dynamodb:Scan": [index(ROUTERS_OUT_OF_SYNC_INDEX)],
      "dynamodb:BatchGetItem": [routers],
      "dynamodb:UpdateItem": [routers],
      "sqs:SendMessage": nodeQueues,
      ...signing,
    });
  });

  it("the signing key: the four senders read exactly its parameter and decrypt with its key only via SSM", () => {
    for (const role of SENDER_ROLES) {
      const statements = statementsOf(role);
      const read = statements.filter((s) => asList(s.Action).includes("ssm:GetParameter"));
      expect(read, role).toEqual([
        {
          Sid: "SigningKeyParameter",
          Effect: "Allow",
          Action: ["ssm:GetParameter"],
          Resource: signingParameterArn,
        },
      ]);
      const decrypt = statements.filter((s) => asList(s.Action).some((a) => a.startsWith("kms:")));
      expect(decrypt, role).toEqual([
        {
          Sid: "SigningKeyDecrypt",
          Effect: "Allow",
          Action: ["kms:Decrypt"],
          Resource: getAtt("SigningKeyKmsKey"),
          Condition: {
            StringEquals: {
              // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
              "kms:ViaService": { "Fn::Sub": "ssm.${AWS::Region}.amazonaws.com" },
              "kms:EncryptionContext:PARAMETER_ARN": signingParameterArn,
            },
          },
        },
      ]);
    }
    // Nodes verify with public keys only: no agent policy reaches SSM or KMS.
    for (const [, policy] of ofType("AWS::IAM::ManagedPolicy")) {
      const actions = (policy.Properties.PolicyDocument as { Statement: Statement[] }).Statement.flatMap(
        (s) => asList(s.Action),
      );
      expect(actions.filter((a) => /^(ssm|kms):/.test(a))).toEqual([]);
    }
    const key = resources.SigningKeyKmsKey as Resource & { DeletionPolicy?: string };
    expect(key.DeletionPolicy).toBe("Retain");
    expect(key.Properties).toMatchObject({ KeySpec: "SYMMETRIC_DEFAULT", EnableKeyRotation: true });
    expect(resources.SigningKeyKmsAlias!.Properties).toEqual({
      AliasName: `alias/cth-${STAGE}-snapshot-signing`,
      TargetKeyId: { Ref: "SigningKeyKmsKey" },
    });
  });

  it("each node's agent policy reaches only its own queue, its DLQ and its own status queue", () => {
    for (const node of NODES) {
      const id = nodeId(node);
      const policy = resources[`AgentPolicy${id}`]!;
      expect(policy.Type).toBe("AWS::IAM::ManagedPolicy");
      const statements = (policy.Properties.PolicyDocument as { Statement: Statement[] }).Statement;
      const queue = JSON.stringify(getAtt(`NodeQueue${id}`));
      expect(grants(statements)).toEqual({
        "sqs:ReceiveMessage": [queue],
        "sqs:DeleteMessage": [queue],
        "sqs:ChangeMessageVisibility": [queue],
        "sqs:GetQueueAttributes": [queue],
        "sqs:GetQueueUrl": [JSON.stringify(getAtt(`NodeDlq${id}`))],
        "sqs:SendMessage": [
          JSON.stringify(getAtt(`NodeDlq${id}`)),
          JSON.stringify(getAtt(`NodeStatusQueue${id}`)),
        ].sort(),
      });
      expect(template.Outputs[`AgentPolicyArn${id}`]!.Value).toEqual({ Ref: `AgentPolicy${id}` });
    }
  });

  it("each node has an agent role carrying only its policy, assumable by this account by default", () => {
    expect(ofType("AWS::IAM::Role").filter(([id]) => id.startsWith("AgentRole"))).toHaveLength(NODES.length);
    for (const node of NODES) {
      const id = nodeId(node);
      expect(resources[`AgentRole${id}`]!.Properties).toMatchObject({
        RoleName: `cth-${STAGE}-agent-${node}`,
        ManagedPolicyArns: [{ Ref: `AgentPolicy${id}` }],
        AssumeRolePolicyDocument: {
          Statement: [
            {
              Effect: "Allow",
              // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
              Principal: { AWS: [{ "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root" }] },
              Action: "sts:AssumeRole",
            },
          ],
        },
      });
      expect(resources[`AgentRole${id}`]!.Properties.Policies).toBeUndefined();
      expect(template.Outputs[`AgentRoleArn${id}`]!.Value).toEqual(getAtt(`AgentRole${id}`));
    }
  });

  it("no IAM statement anywhere grants DynamoDB, SQS or EventBridge on a wildcard resource", () => {
    const documents = [
      ...ofType("AWS::IAM::Role").flatMap(([, r]) =>
        ((r.Properties.Policies ?? []) as { PolicyDocument: { Statement: Statement[] } }[]).map(
          (p) => p.PolicyDocument,
        ),
      ),
      ...ofType("AWS::IAM::ManagedPolicy").map(
        ([, r]) => r.Properties.PolicyDocument as { Statement: Statement[] },
      ),
    ];
    expect(documents.length).toBe(4 + NODES.length);
    for (const statement of documents.flatMap((d) => d.Statement)) {
      const sensitive = asList(statement.Action).some((a) => /^(dynamodb|sqs|events):/.test(a));
      for (const action of asList(statement.Action)) expect(action).not.toMatch(/\*/);
      if (!sensitive) continue;
      for (const res of asList(statement.Resource)) {
        expect(typeof res, JSON.stringify(statement)).toBe("object");
        expect(JSON.stringify(res)).not.toContain("*");
      }
    }
  });
});

describe("queues", () => {
  const queue = (id: string) => resources[id]!.Properties;

  it("every node has a FIFO queue redriving to its own FIFO DLQ, both kept 14 days and encrypted", () => {
    const nodeQueueIds = ofType("AWS::SQS::Queue")
      .map(([id]) => id)
      .filter((id) => id.startsWith("NodeQueue"));
    expect(nodeQueueIds.sort()).toEqual(NODES.map((n) => `NodeQueue${nodeId(n)}`).sort());
    for (const node of NODES) {
      const id = nodeId(node);
      const q = queue(`NodeQueue${id}`);
      const dlq = queue(`NodeDlq${id}`);
      expect(q).toMatchObject({
        FifoQueue: true,
        ContentBasedDeduplication: false,
        SqsManagedSseEnabled: true,
      });
      expect(q.RedrivePolicy).toEqual({ deadLetterTargetArn: getAtt(`NodeDlq${id}`), maxReceiveCount: 5 });
      expect(dlq).toMatchObject({
        FifoQueue: true,
        SqsManagedSseEnabled: true,
        QueueName: `cth-${STAGE}-node-${node}-dlq.fifo`,
      });
      expect(q.MessageRetentionPeriod).toBe(FOURTEEN_DAYS);
      expect(dlq.MessageRetentionPeriod).toBe(FOURTEEN_DAYS);
      expect(dlq.RedriveAllowPolicy).toMatchObject({ redrivePermission: "byQueue" });
      expect(q.VisibilityTimeout as number).toBeGreaterThanOrEqual(60);
      expect(template.Outputs[`NodeQueueUrl${id}`]!.Value).toEqual({ Ref: `NodeQueue${id}` });
    }
  });

  it("each node's status queue redrives to the status DLQ, hides messages for 6x the consumer's timeout, feeds the status function", () => {
    expect(resources.StatusQueue).toBeUndefined();
    const timeout = resources.StatusLambdaFunction!.Properties.Timeout as number;
    expect(queue("StatusDlq").MessageRetentionPeriod).toBe(FOURTEEN_DAYS);
    const mappings = ofType("AWS::Lambda::EventSourceMapping").map(([, r]) => r.Properties);
    expect(mappings.map((m) => JSON.stringify(m.EventSourceArn)).sort()).toEqual(statusQueues);
    for (const node of NODES) {
      const id = nodeId(node);
      const status = queue(`NodeStatusQueue${id}`);
      expect(status.FifoQueue).toBeUndefined();
      expect(status.RedrivePolicy).toEqual({ deadLetterTargetArn: getAtt("StatusDlq"), maxReceiveCount: 5 });
      expect(status.VisibilityTimeout as number).toBeGreaterThanOrEqual(6 * timeout);
      expect(status.MessageRetentionPeriod).toBe(FOURTEEN_DAYS);
      expect(template.Outputs[`NodeStatusQueueUrl${id}`]!.Value).toEqual({ Ref: `NodeStatusQueue${id}` });
    }
    for (const mapping of mappings) {
      expect(mapping).toMatchObject({
        FunctionName: getAtt("StatusLambdaFunction"),
        BatchSize: 10,
        FunctionResponseTypes: ["ReportBatchItemFailures"],
      });
    }
  });

  /** The queue policy of `queueId`: exactly one Deny of SendMessage for all but `allowed` (role ids). */
  function expectSendOnlyFrom(queueId: string, allowed: readonly string[]) {
    const policies = ofType("AWS::SQS::QueuePolicy").filter(([, r]) =>
      JSON.stringify(r.Properties.Queues).includes(JSON.stringify({ Ref: queueId })),
    );
    expect(policies, queueId).toHaveLength(1);
    const props = policies[0]![1].Properties;
    expect(props.Queues).toEqual([{ Ref: queueId }]);
    expect((props.PolicyDocument as { Statement: Statement[] }).Statement).toEqual([
      {
        Sid: expect.any(String),
        Effect: "Deny",
        Principal: { AWS: "*" },
        Action: "sqs:SendMessage",
        Resource: getAtt(queueId),
        Condition: { ArnNotEquals: { "aws:PrincipalArn": allowed.map((role) => getAtt(role)) } },
      },
    ]);
  }

  it("a node queue accepts SendMessage only from the four functions' roles", () => {
    for (const node of NODES) expectSendOnlyFrom(`NodeQueue${nodeId(node)}`, SENDER_ROLES);
  });

  it("a node's status queue accepts SendMessage only from that node's agent role", () => {
    for (const node of NODES) {
      const id = nodeId(node);
      expectSendOnlyFrom(`NodeStatusQueue${id}`, [`AgentRole${id}`]);
    }
    // And no other principal can send through identity policies either: no function role may send there.
    for (const role of SENDER_ROLES) {
      const sends = grants(statementsOf(role))["sqs:SendMessage"] ?? [];
      for (const q of statusQueues) expect(sends, role).not.toContain(q);
    }
  });

  it("every queue is encrypted and every DLQ (a redrive target or a failure destination) has a depth alarm", () => {
    const alarms = ofType("AWS::CloudWatch::Alarm").map(([, r]) => r.Properties);
    const dlqIds = new Set<string>(["EventsDlq"]);
    for (const [, r] of ofType("AWS::SQS::Queue")) {
      expect(r.Properties.SqsManagedSseEnabled).toBe(true);
      const target = (r.Properties.RedrivePolicy as { deadLetterTargetArn?: { "Fn::GetAtt": string[] } })
        ?.deadLetterTargetArn?.["Fn::GetAtt"]?.[0];
      if (target) dlqIds.add(target);
    }
    expect(dlqIds.size).toBe(NODES.length + 2);
    for (const dlq of dlqIds) {
      const alarm = alarms.find(
        (a) =>
          a.MetricName === "ApproximateNumberOfMessagesVisible" &&
          JSON.stringify(a.Dimensions) ===
            JSON.stringify([{ Name: "QueueName", Value: getAtt(dlq, "QueueName") }]),
      );
      expect(alarm, `depth alarm for ${dlq}`).toMatchObject({
        Threshold: 1,
        AlarmActions: [{ Ref: "AlarmTopic" }],
      });
    }
  });

  it("the events function parks failures in the events DLQ after bounded retries", () => {
    const config = ofType("AWS::Lambda::EventInvokeConfig").find(
      ([, r]) =>
        JSON.stringify(r.Properties.FunctionName) === JSON.stringify({ Ref: "EventsLambdaFunction" }),
    );
    expect(config?.[1].Properties).toMatchObject({
      MaximumRetryAttempts: 2,
      DestinationConfig: { OnFailure: { Destination: getAtt("EventsDlq") } },
    });
  });
});

describe("tables", () => {
  it("routers: the binding-slot indexes and attributes are exactly those the store queries", () => {
    const definition = routersTableDefinition("routers");
    expect(resources.RoutersTable!.Properties).toMatchObject({
      AttributeDefinitions: definition.AttributeDefinitions,
      GlobalSecondaryIndexes: definition.GlobalSecondaryIndexes,
    });
  });

  it("routers: key router_id, GSI by-host, PITR, SSE, retained", () => {
    const table = resources.RoutersTable!;
    expect((table as unknown as { DeletionPolicy: string }).DeletionPolicy).toBe("Retain");
    expect(table.Properties).toMatchObject({
      BillingMode: "PAY_PER_REQUEST",
      KeySchema: [{ AttributeName: "router_id", KeyType: "HASH" }],
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
    });
    expect(
      (table.Properties as { GlobalSecondaryIndexes: unknown[] }).GlobalSecondaryIndexes[0],
    ).toMatchObject({ IndexName: "by-host", KeySchema: [{ AttributeName: "host", KeyType: "HASH" }] });
  });

  it("idempotency: key id, TTL on expiration, PITR, SSE", () => {
    expect(resources.IdempotencyTable!.Properties).toMatchObject({
      KeySchema: [{ AttributeName: "id", KeyType: "HASH" }],
      TimeToLiveSpecification: { AttributeName: "expiration", Enabled: true },
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
    });
  });
});

describe("HTTP API", () => {
  it("has exactly the route table's routes (through openapi.json), every one behind the JWT authorizer", () => {
    const routes = ofType("AWS::ApiGatewayV2::Route").map(([, r]) => r.Properties);
    // serverless.yml declares none itself: infra/routes.cjs reads openapi.json, generated from lib/http/routes.ts.
    expect(readFileSync(join(root, "serverless.yml"), "utf8")).not.toMatch(/^\s*- httpApi:/m);
    const documented = Object.entries(
      JSON.parse(readFileSync(join(root, "openapi.json"), "utf8")).paths as Record<string, object>,
    ).flatMap(([path, operations]) =>
      Object.keys(operations).map((method) => `${method.toUpperCase()} ${path}`),
    );
    expect(routes.map((r) => r.RouteKey).sort()).toEqual(documented.sort());
    // The handler's router and the local stack's gateway match on exactly these routes too.
    expect(routes.map((r) => r.RouteKey).sort()).toEqual(ROUTES.map((r) => `${r.method} ${r.path}`).sort());
    expect(routes.map((r) => r.RouteKey)).toContain("PUT /v1/routers/{router_id}");
    for (const route of routes) {
      expect(route.AuthorizationType, String(route.RouteKey)).toBe("JWT");
      expect(route.AuthorizerId).toEqual({ Ref: "HttpApiAuthorizerJwt" });
    }
  });

  it("admin routes require the cth:admin scope at the gateway, exactly as the local gateway does", () => {
    const scopes = Object.fromEntries(
      ofType("AWS::ApiGatewayV2::Route").map(([, r]) => [
        String(r.Properties.RouteKey),
        r.Properties.AuthorizationScopes ?? [],
      ]),
    );
    expect(scopes).toMatchObject({
      "POST /v1/notifications": [],
      "GET /v1/routers/{router_id}/conntrack-helpers": [],
      "PUT /v1/routers/{router_id}": ["cth:admin"],
      "DELETE /v1/routers/{router_id}": ["cth:admin"],
    });
    expect(scopes).toEqual(Object.fromEntries(ROUTES.map((r) => [`${r.method} ${r.path}`, r.scopes])));
  });

  it("the authorizer checks the issuer and audience given as parameters", () => {
    expect(resources.HttpApiAuthorizerJwt!.Properties).toMatchObject({
      AuthorizerType: "JWT",
      IdentitySource: ["$request.header.Authorization"],
      JwtConfiguration: { Issuer: ISSUER, Audience: [AUDIENCE] },
    });
  });

  it("the stage is throttled", () => {
    expect(resources.HttpApiStage!.Properties.DefaultRouteSettings).toEqual({
      ThrottlingRateLimit: 50,
      ThrottlingBurstLimit: 100,
    });
  });
});

describe("events and schedule", () => {
  it("a custom bus whose policy scopes publishers per detail type (default: this account only)", () => {
    const policy = resources.EventBus!.Properties.Policy as { Statement: Statement[] };
    // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
    const own = { "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root" };
    const bySid = Object.fromEntries(policy.Statement.map((s) => [s.Sid, s]));
    expect(Object.keys(bySid).sort()).toEqual([
      "LifecycleOnlyFromLifecyclePublishers",
      "LifecyclePublishers",
      "NotificationPublishers",
      "NotificationsOnlyFromNotificationPublishers",
      "OnlyConntrackHelpersSource",
    ]);
    expect(bySid.LifecyclePublishers).toMatchObject({
      Effect: "Allow",
      Principal: { AWS: [own] },
      Action: "events:PutEvents",
      Condition: {
        StringEquals: {
          "events:source": EVENT_SOURCE,
          "events:detail-type": ["Router Upserted", "Router Deleted"],
        },
      },
    });
    expect(bySid.NotificationPublishers).toMatchObject({
      Effect: "Allow",
      Principal: { AWS: [own] },
      Condition: {
        StringEquals: {
          "events:source": EVENT_SOURCE,
          "events:detail-type": ["Conntrack Helper Notification"],
        },
      },
    });
    // The Denies bind this account's principals too (an Allow here only admits other accounts).
    expect(bySid.LifecycleOnlyFromLifecyclePublishers).toMatchObject({
      Effect: "Deny",
      Principal: { AWS: "*" },
      Condition: {
        StringEquals: { "events:detail-type": ["Router Upserted", "Router Deleted"] },
        StringNotEquals: { "aws:PrincipalAccount": [{ Ref: "AWS::AccountId" }] },
      },
    });
    expect(bySid.NotificationsOnlyFromNotificationPublishers).toMatchObject({
      Effect: "Deny",
      Condition: {
        StringEquals: { "events:detail-type": ["Conntrack Helper Notification"] },
        StringNotEquals: { "aws:PrincipalAccount": [{ Ref: "AWS::AccountId" }] },
      },
    });
    expect(bySid.OnlyConntrackHelpersSource).toMatchObject({
      Effect: "Deny",
      Principal: { AWS: "*" },
      Condition: { StringNotEquals: { "events:source": EVENT_SOURCE } },
    });
    // Every detail type the rule routes is covered by exactly one Allow and one Deny.
    const covered = (effect: string) =>
      policy.Statement.filter((s) => s.Effect === effect && s.Condition?.StringEquals?.["events:detail-type"])
        .flatMap((s) => s.Condition!.StringEquals!["events:detail-type"] as string[])
        .sort();
    expect(covered("Allow")).toEqual([...DETAIL_TYPES].sort());
    expect(covered("Deny")).toEqual([...DETAIL_TYPES].sort());
  });

  it("a rule on the bus sends conntrack.helpers events to the events function, with a DLQ", () => {
    const rule = resources.EventsRule!.Properties;
    expect(rule.EventBusName).toEqual({ Ref: "EventBus" });
    // Exactly what the events function handles.
    expect(rule.EventPattern).toEqual({ source: [EVENT_SOURCE], "detail-type": [...DETAIL_TYPES] });
    expect(rule.Targets).toMatchObject([
      { Arn: getAtt("EventsLambdaFunction"), DeadLetterConfig: { Arn: getAtt("EventsDlq") } },
    ]);
    expect(resources.EventsRuleInvokePermission!.Properties).toMatchObject({
      Principal: "events.amazonaws.com",
      SourceArn: getAtt("EventsRule"),
    });
  });

  it("the reconciler runs every 5 minutes by default", () => {
    const schedules = ofType("AWS::Events::Rule")
      .map(([, r]) => r.Properties)
      .filter((p) => p.ScheduleExpression !== undefined);
    expect(schedules).toHaveLength(1);
    expect(schedules[0]).toMatchObject({ ScheduleExpression: "rate(5 minutes)", State: "ENABLED" });
    expect(JSON.stringify(schedules[0]!.Targets)).toContain("ReconcileLambdaFunction");
  });

  it("refused events are alarmed per detail type (the events function's ParkedEvents metric)", () => {
    const parked = ofType("AWS::CloudWatch::Alarm")
      .map(([, r]) => r.Properties)
      .filter((a) => a.MetricName === "ParkedEvents");
    const rule = resources.EventsRule!.Properties.EventPattern as { "detail-type": string[] };
    expect(parked.map((a) => (a.Dimensions as { Value: string }[])[1]!.Value).sort()).toEqual(
      [...rule["detail-type"]].sort(),
    );
    for (const alarm of parked) {
      expect(alarm).toMatchObject({
        Namespace: "ConntrackHelpers",
        Dimensions: [{ Name: "Function", Value: "events" }, {}],
      });
    }
  });

  it("content mismatches and unbound reports (the status function's EMF metrics) are alarmed", () => {
    const alarms = ofType("AWS::CloudWatch::Alarm").map(([, r]) => r.Properties);
    for (const metric of ["ContentMismatches", "UnboundReports"]) {
      const found = alarms.filter((a) => a.MetricName === metric);
      expect(found, metric).toHaveLength(1);
      expect(found[0]).toMatchObject({
        Namespace: "ConntrackHelpers",
        Dimensions: [{ Name: "Function", Value: "status" }],
        Statistic: "Sum",
        Period: 300,
        Threshold: 1,
        ComparisonOperator: "GreaterThanOrEqualToThreshold",
        AlarmActions: [{ Ref: "AlarmTopic" }],
      });
    }
  });

  it("the HTTP API's 5xx responses are alarmed (the http function answers errors, so its Errors never counts them)", () => {
    const alarms = ofType("AWS::CloudWatch::Alarm").map(([, r]) => r.Properties);
    const found = alarms.filter((a) => a.Namespace === "AWS/ApiGateway" && a.MetricName === "5xx");
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({
      Dimensions: [
        { Name: "ApiId", Value: { Ref: "HttpApi" } },
        { Name: "Stage", Value: "$default" },
      ],
      Statistic: "Sum",
      Threshold: 1,
      ComparisonOperator: "GreaterThanOrEqualToThreshold",
      AlarmActions: [{ Ref: "AlarmTopic" }],
    });
    expect(resources.HttpApi?.Type).toBe("AWS::ApiGatewayV2::Api");
  });

  it("every function has an errors alarm", () => {
    const alarms = ofType("AWS::CloudWatch::Alarm").map(([, r]) => r.Properties);
    for (const fn of ["Http", "Events", "Status", "Reconcile"]) {
      expect(
        alarms.some(
          (a) =>
            a.MetricName === "Errors" &&
            JSON.stringify(a.Dimensions) ===
              JSON.stringify([{ Name: "FunctionName", Value: { Ref: `${fn}LambdaFunction` } }]),
        ),
        fn,
      ).toBe(true);
    }
  });
});

describe("parameter resolvers", () => {
  const nodes = require(join(root, "infra/nodes.cjs")) as {
    parseNodes(raw: string): string[];
    build(params: Record<string, Json>): { resources: Record<string, Resource> };
  };
  const publishers = require(join(root, "infra/publishers.cjs")) as {
    build(params: { lifecyclePublishers: string; notificationPublishers: string; busName: string }): {
      busPolicy: { Statement: Statement[] };
      lifecycleAccounts: Json;
      notificationAccounts: Json;
    };
  };
  const signingResolver = require(join(root, "infra/signing.cjs")) as { parameter(name: string): Json };

  it("reject node names that cannot be queue names, duplicates after id mapping, and an empty list", () => {
    expect(nodes.parseNodes(" a-1 ,b_2,")).toEqual(["a-1", "b_2"]);
    expect(() => nodes.parseNodes("")).toThrow(/required/);
    expect(() => nodes.parseNodes("net.1")).toThrow(/must match/);
    expect(() => nodes.parseNodes(`n${"x".repeat(48)}`)).toThrow(/must match/);
    expect(() => nodes.parseNodes("net-1,net_1")).toThrow(/same resource id/);
  });

  it("agent roles trust self, accounts, principal ARNs, EC2 (with an instance profile) or Roles Anywhere", () => {
    const build = (agentTrustPrincipal: string) =>
      nodes.build({
        prefix: "cth-p",
        nodes: ["n-1"],
        maxReceiveCount: 5,
        visibility: 60,
        agentTrustPrincipal,
      }).resources;
    const trust = (r: Record<string, Resource>) =>
      (r.AgentRoleN1!.Properties.AssumeRolePolicyDocument as { Statement: Statement[] }).Statement;
    const onPrem = build("rolesanywhere.amazonaws.com");
    expect(trust(onPrem)).toEqual([
      {
        Effect: "Allow",
        Principal: { Service: "rolesanywhere.amazonaws.com" },
        Action: ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
        Condition: { StringEquals: { "aws:SourceAccount": { Ref: "AWS::AccountId" } } },
      },
    ]);
    expect(onPrem.AgentInstanceProfileN1).toBeUndefined();
    const ec2 = build("ec2.amazonaws.com, arn:aws:iam::111122223333:role/ops");
    expect(trust(ec2).map((s) => s.Principal)).toEqual([
      { AWS: ["arn:aws:iam::111122223333:role/ops"] },
      { Service: "ec2.amazonaws.com" },
    ]);
    expect(ec2.AgentInstanceProfileN1!.Properties).toEqual({
      InstanceProfileName: "cth-p-agent-n-1",
      Roles: [{ Ref: "AgentRoleN1" }],
    });
    for (const bad of ["none", "sqs.amazonaws.com", "*"])
      expect(() => build(bad), bad).toThrow(/agentTrustPrincipal/);
  });

  it("event publishers are self, accounts or IAM principal ARNs per kind, nothing else", () => {
    const built = publishers.build({
      lifecyclePublishers: "arn:aws:iam::444455556666:role/neutron",
      notificationPublishers: "self, 111122223333",
      busName: "b",
    });
    const bySid = Object.fromEntries(built.busPolicy.Statement.map((s) => [s.Sid, s]));
    // A lifecycle publisher named by role: only that role of its account, and this account not at all.
    expect(bySid.LifecyclePublishers!.Principal).toEqual({ AWS: ["arn:aws:iam::444455556666:role/neutron"] });
    expect(bySid.LifecycleOnlyFromLifecyclePublishers!.Condition).toEqual({
      StringEquals: { "events:detail-type": ["Router Upserted", "Router Deleted"] },
      ArnNotEquals: { "aws:PrincipalArn": ["arn:aws:iam::444455556666:role/neutron"] },
    });
    expect(bySid.NotificationPublishers!.Principal).toEqual({
      AWS: [
        // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
        { "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root" },
        // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
        { "Fn::Sub": "arn:${AWS::Partition}:iam::111122223333:root" },
      ],
    });
    expect(built.lifecycleAccounts).toEqual({ "Fn::Join": [",", ["444455556666"]] });
    expect(built.notificationAccounts).toEqual({
      "Fn::Join": [",", [{ Ref: "AWS::AccountId" }, "111122223333"]],
    });
    // `none`: no Allow at all and a Deny for everyone.
    const closed = publishers.build({
      lifecyclePublishers: "none",
      notificationPublishers: "self",
      busName: "b",
    });
    expect(closed.lifecycleAccounts).toBe("none");
    expect(closed.busPolicy.Statement.map((s) => s.Sid)).not.toContain("LifecyclePublishers");
    expect(
      closed.busPolicy.Statement.find((s) => s.Sid === "LifecycleOnlyFromLifecyclePublishers")!.Condition,
    ).toEqual({ StringEquals: { "events:detail-type": ["Router Upserted", "Router Deleted"] } });
    for (const bad of [
      "*",
      "arn:aws:iam::*:root",
      "none,self",
      "arn:aws:sts::111122223333:assumed-role/x/y",
    ]) {
      expect(
        () => publishers.build({ lifecyclePublishers: bad, notificationPublishers: "self", busName: "b" }),
        bad,
      ).toThrow(/neither/);
    }
  });

  it("the signing key parameter is a fully qualified SSM name; its ARN drops the leading slash", () => {
    expect(signingResolver.parameter("/cth/prod/snapshot-signing-key")).toEqual({
      name: "/cth/prod/snapshot-signing-key",
      arn: {
        "Fn::Sub": `arn:\${AWS::Partition}:ssm:\${AWS::Region}:\${AWS::AccountId}:parameter/cth/prod/snapshot-signing-key`,
      },
    });
    for (const bad of ["cth/prod/key", "/cth//key", "/cth/*", ""]) {
      expect(() => signingResolver.parameter(bad), bad).toThrow(/fully qualified/);
    }
  });
});
