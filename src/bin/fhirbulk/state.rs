//! `--since auto`: the last complete export's `transactionTime` per (server, target), kept in a
//! state file and written only after a complete export.

use crate::util::{self, CliError};
use fhirbulk::{Config, Level};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// `fhirbulk/state.json` in the user's state directory: `dirs::state_dir()`, which is
/// `$XDG_STATE_HOME` (if absolute) else `$HOME/.local/state` on Linux and the BSDs. macOS and
/// Windows have none, so there it is the local data directory, `dirs::data_local_dir()`
/// (`~/Library/Application Support`, `%LOCALAPPDATA%`).
pub fn default_path() -> Result<PathBuf, CliError> {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .map(|d| d.join("fhirbulk").join("state.json"))
        .ok_or_else(|| {
            CliError::usage(
                "--since auto needs a state file: set --state-file, XDG_STATE_HOME or HOME",
            )
        })
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

/// Record a complete export's `transactionTime` (atomically; other targets are kept). The file
/// gets the file mode, directories created for it the directory mode.
pub fn store(
    path: &Path,
    perms: util::Perms,
    base: &str,
    target: &str,
    tt: &str,
) -> Result<(), CliError> {
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
        perms
            .create_dir_all(dir)
            .map_err(|e| CliError::io(format_args!("cannot create {}", dir.display()), &e))?;
    }
    let text = serde_json::to_vec_pretty(&Value::Object(m)).unwrap_or_default();
    util::write_atomic(path, perms, &text).map_err(|e| {
        CliError::io(
            format_args!("cannot write state file {}", path.display()),
            &e,
        )
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn default_path_follows_xdg_state_home_then_home() {
        let (xdg, home) = (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"));
        std::env::set_var("HOME", "/home/alice");
        std::env::set_var("XDG_STATE_HOME", "/var/state");
        let with_xdg = default_path().ok();
        // A relative XDG_STATE_HOME is ignored, as the XDG spec says.
        std::env::set_var("XDG_STATE_HOME", "relative");
        let relative = default_path().ok();
        std::env::remove_var("XDG_STATE_HOME");
        let without = default_path().ok();
        for (k, v) in [("XDG_STATE_HOME", xdg), ("HOME", home)] {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
        assert_eq!(with_xdg, Some("/var/state/fhirbulk/state.json".into()));
        let home_state = PathBuf::from("/home/alice/.local/state/fhirbulk/state.json");
        assert_eq!(relative.as_ref(), Some(&home_state));
        assert_eq!(without, Some(home_state));
    }
}
