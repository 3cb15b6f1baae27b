/**
 * The packaged template deployed: osls's CloudFormation created as a stack in moto_server, then the functions'
 * production handlers run with the environment the template gives each function (as moto resolved it) against
 * the tables, queues, key and mappings that stack created. An index name, a queue attribute or a variable
 * the template and the code disagree on fails here. What moto cannot create is listed in
 * MOTO_CANNOT_CREATE (test/deploy/moto-cloudformation.ts); moto checks no IAM, so least privilege stays
 * template.test.ts's.
 */
import { randomUUID } from "node:crypto";
import { DescribeTableCommand, DynamoDBClient, GetItemCommand } from "@aws-sdk/client-dynamodb";
import { GetQueueAttributesCommand, SendMessageCommand, SQSClient } from "@aws-sdk/client-sqs";
import { PutParameterCommand, SSMClient } from "@aws-sdk/client-ssm";
import { unmarshall } from "@aws-sdk/util-dynamodb";
import type { Context, SQSEvent } from "aws-lambda";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { handler as eventsHandler } from "../../functions/events.ts";
import { handler as httpHandler } from "../../functions/http.ts";
import { handler as reconcileHandler } from "../../functions/reconcile.ts";
import { handler as statusHandler } from "../../functions/status.ts";
import { queueUrlFromTemplate } from "../../lib/aws/command-queue.ts";
import {
  IDEMPOTENCY_TTL_ATTRIBUTE,
  idempotencyTableDefinition,
  routersTableDefinition,
} from "../../lib/aws/tables.ts";
import { loadConfig } from "../../lib/config.ts";
import { helperSetDigest } from "../../lib/digest.ts";
import type { ApiGatewayEvent, ApiGatewayResult } from "../../lib/http/api-event.ts";
import { KEY_ID_ATTRIBUTE, publicKeyFromPem, SIGNATURE_ATTRIBUTE, verifyBody } from "../../lib/signing.ts";
import { drainQueue, EMULATOR_CREDENTIALS, motoMissing, startMotoServer } from "../support/emulators.ts";
import { eventBridgeEvent, httpApiClaims, httpApiEvent, lambdaContext } from "../support/events.ts";
import { describeNeeding } from "../support/requirements.ts";
import { testKey } from "../support/signing.ts";
import {
  cloudFormation,
  type FunctionConfiguration,
  lambdaApi,
  MOTO_CANNOT_CREATE,
  type MotoTemplate,
  prepareForMoto,
  type Stack,
  uploadCode,
} from "./moto-cloudformation.ts";
import { type PackagedService, packageService, type Template } from "./package-template.ts";

const NODES = ["net-1", "net_b2"] as const;
const STAGE = "ci";
const REGION = "us-east-1";
const CODE_BUCKET = "cth-moto-function-code";
const PROJECT = "project-moto";
const FUNCTIONS = ["Http", "Events", "Status", "Reconcile"] as const;
type Fn = (typeof FUNCTIONS)[number];

/** Logical ids of a node's resources, as infra/nodes.cjs names them. */
const nodeId = (node: string) =>
  node
    .split(/[-_]/)
    .map((p) => p[0]!.toUpperCase() + p.slice(1))
    .join("");

const signingKey = testKey("moto-stack");
const verifyKeys = new Map([[signingKey.keyId, publicKeyFromPem(signingKey.publicKeyPem)]]);

let moto: Awaited<ReturnType<typeof startMotoServer>> | undefined;
let packaged: PackagedService | undefined;
let prepared: MotoTemplate;
let stack: Stack;
let functions: Record<Fn, FunctionConfiguration>;
let dynamo: DynamoDBClient;
let sqs: SQSClient;

