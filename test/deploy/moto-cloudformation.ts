/**
 * Deploying the packaged template into moto_server: what moto cannot create is dropped (each type with the
 * reason), the functions' code is uploaded where the template says, and the stack is created through the
 * CloudFormation Query API over fetch (no CloudFormation client is a dependency of this project).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Json, PackagedService, Resource, Template } from "./package-template.ts";

/** Resource types in the template that moto 5.2.1's CloudFormation has no model for (it would skip them). */
export const MOTO_CANNOT_CREATE: Readonly<Record<string, string>> = {
  "AWS::ApiGatewayV2::Api": "moto models API Gateway v1 (REST) in CloudFormation, not v2 (HTTP APIs)",
  "AWS::ApiGatewayV2::Stage": "no API Gateway v2 model in moto's CloudFormation",
  "AWS::ApiGatewayV2::Authorizer": "no API Gateway v2 model in moto's CloudFormation",
  "AWS::ApiGatewayV2::Integration": "no API Gateway v2 model in moto's CloudFormation",
  "AWS::ApiGatewayV2::Route": "no API Gateway v2 model in moto's CloudFormation",
  "AWS::CloudWatch::Alarm": "moto's CloudFormation models only AWS::CloudWatch::Dashboard",
  "AWS::SQS::QueuePolicy": "no model in moto's CloudFormation (moto enforces no queue policy anyway)",
  "AWS::S3::BucketPolicy": "no model in moto's CloudFormation",
  "AWS::Lambda::EventInvokeConfig": "no model in moto's CloudFormation",
};

export interface Dropped {
  readonly logicalId: string;
  readonly type: string;
  readonly reason: string;
}

export interface MotoTemplate {
  readonly template: Template;
  readonly dropped: readonly Dropped[];
  /** Resources kept but worked around, with the reason (a moto limitation each). */
  readonly patched: readonly Dropped[];
}

const EVENT_BUS_REF =
  "its Refs are replaced by its Name: moto's EventBus has no physical id, so Ref yields the model object";

const CODE_BUCKET =
  "code read from a bucket made before the stack: the deployment bucket the stack makes is empty when the function is created";
const MAPPING_DISABLED =
  "created disabled: moto would invoke the function in Docker on every SendMessage; the test plays Lambda's part";

/** Replaces every `{ Ref: logicalId }` in resources and outputs by `value`. */
function replaceRefs(template: Template, logicalId: string, value: Json): void {
  const walk = (node: Json): Json => {
    if (Array.isArray(node)) return node.map(walk);
    if (typeof node !== "object" || node === null) return node;
    const entries = Object.entries(node);
    if (entries.length === 1 && entries[0]![0] === "Ref" && entries[0]![1] === logicalId) return value;
    return Object.fromEntries(entries.map(([key, inner]) => [key, walk(inner)]));
  };
  for (const resource of Object.values(template.Resources))
    resource.Properties = walk(resource.Properties) as Record<string, Json>;
  for (const output of Object.values(template.Outputs)) output.Value = walk(output.Value);
}

/** Every logical id `value` refers to (Ref, Fn::GetAtt, Fn::Sub's `${Id}` and `${Id.Attr}`). */
export function referencedIds(value: Json): Set<string> {
  const ids = new Set<string>();
  const walk = (node: Json): void => {
    if (Array.isArray(node)) {
      for (const item of node) walk(item);
      return;
    }
    if (typeof node !== "object" || node === null) return;
    for (const [key, inner] of Object.entries(node)) {
      if (key === "Ref" && typeof inner === "string") ids.add(inner);
      else if (key === "Fn::GetAtt" && Array.isArray(inner)) ids.add(String(inner[0]));
      else if (key === "Fn::Sub") {
        const text = Array.isArray(inner) ? inner[0] : inner;
        for (const match of String(text).matchAll(/\$\{([A-Za-z0-9]+)[.}]/g)) ids.add(match[1]!);
      }
      walk(inner);
    }
  };
  walk(value);
  return ids;
}

const dependsOn = (resource: Resource): string[] =>
  resource.DependsOn === undefined ? [] : ([] as string[]).concat(resource.DependsOn as string | string[]);

