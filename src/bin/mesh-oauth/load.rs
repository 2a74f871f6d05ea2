//! Reading a configuration file the way the filter will receive it: the plugin's JSON as is,
//! or the `spec.pluginConfig` of every `kind: WasmPlugin` document of an Istio YAML file
//! (which Istio hands to the plugin as JSON), configured as the filter configures it
//! ([`compile::configure`]).

use mesh_oauth::compile::{self, Compiled};
use mesh_oauth::config::{self, ConfigError};
use mesh_oauth::config_hash::ConfigHash;
use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// One configuration as the filter would get it.
pub struct Plugin {
    /// `WasmPlugin <namespace>/<name>` for a YAML document; empty for a JSON file.
    pub label: String,
    pub result: Result<Compiled, String>,
    /// The policy identity the filter will report for this configuration (its log line and
    /// `mesh_oauth.config_hash.<plugin>`); `None` when the text is not JSON.
    pub hash: Option<ConfigHash>,
}

/// Where the secrets a configuration names come from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// check-config: a JSON file's from this process's environment, as the VM's; a
    /// WasmPlugin's are stood in (their values live in the pod).
    Check,
    /// explain: the variables from explain's own environment, so that it opens the cookies it
    /// is given with the filter's cookie keys; a variable it does not set is stood in (explain
    /// never calls a token endpoint, so only the cookie keys matter).
    Explain,
}

/// The configurations a file holds; `Err` when the file itself cannot be read as one.
pub fn load(path: &str) -> Result<Vec<Plugin>, String> {
    load_with(path, Secrets::Check)
}

/// The `cookieKeysEnv` variable of each `login` entry of a configuration file, in order, and
/// whether explain's environment sets it (a stand-in ring opens no cookie).
pub fn cookie_key_variables(path: &str) -> Vec<(String, bool)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let names = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(&text)
            .map(|config| variables_named(&config, "cookieKeysEnv"))
            .unwrap_or_default()
    } else {
        YamlLoader::load_from_str(&text)
            .map(|docs| {
                docs.iter()
                    .filter(|doc| doc["kind"].as_str() == Some("WasmPlugin"))
                    .filter_map(|doc| to_json(&doc["spec"]["pluginConfig"]).ok())
                    .flat_map(|config| variables_named(&config, "cookieKeysEnv"))
                    .collect()
            })
            .unwrap_or_default()
    };
    names
        .into_iter()
        .map(|name| {
            let set = std::env::var(&name).is_ok();
            (name, set)
        })
        .collect()
}

/// The variables a configuration names in `field` of its `login` entries (an object or a
/// list) and of its outbound clients.
fn variables_named(config: &Value, field: &str) -> Vec<String> {
    let login = &config["login"];
    let logins = login
        .as_array()
        .map_or_else(|| vec![login], |list| list.iter().collect());
    let outbound_clients = config["outbound"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|entry| [&entry["clientCredentials"], &entry["tokenExchange"]]);
    logins
        .into_iter()
        .chain(outbound_clients)
        .filter_map(|holder| holder[field].as_str().map(str::to_owned))
        .collect()
}

/// The variables whose stand-in must be something else than a secret or client key.
struct Roles {
    cookie_keys: Vec<String>,
    certificates: Vec<String>,
}

impl Roles {
    fn of(config: &Value) -> Roles {
        Roles {
            cookie_keys: variables_named(config, "cookieKeysEnv"),
            certificates: variables_named(config, "clientCertEnv"),
        }
    }
}

pub fn load_with(path: &str, secrets: Secrets) -> Result<Vec<Plugin>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    // A JSON document goes to the parser as it is, so that its own checks (duplicate member
    // names, exact syntax errors) see the text the filter would see.
    if text.trim_start().starts_with('{') {
        let result = match secrets {
            Secrets::Check => compile::configure(&text),
            Secrets::Explain => {
                let roles = serde_json::from_str::<Value>(&text)
                    .map(|config| Roles::of(&config))
                    .unwrap_or(Roles {
                        cookie_keys: Vec::new(),
                        certificates: Vec::new(),
                    });
                let env = stand_in_env(None, &roles, secrets);
                config::parse_with_env(&text, &env).and_then(compile::compile)
            }
        };
        return Ok(vec![Plugin {
            label: String::new(),
            result: result.map_err(|e| located(&e, None)),
            hash: ConfigHash::of(&text),
        }]);
    }
    // yaml-rust2 refuses duplicate keys, as the JSON parser refuses duplicate members.
    let documents = YamlLoader::load_from_str(&text).map_err(|e| format!("not valid YAML: {e}"))?;
    let plugins: Vec<Plugin> = documents
        .iter()
        .enumerate()
        .filter(|(_, doc)| doc["kind"].as_str() == Some("WasmPlugin"))
        .map(|(index, doc)| {
            let plugin_config = &doc["spec"]["pluginConfig"];
            Plugin {
                label: format!("WasmPlugin {}", object_name(doc, index)),
                result: from_plugin_config(plugin_config, &vm_env_names(doc), secrets),
                // Istio hands the plugin this mapping as JSON: the same canonical text.
                hash: to_json(plugin_config)
                    .ok()
                    .map(|v| ConfigHash::of_value(&v)),
            }
        })
        .collect();
    if plugins.is_empty() {
        return Err(
            "neither a JSON plugin configuration nor YAML with a `kind: WasmPlugin` document"
                .into(),
        );
    }
    Ok(plugins)
}

