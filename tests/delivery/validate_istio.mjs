// Validates Kubernetes objects against Istio's CRD schemas (npm @kubernetes-models/istio, generated
// from Istio's own CRDs). Reads a JSON list of objects on stdin; writes a JSON list of
// {ok, error} in the same order. An apiVersion/kind the package has no model for is an error.
import { readFileSync } from "node:fs";

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const object of objects) {
  try {
    const [group, version] = String(object.apiVersion).split("/");
    if (!group.endsWith(".istio.io") || !version || !/^[A-Za-z]+$/.test(object.kind)) {
      throw new Error(`not an Istio kind: ${object.apiVersion} ${object.kind}`);
    }
    const module = await import(`@kubernetes-models/istio/${group}/${version}/${object.kind}`).catch(() => {
      throw new Error(`no Istio schema for ${object.apiVersion} ${object.kind}`);
    });
    new module[object.kind](object).validate();
    results.push({ ok: true });
  } catch (error) {
    results.push({ ok: false, error: String(error.message ?? error) });
  }
}
process.stdout.write(JSON.stringify(results));
