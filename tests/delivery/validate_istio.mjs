// Validates Kubernetes objects against Istio's CRD schemas (npm @kubernetes-models/istio, generated
// from Istio's own CRDs) and, for the Gateway and HTTPRoute objects the targetRefs manifests
// carry, the Gateway API's (npm @kubernetes-models/gateway-api). Reads a JSON list of objects on
// stdin; writes a JSON list of {ok, error} in the same order. An apiVersion/kind neither package
// has a model for is an error.
import { readFileSync } from "node:fs";

const PACKAGES = { "gateway.networking.k8s.io": "@kubernetes-models/gateway-api" };

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const object of objects) {
  try {
    const [group, version] = String(object.apiVersion).split("/");
    const pkg = group.endsWith(".istio.io") ? "@kubernetes-models/istio" : PACKAGES[group];
    if (!pkg || !version || !/^[A-Za-z]+$/.test(object.kind)) {
      throw new Error(`not an Istio or Gateway API kind: ${object.apiVersion} ${object.kind}`);
    }
    const module = await import(`${pkg}/${group}/${version}/${object.kind}`).catch(() => {
      throw new Error(`no schema for ${object.apiVersion} ${object.kind}`);
    });
    new module[object.kind](object).validate();
    results.push({ ok: true });
  } catch (error) {
    results.push({ ok: false, error: String(error.message ?? error) });
  }
}
process.stdout.write(JSON.stringify(results));