/** What Lambda would set, plus the template's own variables and the emulator endpoint. */
function lambdaEnv(fn: Fn): Record<string, string> {
  const configuration = functions[fn];
  return {
    ...configuration.Environment?.Variables,
    AWS_REGION: REGION,
    AWS_ACCESS_KEY_ID: EMULATOR_CREDENTIALS.accessKeyId,
    AWS_SECRET_ACCESS_KEY: EMULATOR_CREDENTIALS.secretAccessKey,
    AWS_LAMBDA_FUNCTION_NAME: configuration.FunctionArn.split(":").at(-1)!,
    CTH_AWS_ENDPOINT: moto!.endpoint,
  };
}

/** Runs `call` with exactly `fn`'s environment (each production handler wires itself on its first call). */
async function inLambda<T>(fn: Fn, call: (context: Context) => Promise<T>): Promise<T> {
  const saved = { ...process.env };
  for (const key of Object.keys(process.env)) {
    if (key.startsWith("AWS_") || key.startsWith("CTH_")) delete process.env[key];
  }
  Object.assign(process.env, lambdaEnv(fn));
  const context: Context = {
    ...lambdaContext(),
    functionName: lambdaEnv(fn).AWS_LAMBDA_FUNCTION_NAME!,
    invokedFunctionArn: functions[fn].FunctionArn,
  };
  try {
    return await call(context);
  } finally {
    for (const key of Object.keys(process.env)) if (!(key in saved)) delete process.env[key];
    Object.assign(process.env, saved);
  }
}

const http = (event: ApiGatewayEvent) =>
  inLambda("Http", (context) => httpHandler(event, context) as Promise<ApiGatewayResult>);

const output = (key: string): string => {
  const value = stack.outputs[key];
  expect(value, `stack output ${key}`).toBeDefined();
  return value!;
};

async function queueArn(url: string): Promise<string> {
  const reply = await sqs.send(
    new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ["QueueArn"] }),
  );
  return reply.Attributes!.QueueArn!;
}

/** The node's snapshots, each checked to carry the dispatcher's signature over its exact body. */
async function snapshotsOn(node: string): Promise<Record<string, unknown>[]> {
  // Deleted as the agent would: a FIFO group holds back its next message while one is in flight.
  const messages = await drainQueue(sqs, output(`NodeQueueUrl${nodeId(node)}`));
  return messages.map((message) => {
    const attributes = message.MessageAttributes ?? {};
    expect(
      verifyBody(
        verifyKeys,
        message.Body!,
        attributes[KEY_ID_ATTRIBUTE]?.StringValue,
        attributes[SIGNATURE_ATTRIBUTE]?.StringValue,
      ),
    ).toEqual({ ok: true, keyId: signingKey.keyId });
    return JSON.parse(message.Body!) as Record<string, unknown>;
  });
}

/** Sends `body` to the node's status queue and hands it to the status function as its mapping would. */
async function report(node: string, body: unknown) {
  const url = output(`NodeStatusQueueUrl${nodeId(node)}`);
  await sqs.send(new SendMessageCommand({ QueueUrl: url, MessageBody: JSON.stringify(body) }));
  const [message, ...rest] = await drainQueue(sqs, url);
  expect(rest).toEqual([]);
  const mappings = await lambdaApi(moto!.endpoint, REGION).eventSourceMappings(functions.Status.FunctionArn);
  const source = mappings.find((m) => m.EventSourceArn.endsWith(`:${url.split("/").at(-1)}`));
  expect(source, `a mapping from ${url}`).toBeDefined();
  const event: SQSEvent = {
    Records: [
      {
        messageId: message!.MessageId!,
        receiptHandle: message!.ReceiptHandle!,
        body: message!.Body!,
        attributes: {
          ApproximateReceiveCount: "1",
          SentTimestamp: String(Date.now()),
          SenderId: "agent",
          ApproximateFirstReceiveTimestamp: String(Date.now()),
        },
        messageAttributes: {},
        md5OfBody: message!.MD5OfBody!,
        eventSource: "aws:sqs",
        eventSourceARN: source!.EventSourceArn,
        awsRegion: REGION,
      },
    ],
  };
  return inLambda("Status", (context) => statusHandler(event, context));
}

