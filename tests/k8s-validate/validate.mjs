// Validates Kubernetes objects against the CRD and API schemas bundled in the registry's
// @kubernetes-models packages (offline). Input on stdin: a JSON list of objects. Output on
// stdout: a JSON list, per object, of {"kind": ..., "errors": [...]} (empty when valid);
// an object of a kind with no bundled schema says so in its errors.
import { readFileSync } from "node:fs";

const MODELS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin",
  "networking.istio.io/v1/ServiceEntry": "@kubernetes-models/istio/networking.istio.io/v1/ServiceEntry",
  "gateway.networking.k8s.io/v1/Gateway": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/Gateway",
  "gateway.networking.k8s.io/v1/HTTPRoute": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute",
  "apps/v1/Deployment": "kubernetes-models/apps/v1/Deployment",
  "v1/Secret": "kubernetes-models/v1/Secret",
};

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const object of objects) {
  const kind = `${object.apiVersion}/${object.kind}`;
  const path = MODELS[kind];
  if (!path) {
    results.push({ kind, errors: ["no bundled schema for this kind"] });
    continue;
  }
  const Model = (await import(path))[object.kind];
  try {
    new Model(object).validate();
    results.push({ kind, errors: [] });
  } catch (error) {
    const details = error.errors ?? [{ message: String(error.message ?? error) }];
    results.push({
      kind,
      errors: details.map((e) => `${e.instancePath ?? ""} ${e.message ?? ""} ${JSON.stringify(e.params ?? {})}`.trim()),
    });
  }
}
process.stdout.write(JSON.stringify(results));
