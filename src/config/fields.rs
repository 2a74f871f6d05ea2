//! JSON walking for the parser: every value is read together with its path, so errors can
//! name it.

use super::*;
use std::fmt;

/// Where a value sits in the configuration, formatted only when an error names it: a large
/// gateway's configuration has hundreds of thousands of values and, almost always, no error.
#[derive(Clone, Copy)]
pub(super) enum At<'p> {
    /// The configuration itself.
    Top,
    Field(&'p At<'p>, &'p str),
    Item(&'p At<'p>, usize),
}

impl<'p> At<'p> {
    pub(super) fn field(&'p self, key: &'p str) -> At<'p> {
        At::Field(self, key)
    }

    pub(super) fn item(&'p self, index: usize) -> At<'p> {
        At::Item(self, index)
    }
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Top => Ok(()),
            At::Field(At::Top, key) => f.write_str(key),
            At::Field(parent, key) => write!(f, "{parent}.{key}"),
            At::Item(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// A JSON object whose field names have been checked against the known ones.
pub(super) struct Object<'a, 'p> {
    map: &'a serde_json::Map<String, Value>,
    pub(super) path: At<'p>,
}

impl<'a, 'p> Object<'a, 'p> {
    pub(super) fn new(value: &'a Value, path: &At<'p>, fields: &[&str]) -> Parsed<Object<'a, 'p>> {
        let Some(map) = value.as_object() else {
            let shown = path.to_string();
            let shown = if shown.is_empty() {
                WHOLE_CONFIG
            } else {
                &shown
            };
            return Err(error(shown, "expected an object"));
        };
        let object = Object { map, path: *path };
        if let Some(unknown) = map.keys().find(|key| !fields.contains(&key.as_str())) {
            return Err(error(object.path_of(unknown), "unknown field"));
        }
        Ok(object)
    }

    pub(super) fn path_of<'k>(&'k self, key: &'k str) -> At<'k> {
        At::Field(&self.path, key)
    }

    pub(super) fn optional<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&'a Value, &At<'_>) -> Parsed<T>,
    ) -> Parsed<Option<T>> {
        match self.map.get(key) {
            Some(value) => parse(value, &self.path_of(key)).map(Some),
            None => Ok(None),
        }
    }

    /// The optional field `key`, naming one of `choices` ([`one_of`]); `default` when absent.
    pub(super) fn choice<T: Copy>(
        &self,
        key: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> Parsed<T> {
        Ok(self
            .optional(key, |value, path| one_of(value, path, choices))?
            .unwrap_or(default))
    }

    pub(super) fn required<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&'a Value, &At<'_>) -> Parsed<T>,
    ) -> Parsed<T> {
        self.optional(key, parse)?
            .ok_or_else(|| error(self.path_of(key), "required"))
    }
}

pub(super) fn list<'a>(value: &'a Value, path: &At<'_>) -> Parsed<&'a [Value]> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| error(path, "expected a list"))
}

pub(super) fn items<'a, T>(
    value: &'a Value,
    path: &At<'_>,
    mut parse: impl FnMut(&'a Value, &At<'_>) -> Parsed<T>,
) -> Parsed<Vec<T>> {
    list(value, path)?
        .iter()
        .enumerate()
        .map(|(index, item)| parse(item, &path.item(index)))
        .collect()
}

pub(super) fn non_empty_items<'a, T>(
    value: &'a Value,
    path: &At<'_>,
    parse: impl FnMut(&'a Value, &At<'_>) -> Parsed<T>,
) -> Parsed<Vec<T>> {
    let parsed = items(value, path, parse)?;
    if parsed.is_empty() {
        return Err(error(path, "must not be empty"));
    }
    Ok(parsed)
}

pub(super) fn reject_duplicates<T: PartialEq>(values: &[T], path: &At<'_>) -> Parsed<()> {
    for (index, value) in values.iter().enumerate() {
        if values.iter().take(index).any(|earlier| earlier == value) {
            return Err(error(path.item(index), "listed twice"));
        }
    }
    Ok(())
}

pub(super) fn string(value: &Value, path: &At<'_>) -> Parsed<String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| error(path, "expected a string"))
}

/// A string that names one of `choices`; any other is refused with the list
/// (`must be "a", "b" or "c"`).
pub(super) fn one_of<T: Copy>(value: &Value, path: &At<'_>, choices: &[(&str, T)]) -> Parsed<T> {
    let text = string(value, path)?;
    if let Some((_, chosen)) = choices.iter().find(|(name, _)| *name == text) {
        return Ok(*chosen);
    }
    let quoted: Vec<String> = choices
        .iter()
        .map(|(name, _)| format!("\"{name}\""))
        .collect();
    let listed = match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(error(path, format!("must be {listed}")))
}

pub(super) fn non_empty_string(value: &Value, path: &At<'_>) -> Parsed<String> {
    let text = string(value, path)?;
    if text.trim().is_empty() {
        return Err(error(path, "must not be empty"));
    }
    Ok(text)
}

pub(super) fn boolean(value: &Value, path: &At<'_>) -> Parsed<bool> {
    value
        .as_bool()
        .ok_or_else(|| error(path, "expected true or false"))
}

pub(super) fn non_negative_integer(value: &Value, path: &At<'_>) -> Parsed<u64> {
    let Value::Number(number) = value else {
        return Err(error(path, "expected an integer"));
    };
    if let Some(integer) = number.as_u64() {
        return Ok(integer);
    }
    if number.as_i64().is_some() {
        return Err(error(path, "must not be negative"));
    }
    Err(error(path, "expected an integer"))
}

pub(super) fn positive_integer(value: &Value, path: &At<'_>) -> Parsed<u64> {
    let integer = non_negative_integer(value, path)?;
    if integer == 0 {
        return Err(error(path, "must be greater than zero"));
    }
    Ok(integer)
}

pub(super) fn positive_usize(value: &Value, path: &At<'_>) -> Parsed<usize> {
    usize::try_from(positive_integer(value, path)?).map_err(|_| error(path, "is too large"))
}
