// Validates Argo CD and Flux custom resources, strictly, for dev/check-manifests.
//
// Input on stdin: a JSON array of {source, doc}. Output on stdout: a JSON array of
// {source, kind, errors}. The validators are the ones @kubernetes-models generates from the Argo CD
// and Flux Go API types (types, required fields, enums). They accept fields they do not know, so
// this also reports every key of an object that the validator never read: a misspelt field.
// The generator leaves out a few properties it has nothing to check for (`description` of an
// AppProject, free-form values): a key the validator skipped counts as known when a type of the
// same API version declares it.
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const models = join(here, "node_modules", "@kubernetes-models");

// API group -> the package and Go module its schemas were generated from.
const GROUPS = {
  "argoproj.io": [["argo-cd", "ComGithubArgoprojArgoCdV3PkgApisApplication"]],
  "source.toolkit.fluxcd.io": [["flux-cd", "ComGithubFluxcdSourceControllerApi"]],
  "kustomize.toolkit.fluxcd.io": [["flux-cd", "ComGithubFluxcdKustomizeControllerApi"]],
  "helm.toolkit.fluxcd.io": [["flux-cd", "ComGithubFluxcdHelmControllerApi"]],
  "notification.toolkit.fluxcd.io": [["flux-cd", "ComGithubFluxcdNotificationControllerApi"]],
  "image.toolkit.fluxcd.io": [
    ["flux-cd", "ComGithubFluxcdImageReflectorControllerApi"],
    ["flux-cd", "ComGithubFluxcdImageAutomationControllerApi"],
  ],
};

const capital = (s) => s.charAt(0).toUpperCase() + s.slice(1);

async function validatorFor(apiVersion, kind) {
  const [group, version] = String(apiVersion).split("/");
  for (const [pkg, prefix] of GROUPS[group] ?? []) {
    const file = join(models, pkg, "_schemas", `${prefix}${capital(version ?? "")}${kind}.js`);
    try {
      readFileSync(file);
    } catch {
      continue;
    }
    return { validate: (await import(file)).validate, declared: declaredFields(join(models, pkg, group, version)) };
  }
  return null;
}

// Every property name the TypeScript types of one API version declare.
function declaredFields(dir) {
  const names = new Set();
  for (const f of readdirSync(dir).filter((f) => f.endsWith(".d.ts"))) {
    for (const m of readFileSync(join(dir, f), "utf8").matchAll(/^\s*"([^"]+)"\??:/gm)) names.add(m[1]);
  }
  return names;
}

// Runs `validate` on a copy of `doc` whose objects record which keys were read.
function strictly({ validate, declared }, doc) {
  const checks = [];
  const wrap = (value, path) => {
    if (value === null || typeof value !== "object") return value;
    if (Array.isArray(value)) return value.map((v, i) => wrap(v, `${path}/${i}`));
    const read = new Set();
    const keys = Object.keys(value);
    const copy = Object.fromEntries(keys.map((k) => [k, wrap(value[k], `${path}/${k}`)]));
    checks.push(() => keys.filter((k) => !read.has(k)).map((k) => `${path}/${k}`));
    return new Proxy(copy, {
      get(target, key, receiver) {
        if (typeof key === "string") read.add(key);
        return Reflect.get(target, key, receiver);
      },
    });
  };
  const ok = validate(wrap(doc, ""));
  const errors = ok ? [] : (validate.errors ?? []).map((e) => `${e.instancePath || "/"} ${ajvMessage(e)}`);
  const unknown = checks.flatMap((c) => c()).filter((p) => !declared.has(p.slice(p.lastIndexOf("/") + 1)));
  // Report a misspelt object once, not each of its keys again.
  const top = unknown.filter((p) => !unknown.some((q) => q !== p && p.startsWith(`${q}/`)));
  return errors.concat(top.map((p) => `${p}: unknown field`));
}

function ajvMessage(e) {
  switch (e.keyword) {
    case "required":
      return `must have required property ${JSON.stringify(e.params.missingProperty)}`;
    case "type":
      return `must be ${e.params.type}`;
    case "enum":
      return `must be one of ${JSON.stringify(e.params.allowedValues)}`;
    default:
      return `${e.keyword} ${JSON.stringify(e.params)}`;
  }
}

const input = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const { source, doc } of input) {
  const kind = `${doc?.apiVersion}/${doc?.kind}`;
  const validator = await validatorFor(doc?.apiVersion, doc?.kind);
  const errors = validator ? strictly(validator, doc) : [`no schema for ${kind}`];
  results.push({ source, kind, errors });
}
process.stdout.write(JSON.stringify(results));
