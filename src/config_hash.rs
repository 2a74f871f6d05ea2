//! Policy identity: the SHA-256 of a plugin configuration in canonical form, so that a pipeline
//! can compare what it applied with what every sidecar reports (`mesh-oauth check-config`
//! prints it, the filter logs it and exports it as a gauge).
//!
//! Canonical form: the configuration as compact JSON (no whitespace), where
//! - object members are sorted by name in Unicode code point order (the byte order of UTF-8);
//! - strings are written with their escapes resolved: `"`, `\` and the control characters
//!   U+0000–U+001F are escaped (`\b \f \n \r \t`, otherwise `\u00xx` in lower case), every other
//!   character is written as itself, so `"\u0041"` and `"A"` are the same string;
//! - a number with an integral value of magnitude at most 2^53 is written as an integer (`60`,
//!   `60.0` and `6e1` are all `60`: Istio passes YAML numbers through a protobuf `Struct`, where
//!   every number is a double); integers beyond that range that fit 64 bits are written as they
//!   are, and any other number as the shortest decimal that reads back as the same double,
//!   as serde_json writes it (`0.5`, `1e-7`, `1e+300`).
//!
//! Configurations that differ only in member order, whitespace or such spellings hash the same;
//! any change of a value or a name changes the hash. Pure: no host call, no stage of the
//! request path.

use serde_json::{Number, Value};

/// The gauge's name prefix; the plugin's name (as a metric label) follows.
pub const GAUGE_PREFIX: &str = "mesh_oauth.config_hash";

/// Hex digits of the hash the gauge carries: 48 bits, exact in the double Prometheus stores.
pub const GAUGE_HEX_DIGITS: usize = 12;

/// A configuration's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigHash([u8; 32]);

impl ConfigHash {
    /// The SHA-256 of `json`'s canonical form; `None` when `json` is not JSON (the parser
    /// refuses such a configuration first, with its own error).
    pub fn of(json: &str) -> Option<ConfigHash> {
        let value: Value = serde_json::from_str(json).ok()?;
        Some(ConfigHash::of_value(&value))
    }

    /// The SHA-256 of a parsed configuration's canonical form.
    pub fn of_value(value: &Value) -> ConfigHash {
        let canonical = canonical(value);
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        ConfigHash(bytes)
    }

    /// 64 lower-case hex digits, as `sha256sum` writes a digest.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The gauge's value: the hash's first 12 hex digits read as one integer (below 2^48).
    pub fn gauge_value(&self) -> u64 {
        self.0
            .iter()
            .take(GAUGE_HEX_DIGITS / 2)
            .fold(0u64, |value, byte| (value << 8) | u64::from(*byte))
    }
}

/// `mesh_oauth.config_hash.<plugin>`: the plugin's name with every character other than ASCII
/// letters and digits as `_` (as metric names write providers), `unnamed` when it has none.
pub fn gauge_name(plugin: &str) -> String {
    let label = match crate::config::metric_label(plugin) {
        label if label.is_empty() => "unnamed".to_string(),
        label => label,
    };
    format!("{GAUGE_PREFIX}.{label}")
}

/// The canonical form described in the module's documentation.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(members) => {
            // Sorted here, whatever order serde_json's map keeps (its `preserve_order`
            // feature may be switched on by another crate in the build).
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (name, member)) in sorted.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(name, out);
                out.push(':');
                write(member, out);
            }
            out.push('}');
        }
    }
}

/// Integral doubles up to this magnitude are exact integers.
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

fn write_number(number: &Number, out: &mut String) {
    if let Some(u) = number.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(i) = number.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(f) = number.as_f64() {
        if f.fract() == 0.0 && f.abs() <= EXACT_INTEGER {
            // `as` is exact here: the value is integral and within 2^53. `-0.0` becomes 0.
            out.push_str(&(f as i64).to_string());
        } else {
            // serde_json writes a double as the shortest decimal that reads back the same.
            out.push_str(&number.to_string());
        }
    }
}

fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(json: &str) -> String {
        ConfigHash::of(json).map(|h| h.hex()).unwrap_or_default()
    }

    #[test]
    fn the_hash_is_sha256_of_the_canonical_text() {
        let json = r#"{ "rules": [], "providers": [ {"issuer": "https://idp.example.com"} ] }"#;
        let canonical_text = r#"{"providers":[{"issuer":"https://idp.example.com"}],"rules":[]}"#;
        let value: Value = serde_json::from_str(json).unwrap_or_default();
        assert_eq!(canonical(&value), canonical_text);
        // sha256sum of the canonical text, computed outside this code:
        // printf '%s' '{"providers":[{"issuer":"https://idp.example.com"}],"rules":[]}' | sha256sum
        assert_eq!(
            hex(json),
            "6c9942775addeba1ee8e1d3680ec25e346bd7afdf4c99958cc048cd3d3d1b0cd"
        );
    }

    #[test]
    fn member_order_and_whitespace_do_not_change_the_hash() {
        let a =
            r#"{"providers":[{"issuer":"https://a","audiences":["x","y"]}],"unmatched":"deny"}"#;
        let b = "{\n  \"unmatched\" : \"deny\",\n\t\"providers\": [ { \"audiences\": [ \"x\", \"y\" ],\r\n \"issuer\": \"https://a\" } ]\n}\n";
        assert_eq!(hex(a), hex(b));
        assert_eq!(hex(a).len(), 64);
    }

    #[test]
    fn any_change_of_a_value_a_name_or_an_order_in_a_list_changes_the_hash() {
        let base = hex(r#"{"providers":[{"issuer":"https://a","audiences":["x","y"]}]}"#);
        for other in [
            r#"{"providers":[{"issuer":"https://b","audiences":["x","y"]}]}"#,
            r#"{"providers":[{"issuer":"https://a","audiences":["y","x"]}]}"#,
            r#"{"providers":[{"issuer":"https://a","audience":["x","y"]}]}"#,
            r#"{"providers":[{"issuer":"https://a","audiences":["x","y"],"timeout":"5s"}]}"#,
            r#"{"providers":[{"issuer":"https://a ","audiences":["x","y"]}]}"#,
        ] {
            assert_ne!(hex(other), base, "{other}");
        }
    }

    #[test]
    fn spellings_of_one_string_or_number_hash_the_same() {
        assert_eq!(hex(r#"{"a":"\u0041\/"}"#), hex(r#"{"a":"A/"}"#));
        assert_eq!(hex(r#"{"a":"é"}"#), hex(r#"{"a":"\u00e9"}"#));
        assert_eq!(hex(r#"{"a":60}"#), hex(r#"{"a":60.0}"#));
        assert_eq!(hex(r#"{"a":60}"#), hex(r#"{"a":6e1}"#));
        assert_eq!(hex(r#"{"a":0.5}"#), hex(r#"{"a":5e-1}"#));
        assert_ne!(hex(r#"{"a":60}"#), hex(r#"{"a":"60"}"#));
        assert_ne!(hex(r#"{"a":0.5}"#), hex(r#"{"a":0.25}"#));
    }

    #[test]
    fn canonical_strings_escape_only_what_json_requires() {
        let value =
            serde_json::json!({"b": "q\"\\\n\u{1}\u{2028}/é", "a": [1.5, -3, 1e300, null, true]});
        assert_eq!(
            canonical(&value),
            "{\"a\":[1.5,-3,1e+300,null,true],\"b\":\"q\\\"\\\\\\n\\u0001\u{2028}/é\"}"
        );
    }

    #[test]
    fn members_sort_by_code_point() {
        let value = serde_json::json!({"b": 1, "B": 2, "é": 3, "a": 4, "aa": 5});
        assert_eq!(canonical(&value), r#"{"B":2,"a":4,"aa":5,"b":1,"é":3}"#);
    }

    #[test]
    fn the_gauge_carries_the_first_twelve_hex_digits_exactly() {
        let Some(hash) = ConfigHash::of(r#"{"providers":[]}"#) else {
            panic!("JSON");
        };
        let value = hash.gauge_value();
        assert_eq!(format!("{value:012x}"), hash.hex()[..12]);
        assert!(value < 1 << 48);
        // A double holds it exactly, as Prometheus stores it.
        assert_eq!(value as f64 as u64, value);
    }

    #[test]
    fn the_gauge_is_named_after_the_plugin() {
        assert_eq!(
            gauge_name("istio-system.mesh-baseline"),
            "mesh_oauth.config_hash.istio_system_mesh_baseline"
        );
        assert_eq!(gauge_name(""), "mesh_oauth.config_hash.unnamed");
    }

    #[test]
    fn text_that_is_not_json_has_no_hash() {
        assert_eq!(ConfigHash::of("{"), None);
        assert_eq!(ConfigHash::of(""), None);
    }
}
