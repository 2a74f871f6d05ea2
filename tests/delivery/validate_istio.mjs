// Validates Kubernetes objects against Istio's CRD schemas (npm @kubernetes-models/istio, generated
// from Istio's own CRDs), for the Gateway and HTTPRoute objects the targetRefs manifests carry
// the Gateway API's (npm @kubernetes-models/gateway-api), and for the core objects a manifest
// brings along (a Secret, a ConfigMap, a Deployment) Kubernetes' own (npm kubernetes-models).
// Reads a JSON list of objects on stdin; writes a JSON list of {ok, error} in the same order. An
// apiVersion/kind none of the packages has a model for is an error.
import { readFileSync } from "node:fs";

const PACKAGES = { "gateway.networking.k8s.io": "@kubernetes-models/gateway-api", apps: "kubernetes-models" };
// The core group has no name: `apiVersion: v1`, models at kubernetes-models/v1/<Kind>.
const CORE_KINDS = new Set(["Secret", "ConfigMap"]);

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const object of objects) {
  try {
    const apiVersion = String(object.apiVersion);
    const core = apiVersion === "v1" && CORE_KINDS.has(object.kind);
    const [group, version] = core ? ["", "v1"] : apiVersion.split("/");
    const pkg = core ? "kubernetes-models" : group.endsWith(".istio.io") ? "@kubernetes-models/istio" : PACKAGES[group];
    if (!pkg || !version || !/^[A-Za-z]+$/.test(object.kind)) {
      throw new Error(`not an Istio, Gateway API or known Kubernetes kind: ${object.apiVersion} ${object.kind}`);
    }
    const path = core ? `${pkg}/${version}/${object.kind}` : `${pkg}/${group}/${version}/${object.kind}`;
    const module = await import(path).catch(() => {
      throw new Error(`no schema for ${object.apiVersion} ${object.kind}`);
    });
    new module[object.kind](object).validate();
    results.push({ ok: true });
  } catch (error) {
    results.push({ ok: false, error: String(error.message ?? error) });
  }
}
process.stdout.write(JSON.stringify(results));
