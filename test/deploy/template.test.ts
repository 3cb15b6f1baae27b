/**
 * Packages the real service with the osls CLI (no AWS credentials at all) and asserts on the CloudFormation it
 * generates: least privilege, FIFO + DLQ pairing, retention and visibility, encryption, the JWT authorizer on
 * every route, alarms, and the size of each bundle.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DETAIL_TYPES, EVENT_SOURCE } from "../../functions/events.ts";
import { ROUTES } from "../../scripts/local/gateway.ts";

const run = promisify(execFile);
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

beforeAll(async () => {
  outDir = mkdtempSync(join(tmpdir(), "cth-package-"));
  // Prove that packaging needs no AWS credentials: strip every credential source the SDK chain could find.
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const key of Object.keys(env)) if (key.startsWith("AWS_")) delete env[key];
  Object.assign(env, {
    AWS_SHARED_CREDENTIALS_FILE: join(outDir, "no-credentials"),
    AWS_CONFIG_FILE: join(outDir, "no-config"),
    AWS_EC2_METADATA_DISABLED: "true",
    SLS_TELEMETRY_DISABLED: "1",
    SLS_NOTIFICATIONS_MODE: "off",
  });
  await run(
    "npx",
    [
      "osls",
      "package",
      "--stage",
      STAGE,
      "--package",
      outDir,
      `--param=nodes=${NODES.join(",")}`,
      `--param=jwtIssuer=${ISSUER}`,
      `--param=jwtAudience=${AUDIENCE}`,
    ],
    { cwd: root, env, timeout: 240_000, maxBuffer: 16 * 1024 * 1024 },
  );
  template = JSON.parse(readFileSync(join(outDir, "cloudformation-template-update-stack.json"), "utf8"));
  resources = template.Resources;
  for (const file of readdirSync(outDir).filter((f) => f.endsWith(".zip"))) {
    bundleSizes[file] = statSync(join(outDir, file)).size;
  }
}, 300_000);

afterAll(() => {
  if (outDir) rmSync(outDir, { recursive: true, force: true });
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
      expect(vars.CTH_STATUS_QUEUE_URL).toEqual({ Ref: "StatusQueue" });
      expect(vars.CTH_NODE_QUEUE_URL_TEMPLATE).toEqual({
        "Fn::Sub": `https://sqs.\${AWS::Region}.\${AWS::URLSuffix}/\${AWS::AccountId}/cth-${STAGE}-node-{node}.fifo`,
      });
      expect(vars).toMatchObject({
        CTH_MAX_BODY_BYTES: "65536",
        CTH_MAX_HELPERS_PER_NOTIFICATION: "64",
        CTH_MAX_HELPERS_PER_ROUTER: "128",
      });
    }
    const reconcileVars = (resources.ReconcileLambdaFunction!.Properties.Environment as { Variables: object })
      .Variables;
    expect(reconcileVars).toMatchObject({ CTH_RECONCILE_STALE_SECONDS: "900" });
  });

  it("the node queue URL template names exactly the queues the template creates", () => {
    for (const node of NODES) {
      expect(resources[`NodeQueue${nodeId(node)}`]!.Properties.QueueName).toBe(
        `cth-${STAGE}-node-${node}.fifo`,
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

describe("least privilege", () => {
  it("http: routers read/write, idempotency records, send to node queues; nothing else", () => {
    expect(grants(statementsOf("HttpFunctionRole"))).toEqual({
      ...logs("http"),
      "dynamodb:GetItem": [idem, routers].sort(),
      "dynamodb:BatchGetItem": [routers],
      "dynamodb:PutItem": [idem, routers].sort(),
      "dynamodb:DeleteItem": [idem],
      "dynamodb:UpdateItem": [idem, routers].sort(),
      "sqs:SendMessage": nodeQueues,
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
    });
  });

  it("status: record applied revisions, list a node's routers, resync, consume the status queue", () => {
    expect(grants(statementsOf("StatusFunctionRole"))).toEqual({
      ...logs("status"),
      "dynamodb:GetItem": [routers],
      "dynamodb:BatchGetItem": [routers],
      "dynamodb:UpdateItem": [routers],
      // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
      "dynamodb:Query": [JSON.stringify({ "Fn::Sub": "${RoutersTable.Arn}/index/by-host" })],
      "sqs:SendMessage": nodeQueues,
      "sqs:ReceiveMessage": [JSON.stringify(getAtt("StatusQueue"))],
      "sqs:DeleteMessage": [JSON.stringify(getAtt("StatusQueue"))],
      "sqs:GetQueueAttributes": [JSON.stringify(getAtt("StatusQueue"))],
    });
  });

  it("reconcile: scan routers and send snapshots; no writes to the table", () => {
    expect(grants(statementsOf("ReconcileFunctionRole"))).toEqual({
      ...logs("reconcile"),
      "dynamodb:Scan": [routers],
      "sqs:SendMessage": nodeQueues,
    });
  });

  it("each node's agent policy reaches only its own queue, its DLQ and the status queue", () => {
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
          JSON.stringify(getAtt("StatusQueue")),
        ].sort(),
      });
      expect(template.Outputs[`AgentPolicyArn${id}`]!.Value).toEqual({ Ref: `AgentPolicy${id}` });
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

  it("the status queue redrives to a DLQ and hides messages for at least 6x the consumer's timeout", () => {
    const status = queue("StatusQueue");
    expect(status.RedrivePolicy).toEqual({ deadLetterTargetArn: getAtt("StatusDlq"), maxReceiveCount: 5 });
    const timeout = resources.StatusLambdaFunction!.Properties.Timeout as number;
    expect(status.VisibilityTimeout as number).toBeGreaterThanOrEqual(6 * timeout);
    expect(queue("StatusDlq").MessageRetentionPeriod).toBe(FOURTEEN_DAYS);
    const [mapping] = ofType("AWS::Lambda::EventSourceMapping");
    expect(mapping![1].Properties).toMatchObject({
      EventSourceArn: getAtt("StatusQueue"),
      FunctionName: getAtt("StatusLambdaFunction"),
      FunctionResponseTypes: ["ReportBatchItemFailures"],
    });
    expect(ofType("AWS::Lambda::EventSourceMapping")).toHaveLength(1);
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
  it("routers: key router_id, GSI by-host, PITR, SSE, retained", () => {
    const table = resources.RoutersTable!;
    expect((table as unknown as { DeletionPolicy: string }).DeletionPolicy).toBe("Retain");
    expect(table.Properties).toMatchObject({
      BillingMode: "PAY_PER_REQUEST",
      KeySchema: [{ AttributeName: "router_id", KeyType: "HASH" }],
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
      GlobalSecondaryIndexes: [
        { IndexName: "by-host", KeySchema: [{ AttributeName: "host", KeyType: "HASH" }] },
      ],
    });
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
  it("has exactly the contract's routes, every one behind the JWT authorizer", () => {
    const routes = ofType("AWS::ApiGatewayV2::Route").map(([, r]) => r.Properties);
    expect(routes.map((r) => r.RouteKey).sort()).toEqual([
      "DELETE /v1/routers/{router_id}",
      "GET /v1/routers/{router_id}/conntrack-helpers",
      "POST /v1/notifications",
      "PUT /v1/routers/{router_id}",
    ]);
    // The local stack's gateway serves exactly these routes too.
    expect(routes.map((r) => r.RouteKey).sort()).toEqual(ROUTES.map((r) => `${r.method} ${r.path}`).sort());
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
    expect(scopes).toEqual({
      "POST /v1/notifications": [],
      "GET /v1/routers/{router_id}/conntrack-helpers": [],
      "PUT /v1/routers/{router_id}": ["cth:admin"],
      "DELETE /v1/routers/{router_id}": ["cth:admin"],
    });
    expect(scopes).toEqual(Object.fromEntries(ROUTES.map((r) => [`${r.method} ${r.path}`, r.scopes])));
  });

  it("admin routes require the cth:admin scope at the gateway, exactly as the local gateway does", () => {
    const scopes = Object.fromEntries(
      ofType("AWS::ApiGatewayV2::Route").map(([, r]) => [
        String(r.Properties.RouteKey),
        r.Properties.AuthorizationScopes ?? [],
      ]),
    );
    expect(scopes).toEqual({
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
  it("a custom bus whose policy admits only this account and source conntrack.helpers", () => {
    const policy = resources.EventBus!.Properties.Policy as { Statement: Record<string, Json>[] };
    const allow = policy.Statement.find((s) => s.Effect === "Allow");
    const deny = policy.Statement.find((s) => s.Effect === "Deny");
    expect(allow).toMatchObject({
      // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
      Principal: { AWS: [{ "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root" }] },
      Action: "events:PutEvents",
      Condition: { StringEquals: { "events:source": "conntrack.helpers" } },
    });
    expect(deny).toMatchObject({
      Principal: { AWS: "*" },
      Condition: { StringNotEquals: { "events:source": "conntrack.helpers" } },
    });
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
  };
  const publishers = require(join(root, "infra/publishers.cjs")) as { principals(raw: string): Json[] };

  it("reject node names that cannot be queue names, duplicates after id mapping, and an empty list", () => {
    expect(nodes.parseNodes(" a-1 ,b_2,")).toEqual(["a-1", "b_2"]);
    expect(() => nodes.parseNodes("")).toThrow(/required/);
    expect(() => nodes.parseNodes("net.1")).toThrow(/must match/);
    expect(() => nodes.parseNodes(`n${"x".repeat(48)}`)).toThrow(/must match/);
    expect(() => nodes.parseNodes("net-1,net_1")).toThrow(/same resource id/);
  });

  it("event publishers are accounts or IAM principal ARNs, nothing else", () => {
    expect(publishers.principals("111122223333, arn:aws:iam::444455556666:role/neutron")).toEqual([
      // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
      { "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root" },
      // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
      { "Fn::Sub": "arn:${AWS::Partition}:iam::111122223333:root" },
      "arn:aws:iam::444455556666:role/neutron",
    ]);
    expect(() => publishers.principals("*")).toThrow(/neither/);
    expect(() => publishers.principals("arn:aws:iam::*:root")).toThrow(/neither/);
  });
});
