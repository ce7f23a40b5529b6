//! A config built key by key from C (librdkafka's `rd_kafka_conf_set` is the model), so a C
//! program need not write a JSON escaper: `fhirbulk_config_set(c, "concurrency", "4")`, then
//! `export_start_config`. Each set is checked against the engine's config type at once, and a
//! wrong key or value is an error naming it; rules between keys (a group export needs
//! `group_id`) are checked by `export_start_config`, like `export_start` does.

use super::{boundary, invalid_argument, start_into, FhirbulkExport, FhirbulkStatus, FHIRBULK_OK};
use crate::error::Error;
use crate::Config;
use libc::c_char;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A config being built. Opaque: the pointer value is an id, never dereferenced.
pub struct FhirbulkConfig {
    _private: [u8; 0],
}

/// A config's keys so far (the JSON object `export_start_config` reads).
type Keys = Arc<Mutex<Map<String, Value>>>;

static CONFIGS: Lazy<Mutex<HashMap<usize, Keys>>> = Lazy::new(|| Mutex::new(HashMap::new()));
/// Config ids: never reused (and apart from export handles' ids).
static NEXT_CONFIG: AtomicUsize = AtomicUsize::new(0x0c0f_0000);

fn lookup_config(c: *const FhirbulkConfig) -> Result<Keys, Error> {
    CONFIGS
        .lock()
        .get(&(c as usize))
        .cloned()
        .ok_or_else(invalid_config)
}

fn invalid_config() -> Error {
    Error::new(
        crate::ErrorCode::InvalidHandle,
        "invalid config handle: NULL, already freed, or not returned by fhirbulk_config_new",
    )
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(invalid_argument(&format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::config(format!("invalid config: {what} is not UTF-8")))
}

/// Where `key` goes in the JSON config: `auth.client_id` is `auth` then `client_id`; the maps
/// `headers.<Name>` and `params.<name>` take the rest as one name (it may hold dots).
fn path_of(key: &str) -> Vec<&str> {
    match key.split_once('.') {
        Some((top @ ("headers" | "params"), rest)) => vec![top, rest],
        Some(_) => key.split('.').collect(),
        None => vec![key],
    }
}

/// `map` with `value` at `path` (objects made on the way; a value in the way replaced).
fn put(map: &mut Map<String, Value>, path: &[&str], value: Value) {
    let (last, parents) = path.split_last().expect("a key has a name");
    let mut m = map;
    for p in parents {
        let slot = m
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        m = slot.as_object_mut().expect("an object");
    }
    m.insert(last.to_string(), value);
}

fn get<'a>(map: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = map.get(*first)?;
    for p in rest {
        v = v.as_object()?.get(*p)?;
    }
    Some(v)
}

/// Whether the config `map` deserializes, as far as `path` is concerned: None when it does
/// (or fails only elsewhere: another key not set yet), the error naming `key` when the value
/// at `path` is wrong.
fn check(map: &Map<String, Value>, path: &[&str], key: &str) -> Option<Error> {
    // The key's own entry alone: an error elsewhere (a key not complete yet) cannot hide one
    // here, since serde stops at the first.
    let mut doc = Map::new();
    if let Some(v) = map.get(path[0]) {
        doc.insert(path[0].to_owned(), v.clone());
    }
    doc.entry("base_url")
        .or_insert_with(|| Value::String("http://127.0.0.1/".into()));
    let text = Value::Object(doc).to_string();
    let mut de = serde_json::Deserializer::from_str(&text);
    let e = match serde_path_to_error::deserialize::<_, Config>(&mut de) {
        Ok(_) => return None,
        Err(e) => e,
    };
    let at = e.path().to_string();
    let inner = e.into_inner().to_string();
    let dotted = path.join(".");
    let parent = path[..path.len() - 1].join(".");
    let here = at == dotted
        || at.starts_with(&format!("{dotted}[")) // an element of a list
        || at.starts_with(&format!("{dotted}."))
        // An unknown field is reported at its parent.
        || ((at == parent || (parent.is_empty() && at == "."))
            && inner.contains(&format!("unknown field `{}`", path[path.len() - 1])));
    if !here {
        return None;
    }
    // serde_json's position in the JSON this module wrote means nothing to the caller.
    let inner = match inner.rfind(" at line ") {
        Some(i) => inner[..i].to_owned(),
        None => inner,
    };
    let mut msg = format!("invalid config: {key}: {inner}");
    if inner.starts_with("unknown field") {
        if let Some(near) = nearest(path[path.len() - 1], &inner) {
            msg = format!("invalid config: unknown key `{key}` (did you mean `{near}`?)");
        } else {
            msg = format!("invalid config: unknown key `{key}`");
        }
    }
    Some(Error::config(msg))
}

