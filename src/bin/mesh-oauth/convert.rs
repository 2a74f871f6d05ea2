//! `convert`: Istio `RequestAuthentication` and `AuthorizationPolicy` resources turned into one
//! `WasmPlugin` per workload selection whose `pluginConfig` decides the same, in Istio's
//! evaluation order. Anything the plugin cannot express is an error naming the resource and
//! the field; nothing is dropped silently.

use crate::load;
use mesh_oauth::compile;
use mesh_oauth::config::IpBlock;
use serde_json::{json, Map, Value};
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

pub struct Options {
    pub files: Vec<String>,
    /// Istio's root namespace: policies there without a selector apply to the whole mesh.
    pub root_namespace: String,
    /// The module's `url` in each WasmPlugin.
    pub url: String,
    /// `mode: report` in each pluginConfig: the plugin refuses nothing and logs what it would,
    /// for a cut-over beside the policies it replaces.
    pub report: bool,
    /// `answers: minimal` in each pluginConfig: Istio's refusals say little (`Jwt is expired`,
    /// `RBAC: access denied`); a team that wants less still can.
    pub minimal: bool,
}

/// What `convert` prints: the WasmPlugins, and notes for the operator (on standard error).
pub struct Conversion {
    pub yaml: String,
    pub notes: Vec<String>,
    /// Each plugin's label and configuration, for `--check`.
    pub plugins: Vec<(String, Value)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Mesh,
    Namespace(String),
    Selector(String, Map<String, Value>),
    Refs(String, Vec<Value>),
}

impl Target {
    fn namespace<'a>(&'a self, root: &'a str) -> &'a str {
        match self {
            Target::Mesh => root,
            Target::Namespace(ns) | Target::Selector(ns, _) | Target::Refs(ns, _) => ns,
        }
    }