async function routerItem(routerId: string): Promise<Record<string, unknown>> {
  const reply = await dynamo.send(
    new GetItemCommand({
      TableName: output("RoutersTableName"),
      Key: { router_id: { S: routerId } },
      ConsistentRead: true,
    }),
  );
  return unmarshall(reply.Item!);
}

describeNeeding(motoMissing(), "the packaged template deployed in moto_server", () => {
  beforeAll(async () => {
    [packaged, moto] = await Promise.all([
      packageService({
        stage: STAGE,
        nodes: NODES,
        jwtIssuer: "https://idp.example.test/realms/cloud",
        jwtAudience: "cth-api",
      }),
      startMotoServer(),
    ]);
    await uploadCode(moto.endpoint, REGION, CODE_BUCKET, packaged);
    prepared = prepareForMoto(packaged.template, CODE_BUCKET);
    stack = await cloudFormation(moto.endpoint, REGION).create(`cth-${STAGE}`, prepared.template);
    const clientConfig = { region: REGION, endpoint: moto.endpoint, credentials: EMULATOR_CREDENTIALS };
    dynamo = new DynamoDBClient(clientConfig);
    sqs = new SQSClient(clientConfig);
    const ssm = new SSMClient(clientConfig);
    // Created out of band in a real deployment (scripts/signing-key.ts), under the stack's KMS key.
    await ssm.send(
      new PutParameterCommand({
        Name: stack.outputs.SigningKeyParameterName!,
        Type: "SecureString",
        KeyId: stack.outputs.SigningKeyKmsKeyArn!,
        Value: JSON.stringify({ key_id: signingKey.keyId, private_key_pem: signingKey.privateKeyPem }),
      }),
    );
    ssm.destroy();
    const lambda = lambdaApi(moto.endpoint, REGION);
    const entries = await Promise.all(
      FUNCTIONS.map(
        async (fn) =>
          [fn, await lambda.configuration(stack.resources[`${fn}LambdaFunction`]!.physicalId)] as const,
      ),
    );
    functions = Object.fromEntries(entries) as Record<Fn, FunctionConfiguration>;
  }, 120_000);

  afterAll(async () => {
    dynamo?.destroy();
    sqs?.destroy();
    await moto?.stop();
    packaged?.remove();
  });

  it("moto creates every resource of the template but the types it has no model for", () => {
    expect(stack.status).toBe("CREATE_COMPLETE");
    const kept = Object.keys(prepared.template.Resources).sort();
    expect(Object.keys(stack.resources).sort()).toEqual(kept);
    for (const id of kept) expect(stack.resources[id]!.status, id).toBe("CREATE_COMPLETE");
    // Only what moto cannot model, and the HTTP API's invoke permission that names the API, is left out.
    for (const dropped of prepared.dropped) {
      expect(
        dropped.type in MOTO_CANNOT_CREATE || dropped.type === "AWS::Lambda::Permission",
        `${dropped.logicalId} (${dropped.type}): ${dropped.reason}`,
      ).toBe(true);
    }
    expect([...kept, ...prepared.dropped.map((d) => d.logicalId)].sort()).toEqual(
      Object.keys(packaged!.template.Resources).sort(),
    );
    const count = (items: readonly { type: string }[]) => {
      const counts = new Map<string, number>();
      for (const { type } of items) counts.set(type, (counts.get(type) ?? 0) + 1);
      return [...counts].map(([type, n]) => `${type} x${n}`);
    };
    console.info(`moto created: ${count(Object.values(stack.resources)).join(", ")}`);
    console.info(`not created in moto: ${count(prepared.dropped).join(", ")}`);
    console.info(`worked around: ${prepared.patched.map((p) => `${p.logicalId} (${p.reason})`).join("; ")}`);
  });

  it("the routers table has the keys and indexes lib/aws/tables.ts defines; the idempotency table Powertools'", async () => {
    const normalize = (table: {
      KeySchema?: unknown;
      AttributeDefinitions?: { AttributeName?: string }[];
      GlobalSecondaryIndexes?: { IndexName?: string; KeySchema?: unknown; Projection?: unknown }[];
    }) => ({
      KeySchema: table.KeySchema,
      AttributeDefinitions: [...(table.AttributeDefinitions ?? [])].sort((a, b) =>
        String(a.AttributeName).localeCompare(String(b.AttributeName)),
      ),
      GlobalSecondaryIndexes: (table.GlobalSecondaryIndexes ?? [])
        .map(({ IndexName, KeySchema, Projection }) => ({ IndexName, KeySchema, Projection }))
        .sort((a, b) => String(a.IndexName).localeCompare(String(b.IndexName))),
    });
    const routers = output("RoutersTableName");
    const described = await dynamo.send(new DescribeTableCommand({ TableName: routers }));
    expect(normalize(described.Table!)).toEqual(normalize(routersTableDefinition(routers)));

    const idempotency = output("IdempotencyTableName");
    const table = (await dynamo.send(new DescribeTableCommand({ TableName: idempotency }))).Table!;
    const expected = idempotencyTableDefinition(idempotency);
    expect(table.KeySchema).toEqual(expected.KeySchema);
    // moto's CloudFormation ignores TimeToLiveSpecification (DescribeTimeToLive says DISABLED), so the
    // attribute Powertools writes is checked on the template itself.
    expect(packaged!.template.Resources.IdempotencyTable!.Properties.TimeToLiveSpecification).toEqual({
      AttributeName: IDEMPOTENCY_TTL_ATTRIBUTE,
      Enabled: true,
    });
  });

  it("each function's configuration loads and names only tables and queues the stack created", async () => {
    for (const fn of FUNCTIONS) {
      const env = lambdaEnv(fn);
      for (const [name, value] of Object.entries(env)) expect(typeof value, `${fn} ${name}`).toBe("string");
      const config = loadConfig(env);
      expect(config.routersTable, fn).toBe(output("RoutersTableName"));
      expect(config.idempotencyTable, fn).toBe(output("IdempotencyTableName"));
      expect(config.signingKey, fn).toEqual({
        kind: "ssm",
        parameterName: output("SigningKeyParameterName"),
      });
      expect([...(config.nodes ?? [])].sort(), fn).toEqual([...NODES].sort());
      for (const node of NODES) {
        const url = queueUrlFromTemplate(config.nodeQueueUrlTemplate, node);
        expect(url, `${fn} ${node}`).toBe(output(`NodeQueueUrl${nodeId(node)}`));
        const attributes = await sqs.send(
          new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ["FifoQueue", "RedrivePolicy"] }),
        );
        expect(attributes.Attributes?.FifoQueue, url).toBe("true");
        expect(JSON.parse(attributes.Attributes!.RedrivePolicy!).deadLetterTargetArn).toBe(
          await queueArn(output(`NodeDlqUrl${nodeId(node)}`)),
        );
        if (fn === "Status") {
          expect(config.statusQueueNameTemplate.replace("{node}", node)).toBe(
            output(`NodeStatusQueueUrl${nodeId(node)}`)
              .split("/")
              .at(-1),
          );
        }
      }
    }
  });

  it("a stack moto refuses is a rejection naming moto's reason, not a silent half-created stack", async () => {
    await expect(
      cloudFormation(moto!.endpoint, REGION).create(`cth-${STAGE}`, prepared.template),
    ).rejects.toThrow(/CreateStack: 400 .*AlreadyExistsException/);
  });

  it("the status function is mapped from every node's status queue and reports partial batch failures", async () => {
    const mappings = await lambdaApi(moto!.endpoint, REGION).eventSourceMappings(
      functions.Status.FunctionArn,
    );
    const statusQueues = await Promise.all(
      NODES.map((node) => queueArn(output(`NodeStatusQueueUrl${nodeId(node)}`))),
    );
    expect(mappings.map((m) => m.EventSourceArn).sort()).toEqual(statusQueues.sort());
    for (const mapping of mappings) {
      expect(mapping.FunctionArn).toBe(functions.Status.FunctionArn);
      expect(mapping.FunctionResponseTypes).toEqual(["ReportBatchItemFailures"]);
    }
  });

  // The steps below share one router on net-1 and one on net_b2, in order, as a deployment would see them.
  const routerId = randomUUID();
  const helperId = randomUUID();
  const eventRouterId = randomUUID();
  let snapshot: Record<string, unknown>;

  it("http: a router PUT and a notification with an Idempotency-Key land signed on the stack's node queue", async () => {
    const put = await http(
      httpApiEvent({
        method: "PUT",
        path: `/v1/routers/${routerId}`,
        body: { project_id: PROJECT, host: "net-1" },
        claims: httpApiClaims("operators", ["admin"]),
      }),
    );
    expect(put.statusCode, put.body).toBe(201);
    const notification = {
      event: "created",
      conntrack_helpers: [{ id: helperId, router_id: routerId, protocol: "tcp", port: 21, helper: "ftp" }],
    };
    const post = () =>
      http(
        httpApiEvent({
          method: "POST",
          path: "/v1/notifications",
          body: notification,
          headers: { "idempotency-key": `moto-${helperId}` },
          claims: httpApiClaims(PROJECT),
        }),
      );
    const accepted = await post();
    expect(accepted.statusCode, accepted.body).toBe(202);
    expect(JSON.parse(accepted.body)).toEqual({ routers: [{ router_id: routerId, revision: 1 }] });
    // The replay comes from the idempotency table the template made, not from a second write.
    const replay = await post();
    expect(replay.statusCode).toBe(202);
    expect(replay.body).toBe(accepted.body);

    const snapshots = await snapshotsOn("net-1");
    // A router without helpers has nothing to apply yet: the first snapshot is the notification's.
    expect(snapshots.map((s) => s.revision)).toEqual([1]);
    snapshot = snapshots.at(-1)!;
    expect(snapshot).toMatchObject({
      kind: "router-sync",
      router_id: routerId,
      helpers: [{ id: helperId, protocol: "tcp", port: 21, helper: "ftp" }],
    });
    expect(await routerItem(routerId)).toMatchObject({ revision: 1, host: "net-1" });
  });

  it("status: an applied report from net-1's status queue is recorded in the stack's table", async () => {
    const result = await report("net-1", {
      v: 1,
      kind: "applied",
      router_id: routerId,
      revision: 1,
      digest: helperSetDigest(snapshot.helpers as Parameters<typeof helperSetDigest>[0]),
      rules: { ipv4: 1, ipv6: 1 },
      errors: [],
    });
    expect(result).toEqual({ batchItemFailures: [] });
    const item = await routerItem(routerId);
    expect((item.replicas as Record<string, { revision: number }>)["net-1"]?.revision).toBe(1);
  });

  it("status: a resync request is served through the table's by-host index", async () => {
    expect(await report("net-1", { v: 1, kind: "resync-request" })).toEqual({ batchItemFailures: [] });
    const resent = await snapshotsOn("net-1");
    expect(resent).toEqual([expect.objectContaining({ router_id: routerId, revision: 1 })]);
  });

  it("events: a Router Upserted and a notification from the stack's own account reach net_b2's queue", async () => {
    const account = functions.Events.FunctionArn.split(":")[4]!;
    const put = (detailType: string, detail: unknown) => {
      const event = eventBridgeEvent(detailType, detail, { account, region: REGION });
      return inLambda("Events", (context) => eventsHandler(event, context));
    };
    expect(
      await put("Router Upserted", { router_id: eventRouterId, project_id: PROJECT, host: "net_b2" }),
    ).toMatchObject({ outcome: "applied" });
    expect(await routerItem(eventRouterId)).toMatchObject({ revision: 0, host: "net_b2" });
    const helper = { id: randomUUID(), router_id: eventRouterId, protocol: "udp", port: 69, helper: "tftp" };
    expect(
      await put("Conntrack Helper Notification", {
        event: "created",
        project_id: PROJECT,
        conntrack_helpers: [helper],
      }),
    ).toMatchObject({ outcome: "applied" });
    expect(await snapshotsOn("net_b2")).toEqual([
      expect.objectContaining({ router_id: eventRouterId, revision: 1 }),
    ]);
  });

  it("reconcile: the sweep reads the stack's out-of-sync index and re-sends only what no agent confirmed", async () => {
    const summary = await inLambda("Reconcile", (context) =>
      reconcileHandler({ id: randomUUID() } as Parameters<typeof reconcileHandler>[0], context),
    );
    // net-1's report took its router out of the sparse index: only net_b2's unconfirmed one is read.
    expect(summary).toMatchObject({ checked: 1, resent: 1, failedHosts: [] });
    expect(await snapshotsOn("net_b2")).toEqual([
      expect.objectContaining({ router_id: eventRouterId, revision: 1 }),
    ]);
    // net-1 confirmed its router's revision moments ago: nothing to re-send there.
    expect(await snapshotsOn("net-1")).toEqual([]);
  });
});