/// The known name (from serde's "expected one of `a`, `b`") nearest to `name`, if one is close.
fn nearest(name: &str, message: &str) -> Option<String> {
    let known: Vec<&str> = message
        .split_once("expected")?
        .1
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k.to_owned())
}

/// Levenshtein distance (config keys are short; no crate for this one loop).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The readings of a text value, in the order they are tried: JSON first when it looks like
/// an object or a list; else the text, then JSON (numbers, booleans), then a comma-separated
/// list.
fn readings(value: &str) -> Vec<Value> {
    let json = serde_json::from_str::<Value>(value).ok();
    let list = Value::Array(
        value
            .split(',')
            .map(|s| Value::String(s.trim().to_owned()))
            .filter(|s| s.as_str() != Some(""))
            .collect(),
    );
    let t = value.trim_start();
    let mut v = Vec::new();
    if t.starts_with('{') || t.starts_with('[') {
        v.extend(json.clone());
    }
    v.push(Value::String(value.to_owned()));
    v.extend(json);
    v.push(list);
    v
}

/// `key`'s place in the config (see [`path_of`]), or an error when it is not a key.
fn key_path(key: &str) -> Result<Vec<&str>, Error> {
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(Error::config(format!(
            "invalid config: {key:?} is not a key"
        )));
    }
    Ok(path_of(key))
}

/// Set `key` in `map` to the first reading of `value` its type takes; `map` is unchanged and
/// the first reading's error returned when none does.
fn set_text(map: &mut Map<String, Value>, key: &str, value: &str) -> Result<(), Error> {
    let path = key_path(key)?;
    let mut first_err = None;
    for v in readings(value) {
        let mut trial = map.clone();
        put(&mut trial, &path, v);
        match check(&trial, &path, key) {
            None => {
                *map = trial;
                return Ok(());
            }
            Some(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.expect("readings() gives at least the text itself"))
}

/// Make a new, empty config. Free it with `fhirbulk_config_free` (`export_start_config` does
/// not take it: one config can start several exports).
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fhirbulk_config_new(out: *mut *mut FhirbulkConfig) -> FhirbulkStatus {
    boundary(|| {
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        let id = NEXT_CONFIG.fetch_add(16, Ordering::Relaxed);
        CONFIGS.lock().insert(id, Arc::new(Mutex::new(Map::new())));
        // SAFETY: non-NULL and writable per the contract.
        unsafe { *out = id as *mut FhirbulkConfig };
        Ok(FHIRBULK_OK)
    })
}

/// Set a config key (README, "Config keys") from text, the value read as the key's type:
/// `"4"` for a number, `"true"` for a boolean, `"Patient,Observation"` or
/// `["Patient","Observation"]` for a list, a JSON object for an object; nested keys with dots
/// (`"auth.type"`, `"auth.client_id"`, `"headers.X-Tenant"`, `"params._vendor"`). Setting a
/// key again replaces its value. A key the engine does not know, or a value that cannot be the
/// key's type, is `FHIRBULK_ERR_CONFIG` with a message naming the key (`export_last_error(NULL,
/// ...)`), and the config keeps its earlier value.
///
/// # Safety
/// `key` and `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn fhirbulk_config_set(
    c: *mut FhirbulkConfig,
    key: *const c_char,
    value: *const c_char,
) -> FhirbulkStatus {
    boundary(|| {
        let cfg = lookup_config(c)?;
        // SAFETY: forwarded caller contract.
        let (key, value) = unsafe { (text(key, "key")?, text(value, "value")?) };
        let mut map = cfg.lock();
        set_text(&mut map, key, value)?;
        Ok(FHIRBULK_OK)
    })
}

/// Append `value` as it is (no splitting at commas) to the list at `key`
/// (`"types"`, `"type_filters"`, `"patients"`, `"elements"`, a `params.<name>` list, ...).
/// Errors as `fhirbulk_config_set`.
///
/// # Safety
/// `key` and `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn fhirbulk_config_add(
    c: *mut FhirbulkConfig,
    key: *const c_char,
    value: *const c_char,
) -> FhirbulkStatus {
    boundary(|| {
        let cfg = lookup_config(c)?;
        // SAFETY: forwarded caller contract.
        let (key, value) = unsafe { (text(key, "key")?, text(value, "value")?) };
        let path = key_path(key)?;
        let mut map = cfg.lock();
        let mut list = match get(&map, &path) {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::String(s)) => vec![Value::String(s.clone())],
            _ => Vec::new(),
        };
        list.push(Value::String(value.to_owned()));
        let mut trial = map.clone();
        put(&mut trial, &path, Value::Array(list));
        if let Some(e) = check(&trial, &path, key) {
            return Err(e);
        }
        *map = trial;
        Ok(FHIRBULK_OK)
    })
}

