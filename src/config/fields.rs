//! JSON walking for the parser: every value is read together with its path, so errors can
//! name it.

use super::*;

/// A JSON object whose field names have been checked against the known ones.
pub(super) struct Object<'a> {
    map: &'a serde_json::Map<String, Value>,
    /// `""` for the top level.
    pub(super) path: String,
}

impl<'a> Object<'a> {
    pub(super) fn new(value: &'a Value, path: &str, fields: &[&str]) -> Parsed<Object<'a>> {
        let shown = if path.is_empty() { WHOLE_CONFIG } else { path };
        let map = value
            .as_object()
            .ok_or_else(|| error(shown, "expected an object"))?;
        let object = Object {
            map,
            path: path.to_owned(),
        };
        if let Some(unknown) = map.keys().find(|key| !fields.contains(&key.as_str())) {
            return Err(error(&object.path_of(unknown), "unknown field"));
        }
        Ok(object)
    }

    pub(super) fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn optional<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&'a Value, &str) -> Parsed<T>,
    ) -> Parsed<Option<T>> {
        match self.map.get(key) {
            Some(value) => parse(value, &self.path_of(key)).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn required<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&'a Value, &str) -> Parsed<T>,
    ) -> Parsed<T> {
        self.optional(key, parse)?
            .ok_or_else(|| error(&self.path_of(key), "required"))
    }
}

pub(super) fn item_paths(path: &str) -> impl Iterator<Item = String> + '_ {
    (0usize..).map(move |index| format!("{path}[{index}]"))
}

pub(super) fn list<'a>(value: &'a Value, path: &str) -> Parsed<Vec<(String, &'a Value)>> {
    let array = value
        .as_array()
        .ok_or_else(|| error(path, "expected a list"))?;
    Ok(item_paths(path).zip(array).collect())
}

pub(super) fn items<'a, T>(
    value: &'a Value,
    path: &str,
    mut parse: impl FnMut(&'a Value, &str) -> Parsed<T>,
) -> Parsed<Vec<T>> {
    list(value, path)?
        .into_iter()
        .map(|(item_path, item)| parse(item, &item_path))
        .collect()
}

pub(super) fn non_empty_items<'a, T>(
    value: &'a Value,
    path: &str,
    parse: impl FnMut(&'a Value, &str) -> Parsed<T>,
) -> Parsed<Vec<T>> {
    let parsed = items(value, path, parse)?;
    if parsed.is_empty() {
        return Err(error(path, "must not be empty"));
    }
    Ok(parsed)
}

pub(super) fn reject_duplicates<T: PartialEq>(values: &[T], path: &str) -> Parsed<()> {
    for ((index, value), item_path) in values.iter().enumerate().zip(item_paths(path)) {
        if values.iter().take(index).any(|earlier| earlier == value) {
            return Err(error(&item_path, "listed twice"));
        }
    }
    Ok(())
}

pub(super) fn string(value: &Value, path: &str) -> Parsed<String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| error(path, "expected a string"))
}

pub(super) fn non_empty_string(value: &Value, path: &str) -> Parsed<String> {
    let text = string(value, path)?;
    if text.trim().is_empty() {
        return Err(error(path, "must not be empty"));
    }
    Ok(text)
}

pub(super) fn boolean(value: &Value, path: &str) -> Parsed<bool> {
    value
        .as_bool()
        .ok_or_else(|| error(path, "expected true or false"))
}

pub(super) fn non_negative_integer(value: &Value, path: &str) -> Parsed<u64> {
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

pub(super) fn positive_integer(value: &Value, path: &str) -> Parsed<u64> {
    let integer = non_negative_integer(value, path)?;
    if integer == 0 {
        return Err(error(path, "must be greater than zero"));
    }
    Ok(integer)
}

pub(super) fn positive_usize(value: &Value, path: &str) -> Parsed<usize> {
    usize::try_from(positive_integer(value, path)?).map_err(|_| error(path, "is too large"))
}
