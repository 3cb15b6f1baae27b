// The snapshot signing key's SSM parameter: its name (param `signingKeyParameter`) and its ARN for IAM. The
// operator creates the SecureString (CloudFormation cannot); README "Snapshot signing key".
"use strict";

// SSM's own alphabet for parameter names; a fully qualified (hierarchical) name keeps the ARN unambiguous.
const PARAMETER_NAME = /^(\/[A-Za-z0-9_.-]+){1,15}$/;

function parameter(name) {
  if (!PARAMETER_NAME.test(name) || name.length > 1011) {
    throw new Error(
      `param "signingKeyParameter" must be a fully qualified SSM parameter name such as /cth/prod/snapshot-signing-key, got "${name}"`,
    );
  }
  return {
    name,
    // arn:...:parameter/a/b for the name /a/b (the ARN carries the name without its leading slash).
    arn: { "Fn::Sub": `arn:\${AWS::Partition}:ssm:\${AWS::Region}:\${AWS::AccountId}:parameter${name}` },
  };
}

module.exports = async ({ resolveVariable }) => {
  const name = await resolveVariable("param:signingKeyParameter");
  const { arn } = parameter(String(name ?? ""));
  return { parameterArn: arn };
};
module.exports.parameter = parameter;