/**
 * The template moto can create: unsupported types dropped, then whatever refers to a dropped resource
 * (e.g. the HTTP API's invoke permission), to a fixed point; the functions' code read from `codeBucket`
 * (the deployment bucket is created by the stack itself, after the functions would need it); the event
 * source mappings disabled, since moto invokes a mapped function in Docker on every SendMessage and this
 * test plays Lambda's part itself.
 */
export function prepareForMoto(source: Template, codeBucket: string): MotoTemplate {
  const template = structuredClone(source);
  const dropped: Dropped[] = [];
  const patched: Dropped[] = [];
  for (const [logicalId, resource] of Object.entries(template.Resources)) {
    const reason = MOTO_CANNOT_CREATE[resource.Type];
    if (reason === undefined) continue;
    dropped.push({ logicalId, type: resource.Type, reason });
    delete template.Resources[logicalId];
  }
  for (let changed = true; changed; ) {
    changed = false;
    const gone = new Set(dropped.map((d) => d.logicalId));
    for (const [logicalId, resource] of Object.entries(template.Resources)) {
      const missing = [...referencedIds(resource), ...dependsOn(resource)].find((id) => gone.has(id));
      if (missing === undefined) continue;
      dropped.push({ logicalId, type: resource.Type, reason: `refers to dropped ${missing}` });
      delete template.Resources[logicalId];
      changed = true;
    }
  }
  const gone = new Set(dropped.map((d) => d.logicalId));
  for (const [key, output] of Object.entries(template.Outputs)) {
    if ([...referencedIds(output.Value)].some((id) => gone.has(id))) delete template.Outputs[key];
  }
  for (const [logicalId, resource] of Object.entries(template.Resources)) {
    if (resource.Type === "AWS::Events::EventBus") {
      replaceRefs(template, logicalId, resource.Properties.Name);
      patched.push({ logicalId, type: resource.Type, reason: EVENT_BUS_REF });
    }
  }
  for (const [logicalId, resource] of Object.entries(template.Resources)) {
    if (resource.Type === "AWS::Lambda::Function") {
      (resource.Properties.Code as { S3Bucket: Json }).S3Bucket = codeBucket;
      patched.push({ logicalId, type: resource.Type, reason: CODE_BUCKET });
    }
    if (resource.Type === "AWS::Lambda::EventSourceMapping") {
      resource.Properties.Enabled = false;
      patched.push({ logicalId, type: resource.Type, reason: MAPPING_DISABLED });
    }
  }
  return { template, dropped, patched };
}

/**
 * moto_server picks the service from the credential scope of the Authorization header and verifies no
 * signature, so a well-formed header is all it needs.
 */
const authorization = (service: string, region: string) =>
  `AWS4-HMAC-SHA256 Credential=test/20260101/${region}/${service}/aws4_request, SignedHeaders=host, Signature=0`;

/** Creates `bucket` and uploads every function zip of `packaged` under the S3Key its function names. */
export async function uploadCode(
  endpoint: string,
  region: string,
  bucket: string,
  packaged: PackagedService,
): Promise<void> {
  const s3 = async (path: string, body: Uint8Array | undefined) => {
    const reply = await fetch(`${endpoint}/${path}`, {
      method: "PUT",
      headers: { authorization: authorization("s3", region) },
      ...(body ? { body } : {}),
    });
    if (!reply.ok) throw new Error(`S3 PUT ${path}: ${reply.status} ${await reply.text()}`);
  };
  await s3(bucket, undefined);
  for (const resource of Object.values(packaged.template.Resources)) {
    if (resource.Type !== "AWS::Lambda::Function") continue;
    const key = (resource.Properties.Code as { S3Key: string }).S3Key;
    await s3(`${bucket}/${key}`, readFileSync(join(packaged.dir, key.split("/").at(-1)!)));
  }
}

const decode = (text: string) =>
  text
    .replaceAll("&lt;", "<")
    .replaceAll("&gt;", ">")
    .replaceAll("&quot;", '"')
    .replaceAll("&#39;", "'")
    .replaceAll("&amp;", "&");

const field = (xml: string, tag: string): string | undefined => {
  const match = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml);
  return match ? decode(match[1]!) : undefined;
};