describe("prepareForMoto", () => {
  const template: Template = {
    Resources: {
      Api: { Type: "AWS::ApiGatewayV2::Api", Properties: {} },
      Permission: {
        Type: "AWS::Lambda::Permission",
        // biome-ignore lint/suspicious/noTemplateCurlyInString: CloudFormation Fn::Sub syntax
        Properties: { SourceArn: { "Fn::Sub": "arn:aws:execute-api:${AWS::Region}:${Api}/*" } },
      },
      Waiter: { Type: "AWS::SQS::Queue", Properties: {}, DependsOn: ["Permission"] },
      Bus: { Type: "AWS::Events::EventBus", Properties: { Name: "cth-x" } },
      Rule: { Type: "AWS::Events::Rule", Properties: { EventBusName: { Ref: "Bus" } } },
      Fn: {
        Type: "AWS::Lambda::Function",
        Properties: { Code: { S3Bucket: { Ref: "Deploy" }, S3Key: "a/f.zip" } },
      },
      Mapping: { Type: "AWS::Lambda::EventSourceMapping", Properties: { Enabled: true } },
    },
    Outputs: {
      ApiUrl: { Value: { "Fn::Join": ["", ["https://", { Ref: "Api" }]] } },
      BusName: { Value: { Ref: "Bus" } },
    },
  };

  it("drops what moto cannot model and, to a fixed point, whatever refers to it, outputs included", () => {
    const { template: out, dropped } = prepareForMoto(template, "code");
    expect(dropped.map((d) => [d.logicalId, d.reason])).toEqual([
      ["Api", MOTO_CANNOT_CREATE["AWS::ApiGatewayV2::Api"]],
      ["Permission", "refers to dropped Api"],
      ["Waiter", "refers to dropped Permission"],
    ]);
    expect(Object.keys(out.Resources).sort()).toEqual(["Bus", "Fn", "Mapping", "Rule"]);
    expect(Object.keys(out.Outputs)).toEqual(["BusName"]);
  });

  it("names the bus instead of Ref-ing it, reads code from the given bucket, disables mappings; the input is kept", () => {
    const { template: out, patched } = prepareForMoto(template, "code");
    expect(out.Resources.Rule!.Properties.EventBusName).toBe("cth-x");
    expect(out.Outputs.BusName!.Value).toBe("cth-x");
    expect(out.Resources.Fn!.Properties.Code).toEqual({ S3Bucket: "code", S3Key: "a/f.zip" });
    expect(out.Resources.Mapping!.Properties.Enabled).toBe(false);
    expect(patched.map((p) => p.logicalId)).toEqual(["Bus", "Fn", "Mapping"]);
    expect(template.Resources.Rule!.Properties.EventBusName).toEqual({ Ref: "Bus" });
  });
});
