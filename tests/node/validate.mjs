// Validates the contract document against the AsyncAPI specification with the AsyncAPI
// initiative's own parser (@asyncapi/parser, a dev dependency: the client needs only nats).
// Prints each diagnostic as a JSON line, then {"valid": true|false, "errors": n}.
//
//   node validate.mjs ../../docs/contract/asyncapi.json

import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const { document, diagnostics } = await new Parser().parse(readFileSync(process.argv[2], "utf8"));
// Severity 0 is an error, 1 a warning, 2 information, 3 a hint.
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
const errors = diagnostics.filter((d) => d.severity === 0).length;
console.log(JSON.stringify({ valid: Boolean(document) && errors === 0, errors }));
