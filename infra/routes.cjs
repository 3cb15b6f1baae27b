// The http function's httpApi events, read from openapi.json (generated from lib/http/routes.ts by
// `npm run -s openapi`): serverless.yml declares no route of its own. Every route carries the JWT
// authorizer; an operation's security scopes become the route's authorizationScopes.
"use strict";

const { readFileSync } = require("node:fs");
const { join } = require("node:path");

const METHODS = ["get", "put", "post", "delete", "patch"];

function httpEvents(doc) {
  const events = [];
  for (const [path, operations] of Object.entries(doc.paths)) {
    for (const method of METHODS.filter((m) => operations[m] !== undefined)) {
      const security = operations[method].security;
      const jwt = security?.length === 1 ? security[0].jwt : undefined;
      if (!Array.isArray(jwt)) {
        throw new Error(`openapi.json: ${method.toUpperCase()} ${path} must require exactly the jwt scheme`);
      }
      events.push({
        httpApi: {
          method: method.toUpperCase(),
          path,
          authorizer: { name: "jwt", ...(jwt.length > 0 ? { scopes: [...jwt] } : {}) },
        },
      });
    }
  }
  return events;
}

module.exports = () => ({
  httpEvents: httpEvents(JSON.parse(readFileSync(join(__dirname, "..", "openapi.json"), "utf8"))),
});
module.exports.httpEvents = httpEvents;