/// Start an export from a config built with `fhirbulk_config_set`; otherwise exactly
/// `export_start` (the config stays the caller's: free it when no longer needed).
///
/// # Safety
/// `out_handle` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn export_start_config(
    c: *const FhirbulkConfig,
    out_handle: *mut *mut FhirbulkExport,
) -> FhirbulkStatus {
    boundary(|| {
        let cfg = lookup_config(c)?;
        if out_handle.is_null() {
            return Err(invalid_argument("out_handle is NULL"));
        }
        let text = Value::Object(cfg.lock().clone()).to_string();
        let config = Config::from_json(&text).map_err(|mut e| {
            if let Some(i) = e.message.rfind(" at line ") {
                e.message.truncate(i);
            }
            e
        })?;
        // SAFETY: `out_handle` is non-NULL and writable per the contract.
        unsafe { start_into(config, out_handle) }
    })
}

/// Free a config. NULL gives `FHIRBULK_OK`; a freed or foreign one
/// `FHIRBULK_ERR_INVALID_HANDLE`. Exports started from it are not affected.
#[no_mangle]
pub extern "C" fn fhirbulk_config_free(c: *mut FhirbulkConfig) -> FhirbulkStatus {
    boundary(|| {
        if c.is_null() {
            return Ok(FHIRBULK_OK);
        }
        CONFIGS
            .lock()
            .remove(&(c as usize))
            .map(|_| FHIRBULK_OK)
            .ok_or_else(invalid_config)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(m: &mut Map<String, Value>, key: &str, value: &str) -> Result<(), String> {
        set_text(m, key, value).map_err(|e| e.message)
    }

    #[test]
    fn values_take_the_keys_types() {
        let mut m = Map::new();
        set(&mut m, "base_url", "https://h/fhir").unwrap();
        set(&mut m, "concurrency", "4").unwrap();
        set(&mut m, "lenient", "true").unwrap();
        set(&mut m, "types", "Patient, Observation").unwrap();
        set(&mut m, "type_filters", r#"["Observation?code=a,b"]"#).unwrap();
        set(&mut m, "since", "2024-01-01T00:00:00Z").unwrap();
        set(&mut m, "auth.type", "client_credentials").unwrap();
        set(&mut m, "auth.client_id", "123").unwrap();
        set(&mut m, "auth.private_key", r#"{"file": "/k.pem"}"#).unwrap();
        set(&mut m, "headers.X-Tenant.Id", "t1").unwrap();
        assert_eq!(m["concurrency"], 4);
        assert_eq!(m["lenient"], true);
        assert_eq!(m["types"], serde_json::json!(["Patient", "Observation"]));
        assert_eq!(
            m["auth"]["client_id"], "123",
            "a string key keeps digits as text"
        );
        assert_eq!(m["auth"]["private_key"]["file"], "/k.pem");
        assert_eq!(m["headers"]["X-Tenant.Id"], "t1");
        let c = Config::from_json(&Value::Object(m).to_string()).unwrap();
        assert_eq!(c.concurrency, 4);
    }

    #[test]
    fn errors_name_the_key() {
        let mut m = Map::new();
        let e = set(&mut m, "concurency", "4").unwrap_err();
        assert_eq!(
            e,
            "invalid config: unknown key `concurency` (did you mean `concurrency`?)"
        );
        let e = set(&mut m, "concurrency", "many").unwrap_err();
        assert!(
            e.starts_with("invalid config: concurrency: invalid type: string \"many\""),
            "{e}"
        );
        assert!(!e.contains("line 1"), "{e}");
        assert!(m.is_empty(), "a refused value is not kept: {m:?}");
        let e = set(&mut m, "auth..type", "x").unwrap_err();
        assert_eq!(e, "invalid config: \"auth..type\" is not a key");
        set(&mut m, "auth.type", "client_credentials").unwrap();
        set(&mut m, "auth.client_id", "c").unwrap();
        let e = set(&mut m, "auth.client_idd", "x").unwrap_err();
        assert!(e.contains("unknown key `auth.client_idd`"), "{e}");
        // An unfinished auth does not hide another key's error.
        let mut m = Map::new();
        set(&mut m, "auth.type", "client_credentials").unwrap();
        assert!(set(&mut m, "concurrency", "many").is_err());
    }
}