/// The variables a WasmPlugin's `vmConfig.env` gives its VM.
fn vm_env_names(doc: &Yaml) -> Vec<String> {
    doc["spec"]["vmConfig"]["env"]
        .as_vec()
        .map(|env| {
            env.iter()
                .filter_map(|var| var["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What the VM would read for a variable: the value lives in the pod, so a stand-in is
/// checked instead: for a `cookieKeysEnv` variable one 32-byte key in base64, for a
/// `clientCertEnv` one a certificate's outline around the stand-in key's public point, for any other one that passes as a secret and as a
/// client key (base64 PKCS#8 of a fresh P-256 key).
/// `declared`: the variables a WasmPlugin's `vmConfig.env` gives its VM (any other is not set
/// in it); `None` for a plugin JSON file. For explain, a variable its own environment sets is
/// read from there.
fn stand_in_env<'a>(
    declared: Option<&'a [String]>,
    roles: &'a Roles,
    secrets: Secrets,
) -> impl Fn(&str) -> Option<String> + 'a {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .ok()
        .and_then(|pkcs8| {
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .ok()?;
            // RFC 5280's outline around the point: SEQUENCE { SEQUENCE { OCTET STRING point },
            // SEQUENCE {}, BIT STRING {} }, all the configuration checks of a certificate.
            let point = pair.public_key().as_ref();
            let tbs = [
                &[0x30, point.len() as u8 + 2, 0x04, point.len() as u8][..],
                point,
            ]
            .concat();
            let body = [&tbs[..], &[0x30, 0x00, 0x03, 0x01, 0x00]].concat();
            let certificate = [&[0x30, body.len() as u8][..], &body].concat();
            Some((
                STANDARD.encode(pkcs8.as_ref()),
                STANDARD.encode(certificate),
            ))
        });
    let (stand_in, certificate) =
        key.unwrap_or_else(|| ("stand-in-secret".to_owned(), String::new()));
    let key_ring = STANDARD.encode([7u8; 32]);
    move |name| {
        let is_declared = declared.is_none_or(|declared| declared.iter().any(|d| d == name));
        let has_role = |names: &[String]| names.iter().any(|n| n == name);
        let own = (secrets == Secrets::Explain)
            .then(|| std::env::var(name).ok())
            .flatten();
        is_declared.then(|| match own {
            Some(value) => value,
            None if has_role(&roles.cookie_keys) => key_ring.clone(),
            None if has_role(&roles.certificates) => certificate.clone(),
            None => stand_in.clone(),
        })
    }
}

fn from_plugin_config(
    plugin_config: &Yaml,
    vm_env: &[String],
    secrets: Secrets,
) -> Result<Compiled, String> {
    const BASE: &str = "spec.pluginConfig";
    // No pluginConfig: the plugin is configured with nothing, which its parser refuses.
    let value = match plugin_config {
        Yaml::BadValue => None,
        yaml => Some(to_json(yaml).map_err(|problem| format!("{BASE}: {problem}"))?),
    };
    let json = value.as_ref().map(Value::to_string).unwrap_or_default();
    let roles = Roles::of(value.as_ref().unwrap_or(&Value::Null));
    let env = stand_in_env(Some(vm_env), &roles, secrets);
    let compiled = config::parse_with_env(&json, &env).and_then(compile::compile);
    compiled.map_err(|e| located(&e, Some(BASE)))
}

/// `path: problem`, the path within the YAML file when the config is part of one.
fn located(error: &ConfigError, base: Option<&str>) -> String {
    let ConfigError { path, problem } = error;
    match (path.as_str(), base) {
        ("(config)", Some(base)) => format!("{base}: {problem}"),
        (path, Some(base)) => format!("{base}.{path}: {problem}"),
        (path, None) => format!("{path}: {problem}"),
    }
}

fn object_name(doc: &Yaml, index: usize) -> String {
    let metadata = &doc["metadata"];
    match (metadata["namespace"].as_str(), metadata["name"].as_str()) {
        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
        (None, Some(name)) => name.to_string(),
        _ => format!("(document {})", index.saturating_add(1)),
    }
}

/// YAML (1.2 core schema) as the JSON Istio produces from it. Kubernetes reads YAML 1.1, where
/// an unquoted `yes`/`no`/`on`/`off` is a boolean; here they stay strings, so quote such values.
pub fn to_json(yaml: &Yaml) -> Result<Value, String> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::Real(text) => {
            let number = yaml
                .as_f64()
                .and_then(Number::from_f64)
                .ok_or_else(|| format!("{text}: not a number JSON can hold"))?;
            Value::Number(number)
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(entries) => {
            let mut object = Map::new();
            for (key, value) in entries {
                let key = match key {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Real(s) => s.clone(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => return Err("a mapping key that is not a scalar".into()),
                };
                object.insert(key, to_json(value)?);
            }
            Value::Object(object)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err("a value that cannot be resolved".into()),
    })
}
