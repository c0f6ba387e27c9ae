//! Reading request bodies field by field, so every bad field gets its own
//! specific message (the clients drop a lone "is invalid") and unknown
//! attributes are ignored, as the BigV API always did.

use std::collections::BTreeMap;

use axum::body::Bytes;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Largest request body accepted; the biggest real one (vm_create with
/// eight discs and a firstboot script) is a few KiB.
pub const MAX_BODY: usize = 1024 * 1024;

/// The fields of one JSON object, with errors collected per field.
pub struct Fields {
    map: Map<String, Value>,
    /// Dotted prefix for nested objects (`virtual_machine.memory`).
    prefix: String,
    errors: BTreeMap<String, Vec<String>>,
}

impl Fields {
    /// Parses a JSON object body; an empty body is an empty object.
    pub fn json(body: &[u8]) -> Result<Fields, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields::new(Map::new()));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Fields::new(map)),
            Ok(_) => Err(ApiError::field(
                "body",
                "must be a JSON object of attributes",
            )),
            Err(e) => Err(ApiError::field("body", format!("is not valid JSON: {e}"))),
        }
    }

    /// Parses `application/x-www-form-urlencoded` (values are strings).
    pub fn form(body: &[u8]) -> Result<Fields, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::field("body", format!("is not a valid form: {e}")))?;
        Ok(Fields::new(
            pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ))
    }

    /// JSON or form, by the request's content type.
    pub fn parse(content_type: Option<&str>, body: &Bytes) -> Result<Fields, ApiError> {
        let is_form =
            content_type.is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            Fields::form(body)
        } else {
            Fields::json(body)
        }
    }

    pub fn new(map: Map<String, Value>) -> Fields {
        Fields {
            map,
            prefix: String::new(),
            errors: BTreeMap::new(),
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Records a problem with `name`.
    pub fn error(&mut self, name: &str, message: impl Into<String>) {
        let path = self.path(name);
        self.errors.entry(path).or_default().push(message.into());
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Present and JSON `null` (e.g. `{"cdrom_url": null}` to eject).
    pub fn is_null(&self, name: &str) -> bool {
        matches!(self.map.get(name), Some(Value::Null))
    }

    pub fn raw(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }

    /// A string field; `None` when absent or null.
    pub fn string(&mut self, name: &str) -> Option<String> {
        match self.map.get(name)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => {
                self.error(name, "must be a string");
                None
            }
        }
    }

    /// A string that must be there and not blank.
    pub fn required_string(&mut self, name: &str) -> Option<String> {
        match self.string(name) {
            Some(s) if !s.trim().is_empty() => Some(s),
            Some(_) | None if !self.errors.contains_key(&self.path(name)) => {
                self.error(name, "can't be blank");
                None
            }
            _ => None,
        }
    }

    /// A whole number; numeric strings are accepted (`"validity":"1800"`).
    pub fn u64(&mut self, name: &str) -> Option<u64> {
        let parsed = match self.map.get(name)? {
            Value::Null => return None,
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.error(name, "must be a whole number, zero or more");
        }
        parsed
    }

    /// A whole number within `min..=max`, with a message naming the range.
    pub fn u64_in(&mut self, name: &str, min: u64, max: u64) -> Option<u64> {
        let n = self.u64(name)?;
        if n < min {
            self.error(name, format!("must be greater than or equal to {min}"));
            None
        } else if n > max {
            self.error(name, format!("must be less than or equal to {max}"));
            None
        } else {
            Some(n)
        }
    }

    /// A boolean; `"true"`/`"false"`/`"1"`/`"0"` (any case) are accepted
    /// for the Python client, which sends Python's `True`.
    pub fn bool(&mut self, name: &str) -> Option<bool> {
        let parsed = match self.map.get(name)? {
            Value::Null => return None,
            Value::Bool(b) => Some(*b),
            Value::Number(n) => n.as_u64().filter(|n| *n <= 1).map(|n| n == 1),
            Value::String(s) => truthy(s),
            _ => None,
        };
        if parsed.is_none() {
            self.error(name, "must be true or false");
        }
        parsed
    }

    /// A nested object, sharing this one's error list under `name.`.
    pub fn object(&mut self, name: &str) -> Option<Fields> {
        match self.map.get(name)? {
            Value::Null => None,
            Value::Object(map) => Some(Fields {
                map: map.clone(),
                prefix: format!("{}.", self.path(name)),
                errors: BTreeMap::new(),
            }),
            _ => {
                self.error(name, "must be an object of attributes");
                None
            }
        }
    }

    /// An array of objects (e.g. vm_create's `discs`).
    pub fn objects(&mut self, name: &str) -> Option<Vec<Fields>> {
        let items = match self.map.get(name)? {
            Value::Null => return None,
            Value::Array(items) => items.clone(),
            _ => {
                self.error(name, "must be a list");
                return None;
            }
        };
        let mut out = vec![];
        for (i, item) in items.into_iter().enumerate() {
            let prefix = format!("{}[{i}].", self.path(name));
            match item {
                Value::Object(map) => out.push(Fields {
                    map,
                    prefix,
                    errors: BTreeMap::new(),
                }),
                _ => self.error(&format!("{name}[{i}]"), "must be an object of attributes"),
            }
        }
        Some(out)
    }

    /// A list of strings.
    pub fn strings(&mut self, name: &str) -> Option<Vec<String>> {
        match self.map.get(name)? {
            Value::Null => None,
            Value::Array(items) => {
                let strings: Option<Vec<String>> = items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect();
                if strings.is_none() {
                    self.error(name, "must be a list of strings");
                }
                strings
            }
            _ => {
                self.error(name, "must be a list of strings");
                None
            }
        }
    }

    /// Takes a nested object's errors into this one.
    pub fn absorb(&mut self, nested: Fields) {
        for (k, v) in nested.errors {
            self.errors.entry(k).or_default().extend(v);
        }
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok` if every field read so far was good; else the 400 listing them.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.errors))
        }
    }
}

/// Query-string truthiness: `true`, `True`, `1`, `yes`.
pub fn truthy(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_field_gets_its_own_message_and_unknown_fields_are_ignored() {
        let mut f = Fields::json(
            br#"{"memory":"lots","cores":0,"power_on":"True","colour":"red",
                "virtual_machine":{"name":""}}"#,
        )
        .unwrap();
        assert_eq!(f.u64("memory"), None);
        assert_eq!(f.u64_in("cores", 1, 16), None);
        assert_eq!(f.bool("power_on"), Some(true));
        let mut vm = f.object("virtual_machine").unwrap();
        assert_eq!(vm.required_string("name"), None);
        f.absorb(vm);
        let Err(ApiError::Invalid(errors)) = f.finish() else {
            panic!("expected field errors")
        };
        assert_eq!(errors["memory"], ["must be a whole number, zero or more"]);
        assert_eq!(errors["cores"], ["must be greater than or equal to 1"]);
        assert_eq!(errors["virtual_machine.name"], ["can't be blank"]);
        assert!(!errors.contains_key("colour"));
    }

    #[test]
    fn form_bodies_and_empty_bodies_parse() {
        let mut f = Fields::form(b"username=alice&password=s%20cret").unwrap();
        assert_eq!(f.string("password").as_deref(), Some("s cret"));
        assert!(Fields::json(b"").unwrap().finish().is_ok());
        assert!(Fields::json(b"[1]").is_err());
        assert!(Fields::json(b"{nope").is_err());
    }
}