    /// Whether a resource with this target applies to a workload the `narrower` one selects.
    fn covers(&self, narrower: &Target) -> bool {
        match (self, narrower) {
            (Target::Mesh, _) => true,
            (Target::Namespace(ns), Target::Selector(other, _) | Target::Refs(other, _)) => {
                ns == other
            }
            (broad, narrow) => broad == narrow,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RequestAuthentication,
    AuthorizationPolicy,
}

struct Resource {
    kind: Kind,
    /// `AuthorizationPolicy foo/name`, for errors.
    label: String,
    namespace: String,
    name: String,
    target: Target,
    spec: Map<String, Value>,
}

pub fn convert(options: &Options) -> Result<Conversion, String> {
    let mut resources = Vec::new();
    let mut notes = Vec::new();
    for file in &options.files {
        let text =
            std::fs::read_to_string(file).map_err(|e| format!("{file}: cannot read: {e}"))?;
        let documents =
            YamlLoader::load_from_str(&text).map_err(|e| format!("{file}: not valid YAML: {e}"))?;
        for (index, document) in documents.iter().enumerate() {
            let value = load::to_json(document)
                .map_err(|e| format!("{file}: document {}: {e}", index + 1))?;
            // `kubectl get … -o yaml` wraps what it lists in a `kind: List`.
            let objects = match (&value["kind"], &value["items"]) {
                (Value::String(kind), Value::Array(items)) if kind == "List" => items.clone(),
                _ => vec![value],
            };
            for object in objects {
                match read_resource(&object, &options.root_namespace)
                    .map_err(|e| format!("{file}: {e}"))?
                {
                    Some(resource) => resources.push(resource),
                    None if object.is_null() => {}
                    None => notes.push(format!(
                        "{file}: document {} ({}) is neither a RequestAuthentication nor an AuthorizationPolicy: skipped",
                        index + 1,
                        object["kind"].as_str().unwrap_or("no kind")
                    )),
                }
            }
        }
    }
    if resources.is_empty() {
        return Err("no RequestAuthentication or AuthorizationPolicy in the input".into());
    }
    let groups = group(&resources)?;
    let mut yaml = String::new();
    let mut plugins = Vec::new();
    let mut egress: Vec<(String, String, u16)> = Vec::new();
    for target in groups {
        let members: Vec<&Resource> = resources
            .iter()
            .filter(|r| r.target.covers(&target))
            .collect();
        let mut plugin_config = plugin_config(&members, &mut notes)?;
        if target == Target::Mesh {
            forward_tokens(&mut plugin_config, &options.root_namespace, &mut notes);
        }
        if options.report {
            plugin_config["mode"] = "report".into();
        }
        if options.minimal {
            plugin_config["answers"] = "minimal".into();
        }
        let namespace = target.namespace(&options.root_namespace).to_owned();
        for (host, port) in key_hosts(&plugin_config) {
            let entry = (namespace.clone(), host, port);
            if !egress.contains(&entry) {
                egress.push(entry);
            }
        }
        let plugin = wasm_plugin(
            &target,
            &options.root_namespace,
            &options.url,
            &plugin_config,
        );
        let label = format!(
            "WasmPlugin {}/{}",
            plugin["metadata"]["namespace"].as_str().unwrap_or(""),
            plugin["metadata"]["name"].as_str().unwrap_or("")
        );
        yaml.push_str(&to_yaml(&plugin)?);
        yaml.push('\n');
        plugins.push((label, plugin_config));
    }
    for (namespace, host, port) in &egress {
        for object in key_host_egress(namespace, host, *port) {
            yaml.push_str(&to_yaml(&object)?);
            yaml.push('\n');
        }
    }
    Ok(Conversion {
        yaml,
        notes,
        plugins,
    })
}

/// The mesh baseline runs first on every sidecar and hands the token on to the plugins after
/// it (a namespace's, a workload's), which verify it again and strip it as the last one does.
fn forward_tokens(plugin_config: &mut Value, root: &str, notes: &mut Vec<String>) {
    let Some(providers) = plugin_config["providers"].as_array_mut() else {
        return;
    };
    let mut changed = Vec::new();
    for provider in providers.iter_mut() {
        if provider["forwardOriginalToken"] != Value::Bool(true) {
            changed.push(provider["issuer"].as_str().unwrap_or("").to_owned());
            provider["forwardOriginalToken"] = true.into();
        }
    }
    if !changed.is_empty() {
        notes.push(format!(
            "WasmPlugin {root}/{BASELINE_NAME}: forwardOriginalToken: true for {}: the baseline hands the token on to the plugins after it, and the last one removes it; a workload with no plugin of its own receives the token, where Istio would remove it",
            changed.join(", ")
        ));
    }
}

/// The mesh-wide plugin, written for policies in the root namespace without a selector.
const BASELINE_NAME: &str = "mesh-oauth-baseline";
/// Within AUTHN, higher runs first; a plugin without `priority` runs after every plugin that has
/// one: the baseline comes before every namespace and workload plugin (docs/deploy.md).
const BASELINE_PRIORITY: i64 = 1000;

/// `None` for a document that is not one of the two kinds.
fn read_resource(value: &Value, root: &str) -> Result<Option<Resource>, String> {
    let kind = match value["kind"].as_str() {
        Some("RequestAuthentication") => Kind::RequestAuthentication,
        Some("AuthorizationPolicy") => Kind::AuthorizationPolicy,
        _ => return Ok(None),
    };
    let api = value["apiVersion"].as_str().unwrap_or("");
    let name = value["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let namespace = value["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let label = format!("{kind:?} {namespace}/{name}");
    if !api.starts_with("security.istio.io/") {
        return Err(format!(
            "{label}: apiVersion {api:?} is not security.istio.io"
        ));
    }
    let spec = match &value["spec"] {
        Value::Null => Map::new(),
        Value::Object(spec) => spec.clone(),
        _ => return Err(format!("{label}: spec: expected a mapping")),
    };
    let allowed: &[&str] = match kind {
        Kind::RequestAuthentication => &["selector", "targetRef", "targetRefs", "jwtRules"],
        Kind::AuthorizationPolicy => &[
            "selector",
            "targetRef",
            "targetRefs",
            "action",
            "provider",
            "rules",
        ],
    };
    known_fields(&spec, allowed, &label, "spec")?;
    let target = read_target(&spec, &namespace, root, &label)?;
    Ok(Some(Resource {
        kind,
        label,
        namespace,
        name,
        target,
        spec,
    }))
}

fn read_target(
    spec: &Map<String, Value>,
    namespace: &str,
    root: &str,
    label: &str,
) -> Result<Target, String> {
    let mut refs: Vec<Value> = Vec::new();
    if let Some(one) = spec.get("targetRef") {
        refs.push(one.clone());
    }
    if let Some(Value::Array(many)) = spec.get("targetRefs") {
        refs.extend(many.iter().cloned());
    }
    let selector = spec.get("selector").and_then(|s| s.get("matchLabels"));
    match (selector, refs.is_empty()) {
        (Some(_), false) => Err(format!(
            "{label}: spec: selector and targetRefs together; Istio takes one"
        )),
        (Some(Value::Object(labels)), true) if !labels.is_empty() => {
            if namespace == root {
                return Err(format!(
                    "{label}: spec.selector: a selector in the root namespace {root} applies across the mesh; convert those policies per namespace"
                ));
            }
            Ok(Target::Selector(namespace.to_owned(), labels.clone()))
        }
        (Some(_), true) => Err(format!(
            "{label}: spec.selector.matchLabels: expected a non-empty mapping"
        )),
        (None, false) => Ok(Target::Refs(namespace.to_owned(), refs)),
        (None, true) if namespace == root => Ok(Target::Mesh),
        (None, true) => Ok(Target::Namespace(namespace.to_owned())),
    }
}

/// One plugin per target that has resources of its own. A broader plugin (namespace or mesh)
/// also runs on the workloads of the narrower ones, so their decisions combine as an AND;
/// that equals Istio's union of ALLOW policies only when the broader one allows everything
/// that it does not deny, i.e. holds no ALLOW policy.
fn group(resources: &[Resource]) -> Result<Vec<Target>, String> {
    let mut targets: Vec<Target> = Vec::new();
    for resource in resources {
        if !targets.contains(&resource.target) {
            targets.push(resource.target.clone());
        }
    }
    for broad in &targets {
        let narrower = targets
            .iter()
            .find(|narrow| *narrow != broad && broad.covers(narrow));
        let allow = resources.iter().find(|r| {
            r.target == *broad && action(r) == Ok("ALLOW") && r.kind == Kind::AuthorizationPolicy
        });
        if let (Some(narrow), Some(allow)) = (narrower, allow) {
            return Err(format!(
                "{}: an ALLOW policy for a whole {} cannot be combined with the policies of {:?}: Istio unites ALLOW policies, while separate plugins each refuse; give the workloads their own ALLOW policies",
                allow.label,
                if *broad == Target::Mesh { "mesh" } else { "namespace" },
                narrow
            ));
        }
    }
    Ok(targets)
}

fn action(resource: &Resource) -> Result<&str, String> {
    match resource.spec.get("action") {
        None => Ok("ALLOW"),
        Some(Value::String(action)) => Ok(action.as_str()),
        Some(_) => Err(format!(
            "{}: spec.action: expected a string",
            resource.label
        )),
    }
}

/// The configuration for the resources that apply to one target, in Istio's order: DENY
/// rules first, then ALLOW; with any ALLOW policy, what no rule allows is denied.
fn plugin_config(members: &[&Resource], notes: &mut Vec<String>) -> Result<Value, String> {
    let mut providers: Vec<Value> = Vec::new();
    let mut deny_rules: Vec<Value> = Vec::new();
    let mut allow_rules: Vec<Value> = Vec::new();
    let mut any_allow = false;
    for resource in members {
        match resource.kind {
            Kind::RequestAuthentication => add_providers(resource, &mut providers, notes)?,
            Kind::AuthorizationPolicy => {
                let (rules, is_allow) = match action(resource)? {
                    "ALLOW" => (&mut allow_rules, true),
                    "DENY" => (&mut deny_rules, false),
                    "CUSTOM" => {
                        return Err(format!(
                            "{}: spec.action: CUSTOM (external authorization) is not supported by mesh-oauth",
                            resource.label
                        ))
                    }
                    "AUDIT" => {
                        return Err(format!(
                            "{}: spec.action: AUDIT is not supported; mesh-oauth's own audit log records every decision",
                            resource.label
                        ))
                    }
                    other => {
                        return Err(format!(
                            "{}: spec.action: unknown action {other:?}",
                            resource.label
                        ))
                    }
                };
                if resource.spec.contains_key("provider") {
                    return Err(format!(
                        "{}: spec.provider: belongs to CUSTOM, which is not supported",
                        resource.label
                    ));
                }
                any_allow |= is_allow;
                rules.extend(convert_rules(resource, is_allow, notes)?);
            }
        }
    }
    fold_tenants(&mut providers, notes);
    let mut config = Map::new();
    config.insert("providers".into(), Value::Array(providers));
    deny_rules.append(&mut allow_rules);
    config.insert("rules".into(), Value::Array(deny_rules));
    let unmatched = if any_allow { "deny" } else { "anonymous" };
    config.insert("unmatched".into(), unmatched.into());
    let config = Value::Object(config);
    check(&config, members)?;
    Ok(config)
}

/// The plugin's own configuring has the last word; its error is traced back to the resource.
fn check(config: &Value, members: &[&Resource]) -> Result<(), String> {
    let Err(error) = compile::configure(&config.to_string()) else {
        return Ok(());
    };
    let origin = error
        .path
        .strip_prefix("rules[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(index, _)| index.parse::<usize>().ok())
        .and_then(|index| config["rules"].get(index))
        .and_then(|rule| rule["name"].as_str())
        .map(|name| format!("from {name}: "))
        .unwrap_or_default();
    let resources: Vec<&str> = members.iter().map(|r| r.label.as_str()).collect();
    Err(format!(
        "{origin}the converted configuration is refused: {error} (resources: {})",
        resources.join(", ")
    ))
}

const JWT_RULE_FIELDS: &[&str] = &[
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputPayloadToHeader",
    "outputClaimToHeaders",
    "forwardOriginalToken",
    "timeout",
];

/// `jwtRules` are copied as they are (the plugin's providers take Istio's names); where a rule
/// names no location, Istio's defaults are written out, since the plugin's own default is the
/// `Authorization` header only.
fn add_providers(
    resource: &Resource,
    providers: &mut Vec<Value>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let rules = match resource.spec.get("jwtRules") {
        None => return Ok(()),
        Some(Value::Array(rules)) => rules,
        Some(_) => {
            return Err(format!(
                "{}: spec.jwtRules: expected a list",
                resource.label
            ))
        }
    };
    for (index, rule) in rules.iter().enumerate() {
        let at = format!("spec.jwtRules[{index}]");
        let Value::Object(fields) = rule else {
            return Err(format!("{}: {at}: expected a mapping", resource.label));
        };
        known_fields(fields, JWT_RULE_FIELDS, &resource.label, &at)?;
        let mut provider = fields.clone();
        let names_location = ["fromHeaders", "fromParams", "fromCookies"]
            .iter()
            .any(|key| provider.contains_key(*key));
        if !names_location {
            provider.insert(
                "fromHeaders".into(),
                json!([{"name": "Authorization", "prefix": "Bearer "}]),
            );
            provider.insert("fromParams".into(), json!(["access_token"]));
            notes.push(format!(
                "{}: {at}: Istio's default token locations written out: the Authorization header and the access_token query parameter",
                resource.label
            ));
        }
        let provider = Value::Object(provider);
        let issuer = &provider["issuer"];
        match providers.iter().find(|p| p["issuer"] == *issuer) {
            Some(same) if *same == provider => {}
            Some(_) => {
                return Err(format!(
                    "{}: {at}.issuer: another RequestAuthentication for the same workloads has a different rule for {issuer}",
                    resource.label
                ))
            }
            None => providers.push(provider),
        }
    }
    Ok(())
}

/// Microsoft Entra ID's issuer forms: the tenant is one path segment, every tenant's tokens are
/// signed by one key set, and each carries its tenant in `tid` (what the plugin then checks).
const ENTRA_ISSUERS: &[(&str, &str, &str, &str)] = &[
    (
        "entra",
        "https://login.microsoftonline.com/",
        "/v2.0",
        "https://login.microsoftonline.com/common/discovery/v2.0/keys",
    ),
    (
        "entra-v1",
        "https://sts.windows.net/",
        "/",
        "https://login.microsoftonline.com/common/discovery/keys",
    ),
];

/// Istio needs a jwtRule per Entra tenant; jwtRules that differ only in the tenant of an
/// Entra issuer become one provider with `issuerPattern` and `tenants`: one key fetch for all,
/// and the token's `tid` checked against its issuer, which Istio does not do.
fn fold_tenants(providers: &mut Vec<Value>, notes: &mut Vec<String>) {
    for (name, prefix, suffix, common_keys) in ENTRA_ISSUERS {
        let tenant_of = |provider: &Value| -> Option<String> {
            let tenant = provider["issuer"]
                .as_str()?
                .strip_prefix(prefix)?
                .strip_suffix(suffix)?;
            (!tenant.is_empty() && !tenant.contains('/')).then(|| tenant.to_string())
        };
        // The rule without its issuer; a tenant's own keys URL (or discovery) read as the
        // shared one, which serves the same keys.
        let without_issuer = |provider: &Value| {
            let mut rest = provider.clone();
            let tenant = tenant_of(provider).unwrap_or_default();
            if let Value::Object(fields) = &mut rest {
                fields.remove("issuer");
                let own_keys = fields
                    .get("jwksUri")
                    .and_then(Value::as_str)
                    .is_none_or(|uri| {
                        uri.starts_with(&format!(
                            "https://login.microsoftonline.com/{tenant}/discovery/"
                        ))
                    });
                if own_keys && !fields.contains_key("jwks") {
                    fields.insert("jwksUri".into(), (*common_keys).into());
                }
            }
            rest
        };
        let Some(first) = providers.iter().position(|p| tenant_of(p).is_some()) else {
            continue;
        };
        let shape = without_issuer(&providers[first]);
        let same: Vec<usize> = (0..providers.len())
            .filter(|&i| {
                tenant_of(&providers[i]).is_some() && without_issuer(&providers[i]) == shape
            })
            .collect();
        // Fewer than two, or tenants that differ in more than the issuer: left as they are.
        if same.len() < 2
            || same.len() != providers.iter().filter(|p| tenant_of(p).is_some()).count()
        {
            continue;
        }
        let tenants: Vec<Value> = same
            .iter()
            .filter_map(|&i| tenant_of(&providers[i]).map(Value::String))
            .collect();
        let mut folded = shape;
        folded["name"] = (*name).into();
        folded["issuerPattern"] = format!("{prefix}{{tenant}}{suffix}").into();
        folded["tenants"] = Value::Array(tenants.clone());
        notes.push(format!(
            "{} jwtRules for the Entra tenants {} became one provider \"{name}\" with issuerPattern: one key fetch, and each token's tid must match its issuer's tenant (Istio does not check it)",
            tenants.len(),
            tenants
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        providers[first] = folded;
        for &i in same.iter().skip(1).rev() {
            providers.remove(i);
        }
    }
}

const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "serviceAccounts",
    "notServiceAccounts",
];

const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

/// Each Istio rule matches when one of its `from` and one of its `to` entries match and every
/// `when` holds: one plugin rule per `from` × `to` pair, each with all the `when` conditions.
fn convert_rules(
    resource: &Resource,
    is_allow: bool,
    notes: &mut Vec<String>,
) -> Result<Vec<Value>, String> {
    let rules = match resource.spec.get("rules") {
        None => return Ok(Vec::new()),
        Some(Value::Array(rules)) => rules,
        Some(_) => return Err(format!("{}: spec.rules: expected a list", resource.label)),
    };
    let mut converted = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let Value::Object(rule) = rule else {
            return Err(format!("{}: {at}: expected a mapping", resource.label));
        };
        known_fields(rule, &["from", "to", "when"], &resource.label, &at)?;
        let sources = entries(rule, "from", "source", SOURCE_FIELDS, resource, &at)?;
        let operations = entries(rule, "to", "operation", OPERATION_FIELDS, resource, &at)?;
        let when = match rule.get("when") {
            None => Vec::new(),
            Some(Value::Array(when)) => when.clone(),
            Some(_) => return Err(format!("{}: {at}.when: expected a list", resource.label)),
        };
        for (j, source) in sources.iter().enumerate() {
            for (k, operation) in operations.iter().enumerate() {
                let mut matcher = Map::new();
                let source_at = format!("{at}.from[{j}].source");
                add_source(&mut matcher, source, resource, &source_at)?;
                let operation_at = format!("{at}.to[{k}].operation");
                add_operation(&mut matcher, operation, resource, &operation_at, notes)?;
                if !when.is_empty() {
                    matcher.insert("when".into(), Value::Array(when.clone()));
                }
                let single = sources.len() * operations.len() == 1;
                let name = if single {
                    format!("{}/{}[{i}]", resource.namespace, resource.name)
                } else {
                    format!(
                        "{}/{}[{i}].from[{j}].to[{k}]",
                        resource.namespace, resource.name
                    )
                };
                let mut plugin_rule = Map::new();
                plugin_rule.insert("name".into(), name.into());
                if !matcher.is_empty() {
                    plugin_rule.insert("match".into(), Value::Object(matcher));
                }
                let action = if is_allow { "allowAnonymous" } else { "deny" };
                plugin_rule.insert(action.into(), true.into());
                converted.push(Value::Object(plugin_rule));
            }
        }
    }
    Ok(converted)
}

/// The `source`/`operation` mappings of `from`/`to`; an absent or empty list is one entry that
/// matches everything.
fn entries(
    rule: &Map<String, Value>,
    list: &str,
    inner: &str,
    fields: &[&str],
    resource: &Resource,
    at: &str,
) -> Result<Vec<Map<String, Value>>, String> {
    let items = match rule.get(list) {
        None => return Ok(vec![Map::new()]),
        Some(Value::Array(items)) if items.is_empty() => return Ok(vec![Map::new()]),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(format!("{}: {at}.{list}: expected a list", resource.label)),
    };
    let mut out = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let item_at = format!("{at}.{list}[{index}]");
        let Value::Object(item) = item else {
            return Err(format!("{}: {item_at}: expected a mapping", resource.label));
        };
        known_fields(item, &[inner], &resource.label, &item_at)?;
        let body = match item.get(inner) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(body)) => body.clone(),
            Some(_) => {
                return Err(format!(
                    "{}: {item_at}.{inner}: expected a mapping",
                    resource.label
                ))
            }
        };
        known_fields(
            &body,
            fields,
            &resource.label,
            &format!("{item_at}.{inner}"),
        )?;
        out.push(body);
    }
    Ok(out)
}

fn add_source(
    matcher: &mut Map<String, Value>,
    source: &Map<String, Value>,
    resource: &Resource,
    at: &str,
) -> Result<(), String> {
    for (field, value) in source {
        let Some(list) = non_empty_list(value, resource, &format!("{at}.{field}"))? else {
            continue;
        };
        let (key, list) = match field.as_str() {
            // `ns/sa` in any trust domain: the principal's `ns`/`sa` segments.
            "serviceAccounts" | "notServiceAccounts" => {
                let principals = list
                    .iter()
                    .map(|sa| {
                        let text = sa.as_str().unwrap_or("");
                        match text.split_once('/') {
                            Some((ns, sa))
                                if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') =>
                            {
                                Ok(Value::String(format!("*/ns/{ns}/sa/{sa}")))
                            }
                            _ => Err(format!(
                                "{}: {at}.{field}: {sa}: expected NAMESPACE/SERVICE_ACCOUNT",
                                resource.label
                            )),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let key = if field == "serviceAccounts" {
                    "principals"
                } else {
                    "notPrincipals"
                };
                (key, principals)
            }
            "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" => {
                (field.as_str(), canonical_blocks(&list))
            }
            other => (other, list),
        };
        if matcher.insert(key.to_owned(), Value::Array(list)).is_some() {
            return Err(format!(
                "{}: {at}: both {key} and the serviceAccounts form of it in one source; use one",
                resource.label
            ));
        }
    }
    Ok(())
}

fn add_operation(
    matcher: &mut Map<String, Value>,
    operation: &Map<String, Value>,
    resource: &Resource,
    at: &str,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    for (field, value) in operation {
        let field_at = format!("{at}.{field}");
        let Some(list) = non_empty_list(value, resource, &field_at)? else {
            continue;
        };
        for item in &list {
            let text = item.as_str().unwrap_or("");
            let problem = match field.as_str() {
                "methods" | "notMethods" if text.bytes().any(|b| b.is_ascii_lowercase()) => Some(
                    "a lower-case method never matches in Istio (methods are case-sensitive); write it upper-case",
                ),
                "paths" | "notPaths" if text.contains('{') => {
                    Some("path templates ({*}, {**}) are not supported by mesh-oauth")
                }
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(format!("{}: {field_at}: {text}: {problem}", resource.label));
            }
        }
        let list = match field.as_str() {
            "hosts" | "notHosts" => without_ports(list, resource, &field_at, notes),
            _ => list,
        };
        matcher.insert(field.clone(), Value::Array(list));
    }
    Ok(())
}

/// Istio compares `:authority` as a whole string, so its users list `host` and `host:*` (or
/// `host:8000`); the plugin matches the host whatever the port, so both become `host`.
fn without_ports(
    list: Vec<Value>,
    resource: &Resource,
    at: &str,
    notes: &mut Vec<String>,
) -> Vec<Value> {
    let mut hosts: Vec<Value> = Vec::new();
    for item in list {
        let text = item.as_str().unwrap_or("");
        let (host, port) = match text.strip_prefix('[') {
            Some(bracketed) => match bracketed.split_once("]:") {
                Some((address, port)) => (format!("[{address}]"), Some(port)),
                None => (text.to_owned(), None),
            },
            None => match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host.to_owned(), Some(port)),
                _ => (text.to_owned(), None),
            },
        };
        if port.is_some_and(|port| port != "*") {
            notes.push(format!(
                "{}: {at}: {text}: matched as {host}, whatever the port in :authority",
                resource.label
            ));
        }
        let host = Value::String(host);
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}

/// Istio takes an empty list as not set.
fn non_empty_list(
    value: &Value,
    resource: &Resource,
    at: &str,
) -> Result<Option<Vec<Value>>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Array(items) if items.is_empty() => Ok(None),
        Value::Array(items) => {
            if let Some(bad) = items.iter().find(|v| !v.is_string()) {
                return Err(format!(
                    "{}: {at}: {bad}: expected a string",
                    resource.label
                ));
            }
            Ok(Some(items.clone()))
        }
        _ => Err(format!("{}: {at}: expected a list", resource.label)),
    }
}

/// Envoy masks a block's host bits (`10.1.2.3/8` is `10.0.0.0/8`); the plugin wants it written
/// that way. Anything that is not a block is left for the plugin's parser to name.
fn canonical_blocks(list: &[Value]) -> Vec<Value> {
    list.iter()
        .map(|item| {
            let text = item.as_str().unwrap_or("");
            let Some((address, prefix)) = text.split_once('/') else {
                return item.clone();
            };
            match (address.parse(), prefix.parse::<u8>()) {
                (Ok(network), Ok(prefix_len)) => {
                    let block = IpBlock {
                        network,
                        prefix_len,
                    };
                    Value::String(format!("{}/{prefix_len}", block.masked()))
                }
                _ => item.clone(),
            }
        })
        .collect()
}

fn known_fields(
    object: &Map<String, Value>,
    allowed: &[&str],
    label: &str,
    at: &str,
) -> Result<(), String> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(unknown) => Err(format!(
            "{label}: {at}.{unknown}: not a field mesh-oauth can convert (known: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// Where the plugin fetches keys from: each provider's `jwksUri`, or its issuer for discovery.
fn key_hosts(plugin_config: &Value) -> Vec<(String, u16)> {
    let providers = plugin_config["providers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    providers
        .iter()
        .filter(|p| p.get("jwks").is_none())
        .filter_map(|p| {
            p["jwksUri"]
                .as_str()
                .or(p["issuer"].as_str())
                .map(str::to_owned)
        })
        .filter_map(|url| {
            let rest = url.strip_prefix("https://")?;
            let authority = rest.split(['/', '?', '#']).next()?;
            match authority.rsplit_once(':') {
                Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
                None => Some((authority.to_owned(), 443)),
            }
        })
        .collect()
}

/// The plugin fetches keys from inside the sidecar, not through istiod: each key host needs a
/// ServiceEntry, and a DestinationRule through which the sidecar adds TLS to the plain-HTTP call.
fn key_host_egress(namespace: &str, host: &str, port: u16) -> [Value; 2] {
    let name = dns_label(host);
    [
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"hosts": [host], "location": "MESH_EXTERNAL", "resolution": "DNS",
                     "ports": [{"number": port, "name": "https", "protocol": "HTTPS"}]},
        }),
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"host": host, "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": host}}},
        }),
    ]
}