/** The `<member>` elements inside the first `<container>` (flat members only: outputs, resources). */
const members = (xml: string, container: string): string[] => {
  const inner = new RegExp(`<${container}>([\\s\\S]*?)</${container}>`).exec(xml)?.[1] ?? "";
  return [...inner.matchAll(/<member>([\s\S]*?)<\/member>/g)].map((m) => m[1]!);
};

export interface StackResource {
  readonly logicalId: string;
  readonly physicalId: string;
  readonly type: string;
  readonly status: string;
}

export interface Stack {
  readonly id: string;
  readonly status: string;
  readonly outputs: Readonly<Record<string, string>>;
  readonly resources: Readonly<Record<string, StackResource>>;
}

/** A CloudFormation Query API client for moto_server: create a stack, wait for it, read it back. */
export function cloudFormation(endpoint: string, region: string) {
  const call = async (action: string, params: Record<string, string>): Promise<string> => {
    const reply = await fetch(endpoint, {
      method: "POST",
      headers: {
        authorization: authorization("cloudformation", region),
        "content-type": "application/x-www-form-urlencoded",
      },
      body: new URLSearchParams({ Action: action, Version: "2010-05-15", ...params }),
    });
    const text = await reply.text();
    if (!reply.ok) throw new Error(`CloudFormation ${action}: ${reply.status} ${text.slice(0, 2000)}`);
    return text;
  };

  const describe = async (name: string): Promise<Stack> => {
    const stackXml = await call("DescribeStacks", { StackName: name });
    const resourcesXml = await call("DescribeStackResources", { StackName: name });
    const outputs: Record<string, string> = {};
    for (const member of members(stackXml, "Outputs")) {
      outputs[field(member, "OutputKey")!] = field(member, "OutputValue") ?? "";
    }
    const resources: Record<string, StackResource> = {};
    for (const member of members(resourcesXml, "StackResources")) {
      const logicalId = field(member, "LogicalResourceId")!;
      resources[logicalId] = {
        logicalId,
        physicalId: field(member, "PhysicalResourceId") ?? "",
        type: field(member, "ResourceType") ?? "",
        status: field(member, "ResourceStatus") ?? "",
      };
    }
    return {
      id: field(stackXml, "StackId") ?? "",
      status: field(stackXml, "StackStatus") ?? "",
      outputs,
      resources,
    };
  };

  return {
    describe,
    /** Creates the stack (IAM capabilities granted) and waits until it leaves CREATE_IN_PROGRESS. */
    async create(name: string, template: Template, timeoutMs = 30_000): Promise<Stack> {
      await call("CreateStack", {
        StackName: name,
        TemplateBody: JSON.stringify(template),
        "Capabilities.member.1": "CAPABILITY_IAM",
        "Capabilities.member.2": "CAPABILITY_NAMED_IAM",
      });
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const stack = await describe(name);
        if (stack.status !== "CREATE_IN_PROGRESS") return stack;
        if (Date.now() > deadline) throw new Error(`stack ${name} still ${stack.status}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    },
  };
}

export interface FunctionConfiguration {
  readonly FunctionArn: string;
  readonly Handler: string;
  readonly Environment?: { readonly Variables?: Record<string, string> };
}

export interface EventSourceMapping {
  readonly EventSourceArn: string;
  readonly FunctionArn: string;
  readonly BatchSize: number;
  readonly FunctionResponseTypes?: readonly string[];
}

/** The Lambda REST API for what the stack created: each function as moto stored it, with its mappings. */
export function lambdaApi(endpoint: string, region: string) {
  const get = async <T>(path: string): Promise<T> => {
    const reply = await fetch(`${endpoint}/2015-03-31/${path}`, {
      headers: { authorization: authorization("lambda", region) },
    });
    if (!reply.ok) throw new Error(`Lambda GET ${path}: ${reply.status} ${await reply.text()}`);
    return (await reply.json()) as T;
  };
  return {
    configuration: async (name: string) =>
      (await get<{ Configuration: FunctionConfiguration }>(`functions/${encodeURIComponent(name)}`))
        .Configuration,
    eventSourceMappings: async (functionName: string) =>
      (
        await get<{ EventSourceMappings: EventSourceMapping[] }>(
          `event-source-mappings/?FunctionName=${encodeURIComponent(functionName)}`,
        )
      ).EventSourceMappings,
  };
}
