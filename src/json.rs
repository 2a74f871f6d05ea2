//! Strict JSON for token headers and payloads. serde_json alone keeps the last of duplicate
//! member names (so two parties can read different claims from one token) and bounds nothing
//! but recursion; this parser refuses duplicates and caps depth and size.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};
use std::fmt;

#[derive(Debug, Clone, Copy)]
pub struct JsonLimits {
    /// Nesting of objects and arrays; the top-level object is depth 1.
    pub max_depth: usize,
    /// Object members plus array elements, counted over the whole document.
    pub max_members: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    InvalidUtf8,
    Syntax,
    NotObject,
    DuplicateMember,
    TooDeep,
    TooManyMembers,
}

impl JsonError {
    pub fn describe(self) -> &'static str {
        match self {
            JsonError::InvalidUtf8 => "not valid UTF-8",
            JsonError::Syntax => "not valid JSON",
            JsonError::NotObject => "not a JSON object",
            JsonError::DuplicateMember => "duplicate member name",
            JsonError::TooDeep => "nested too deeply",
            JsonError::TooManyMembers => "too many members",
        }
    }
}

/// Parses a JSON text whose top level must be an object, rejecting duplicate member names
/// (at any depth), nesting deeper than `max_depth` (top-level object = depth 1), and more than
/// `max_members` object members + array elements in total. Whitespace around the object is
/// allowed (it is JSON); anything else after it is a syntax error.
///
/// serde_json refuses nesting beyond 127 levels on its own; with a `max_depth` above that,
/// such input is reported as `Syntax` rather than `TooDeep`.
pub fn parse_object(bytes: &[u8], limits: JsonLimits) -> Result<Map<String, Value>, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::InvalidUtf8)?;
    let mut budget = Budget {
        max_depth: limits.max_depth,
        members_left: limits.max_members,
        refusal: None,
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = ValueSeed {
        depth: 1,
        budget: &mut budget,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    match parsed {
        Ok(Value::Object(members)) => Ok(members),
        Ok(_) => Err(JsonError::NotObject),
        // serde_json's error type cannot carry our cause, so the visitor leaves it here.
        Err(_) => Err(budget.refusal.unwrap_or(JsonError::Syntax)),
    }
}

struct Budget {
    max_depth: usize,
    members_left: usize,
    refusal: Option<JsonError>,
}

impl Budget {
    fn refuse<E: de::Error>(&mut self, cause: JsonError) -> E {
        self.refusal = Some(cause);
        E::custom(cause.describe())
    }
}

/// One JSON value at `depth` (the depth a container would have if the value is one).
struct ValueSeed<'b> {
    depth: usize,
    budget: &'b mut Budget,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        // Every value below the top level is exactly one member or element.
        if self.depth > 1 {
            match self.budget.members_left.checked_sub(1) {
                Some(left) => self.budget.members_left = left,
                None => return Err(self.budget.refuse(JsonError::TooManyMembers)),
            }
        }
        deserializer.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    /// Refuses a container before any of its contents are read, so hostile nesting
    /// costs a bounded amount of stack.
    fn enter<E: de::Error>(&mut self) -> Result<usize, E> {
        if self.depth > self.budget.max_depth {
            return Err(self.budget.refuse(JsonError::TooDeep));
        }
        Ok(self.depth.saturating_add(1))
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        // serde_json never hands over a non-finite float; refuse rather than trust that.
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| self.budget.refuse(JsonError::Syntax))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element_seed(ValueSeed {
            depth: inner,
            budget: &mut *self.budget,
        })? {
            elements.push(element);
        }
        Ok(Value::Array(elements))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            match members.entry(name) {
                Entry::Occupied(_) => return Err(self.budget.refuse(JsonError::DuplicateMember)),
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(ValueSeed {
                        depth: inner,
                        budget: &mut *self.budget,
                    })?);
                }
            }
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: JsonLimits = JsonLimits {
        max_depth: 4,
        max_members: 8,
    };

    fn parse(text: &str) -> Result<Map<String, Value>, JsonError> {
        parse_object(text.as_bytes(), LIMITS)
    }

    /// `{"a":` + `[`×(depth-1) + `]`×(depth-1) + `}`: an object nested `depth` levels deep.
    fn nested(depth: usize) -> String {
        let inner = depth.saturating_sub(1);
        format!("{{\"a\":{}{}}}", "[".repeat(inner), "]".repeat(inner))
    }

    #[test]
    fn parses_an_object_into_values() {
        let parsed = parse(r#" {"s":"x\u00e9","n":-1,"u":2,"f":1.5,"b":true,"z":null,"a":[1]} "#);
        assert_eq!(
            parsed.map(Value::Object),
            Ok(json!({"s":"xé","n":-1,"u":2,"f":1.5,"b":true,"z":null,"a":[1]}))
        );
        assert_eq!(parse("{}").map(|m| m.len()), Ok(0));
    }

    #[test]
    fn top_level_must_be_an_object() {
        for text in ["[]", "[1,2]", r#""text""#, "42", "true", "null"] {
            assert_eq!(parse(text), Err(JsonError::NotObject), "{text}");
        }
    }

    #[test]
    fn malformed_json_is_a_syntax_error() {
        for text in [
            "",
            " ",
            "{",
            r#"{"a":1,}"#,
            r#"{'a':1}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":1e400}"#,
            "{\"a\":\"tab\there\"}",
        ] {
            assert_eq!(parse(text), Err(JsonError::Syntax), "{text:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(
            parse_object(b"{\"a\":\"\xff\"}", LIMITS),
            Err(JsonError::InvalidUtf8)
        );
        // An overlong encoding of '/' is not UTF-8 either.
        assert_eq!(
            parse_object(b"{\"a\":\"\xc0\xaf\"}", LIMITS),
            Err(JsonError::InvalidUtf8)
        );
    }

    #[test]
    fn duplicate_member_names_are_refused_at_any_depth() {
        for text in [
            r#"{"a":1,"a":1}"#,
            r#"{"a":1,"b":2,"a":3}"#,
            r#"{"o":{"k":1,"k":2}}"#,
            r#"{"l":[{"k":1,"k":2}]}"#,
            // Escapes name the same member.
            r#"{"a":1,"\u0061":2}"#,
        ] {
            assert_eq!(parse(text), Err(JsonError::DuplicateMember), "{text}");
        }
        // Same name in sibling objects is fine.
        assert!(parse(r#"{"x":{"k":1},"y":{"k":2}}"#).is_ok());
    }

    #[test]
    fn depth_is_limited_at_the_configured_level() {
        assert_eq!(parse(&nested(4)).map(|m| m.len()), Ok(1));
        assert_eq!(parse(&nested(5)), Err(JsonError::TooDeep));
        assert!(parse(r#"{"a":{"b":{"c":{}}}}"#).is_ok());
        assert_eq!(
            parse(r#"{"a":{"b":{"c":{"d":1}}}}"#).map(|m| m.len()),
            Ok(1)
        );
        assert_eq!(
            parse(r#"{"a":{"b":{"c":{"d":{}}}}}"#),
            Err(JsonError::TooDeep)
        );
        let flat = JsonLimits {
            max_depth: 1,
            ..LIMITS
        };
        assert!(parse_object(br#"{"a":1}"#, flat).is_ok());
        assert_eq!(parse_object(br#"{"a":[]}"#, flat), Err(JsonError::TooDeep));
    }

    #[test]
    fn hostile_nesting_is_refused_without_exhausting_the_stack() {
        let open = format!("{{\"a\":{}", "[".repeat(10_000));
        assert_eq!(parse(&open), Err(JsonError::TooDeep));
        let closed = nested(10_000);
        assert_eq!(parse(&closed), Err(JsonError::TooDeep));
        let objects = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert_eq!(parse(&objects), Err(JsonError::TooDeep));
    }

    #[test]
    fn serde_json_recursion_limit_still_refuses_beyond_its_reach() {
        let generous = JsonLimits {
            max_depth: 1_000,
            max_members: 1_000,
        };
        assert!(parse_object(nested(127).as_bytes(), generous).is_ok());
        assert_eq!(
            parse_object(nested(10_000).as_bytes(), generous),
            Err(JsonError::Syntax)
        );
    }

    #[test]
    fn members_and_elements_are_counted_together() {
        // 8 = 3 members + 5 elements.
        assert!(parse(r#"{"a":1,"b":[1,2,3],"c":{"d":[4]}}"#).is_ok());
        assert_eq!(
            parse(r#"{"a":1,"b":[1,2,3],"c":{"d":[4,5]}}"#),
            Err(JsonError::TooManyMembers)
        );
        let at_limit = (0..8).map(|i| format!("\"m{i}\":{i}")).collect::<Vec<_>>();
        assert_eq!(
            parse(&format!("{{{}}}", at_limit.join(","))).map(|m| m.len()),
            Ok(8)
        );
        let past_limit = (0..9).map(|i| format!("\"m{i}\":{i}")).collect::<Vec<_>>();
        assert_eq!(
            parse(&format!("{{{}}}", past_limit.join(","))),
            Err(JsonError::TooManyMembers)
        );
        assert_eq!(
            parse("{\"a\":[[],[],[],[],[],[],[],[]]}"),
            Err(JsonError::TooManyMembers)
        );
    }
}