fn wasm_plugin(target: &Target, root: &str, url: &str, plugin_config: &Value) -> Value {
    let namespace = target.namespace(root);
    let mut spec = Map::new();
    let name = match target {
        Target::Mesh => BASELINE_NAME.to_owned(),
        Target::Namespace(_) => "mesh-oauth".to_owned(),
        Target::Selector(_, labels) => {
            spec.insert("selector".into(), json!({ "matchLabels": labels }));
            let values: Vec<&str> = labels.values().filter_map(Value::as_str).collect();
            dns_label(&format!("mesh-oauth-{}", values.join("-")))
        }
        Target::Refs(_, refs) => {
            spec.insert("targetRefs".into(), Value::Array(refs.clone()));
            let names: Vec<&str> = refs.iter().filter_map(|r| r["name"].as_str()).collect();
            dns_label(&format!("mesh-oauth-{}", names.join("-")))
        }
    };
    if !matches!(target, Target::Refs(..)) {
        // Inbound only: on outbound calls the sidecar would demand tokens from every service.
        spec.insert("match".into(), json!([{"mode": "SERVER"}]));
    }
    spec.insert("url".into(), url.into());
    spec.insert("imagePullPolicy".into(), "IfNotPresent".into());
    spec.insert("phase".into(), "AUTHN".into());
    if *target == Target::Mesh {
        spec.insert("priority".into(), BASELINE_PRIORITY.into());
    }
    spec.insert("failStrategy".into(), "FAIL_CLOSE".into());
    spec.insert("pluginConfig".into(), plugin_config.clone());
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": namespace},
        "spec": Value::Object(spec),
    })
}

/// A Kubernetes object name: lower-case alphanumerics and `-`, at most 63 characters.
fn dns_label(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

fn to_yaml(value: &Value) -> Result<String, String> {
    let mut out = String::new();
    YamlEmitter::new(&mut out)
        .dump(&from_json(value))
        .map_err(|e| format!("cannot write YAML: {e:?}"))?;
    Ok(out)
}

const KEY_ORDER: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "spec",
    "selector",
    "targetRefs",
    "match",
    "url",
    "imagePullPolicy",
    "phase",
    "priority",
    "failStrategy",
    "pluginConfig",
    "mode",
    "providers",
    "issuer",
    "rules",
    "unmatched",
    "key",
    "hosts",
    "host",
];

fn from_json(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(from_json).collect()),
        Value::Object(map) => {
            // Kubernetes' and the reference's reading order, not the alphabet's.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(key, _)| {
                KEY_ORDER
                    .iter()
                    .position(|k| k == key)
                    .unwrap_or(KEY_ORDER.len())
            });
            Yaml::Hash(
                entries
                    .into_iter()
                    .map(|(k, v)| (Yaml::String(k.clone()), from_json(v)))
                    .collect(),
            )
        }
    }
}
