//! `--since auto`: the last complete export's `transactionTime` per (server, target), kept in a
//! state file and written only after a complete export.

use crate::util::{self, CliError};
use fhirbulk::{Config, Level};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// `$XDG_STATE_HOME/fhirbulk/state.json`, else `~/.local/state/fhirbulk/state.json`.
pub fn default_path() -> Result<PathBuf, CliError> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(x);
        if p.is_absolute() {
            return Ok(p.join("fhirbulk").join("state.json"));
        }
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => Ok(PathBuf::from(h)
            .join(".local")
            .join("state")
            .join("fhirbulk")
            .join("state.json")),
        None => Err(CliError::usage(
            "--since auto needs a state file: set --state-file, XDG_STATE_HOME or HOME",
        )),
    }
}

/// The key of an export target: base URL (without trailing slash) and level/group.
pub fn target_key(c: &Config) -> (String, String) {
    let base = c.base_url.trim_end_matches('/').to_owned();
    let target = match c.level {
        Level::System => "system".to_owned(),
        Level::Patient => "patient".to_owned(),
        Level::Group => format!("group/{}", c.group_id.as_deref().unwrap_or("")),
    };
    (base, target)
}

fn read(path: &Path) -> Result<Map<String, Value>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(CliError::usage(format!(
                "state file {} is not a fhirbulk state file (JSON object); fix or remove it",
                path.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(CliError::io(
            format_args!("cannot read state file {}", path.display()),
            &e,
        )),
    }
}

/// The last complete export's `transactionTime` for this target, if any.
pub fn lookup(path: &Path, base: &str, target: &str) -> Result<Option<String>, CliError> {
    let m = read(path)?;
    Ok(m.get("exports")
        .and_then(|e| e.get(base))
        .and_then(|b| b.get(target))
        .and_then(|t| t.get("transactionTime"))
        .and_then(Value::as_str)
        .map(str::to_owned))
}

/// Record a complete export's `transactionTime` (atomically; other targets are kept).
pub fn store(path: &Path, base: &str, target: &str, tt: &str) -> Result<(), CliError> {
    let mut m = read(path)?;
    m.insert("fhirbulk_state".into(), json!(1));
    let exports = m
        .entry("exports")
        .or_insert_with(|| Value::Object(Map::new()));
    if !exports.is_object() {
        *exports = Value::Object(Map::new());
    }
    let by_base = exports
        .as_object_mut()
        .expect("object")
        .entry(base.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !by_base.is_object() {
        *by_base = Value::Object(Map::new());
    }
    by_base.as_object_mut().expect("object").insert(
        target.to_owned(),
        json!({ "transactionTime": tt, "completedAt": util::now() }),
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::io(format_args!("cannot create {}", dir.display()), &e))?;
    }
    let text = serde_json::to_vec_pretty(&Value::Object(m)).unwrap_or_default();
    util::write_atomic(path, &text).map_err(|e| {
        CliError::io(
            format_args!("cannot write state file {}", path.display()),
            &e,
        )
    })
}
