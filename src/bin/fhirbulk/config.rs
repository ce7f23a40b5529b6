//! The engine config from `--config file.json` and the flags (flags win).

use crate::cli::{AlgArg, AttachmentsArg, AuthArgs, ExportArgs, InvalidLineArg, MethodArg};
use crate::util::CliError;
use serde_json::{json, Map, Value};
use std::path::Path;

/// Read a `--config` file: a JSON object of engine config keys.
pub fn read_config_file(path: &Path) -> Result<Map<String, Value>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("--config {}: cannot read: {e}", path.display())))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(CliError::usage(format!(
            "--config {}: must be a JSON object of config keys",
            path.display()
        ))),
        Err(e) => Err(CliError::usage(format!(
            "--config {}: not valid JSON: {e}",
            path.display()
        ))),
    }
}

fn set_list(m: &mut Map<String, Value>, key: &str, list: &[String]) {
    if !list.is_empty() {
        let v: Vec<Value> = list
            .iter()
            .map(|s| Value::String(s.trim().to_owned()))
            .collect();
        m.insert(key.into(), Value::Array(v));
    }
}

fn set_str(m: &mut Map<String, Value>, key: &str, v: &Option<String>) {
    if let Some(v) = v {
        m.insert(key.into(), Value::String(v.clone()));
    }
}

fn set_num(m: &mut Map<String, Value>, key: &str, v: Option<u64>) {
    if let Some(v) = v {
        m.insert(key.into(), json!(v));
    }
}

fn set_flag(m: &mut Map<String, Value>, key: &str, v: bool) {
    if v {
        m.insert(key.into(), Value::Bool(true));
    }
}

/// Apply the authorization flags to the config's `auth` object.
pub fn apply_auth(m: &mut Map<String, Value>, a: &AuthArgs) -> Result<(), CliError> {
    let bearer = match (&a.bearer_token_env, &a.bearer_token_file) {
        (Some(_), Some(_)) => {
            return Err(CliError::usage(
                "give the bearer token by --bearer-token-env or --bearer-token-file, not both",
            ))
        }
        (Some(env), None) => Some(json!({ "env": env })),
        (None, Some(file)) => Some(json!({ "file": file })),
        (None, None) => None,
    };
    let cc_flags = a.client_id.is_some()
        || a.private_key_file.is_some()
        || a.private_key_env.is_some()
        || a.client_secret_file.is_some()
        || a.client_secret_env.is_some()
        || a.kid.is_some()
        || a.alg.is_some()
        || a.jku.is_some()
        || a.scope.is_some()
        || a.token_url.is_some();
    if let Some(token) = bearer {
        if cc_flags {
            return Err(CliError::usage(
                "a bearer token cannot be combined with client credentials flags (--client-id, --private-key-*, ...)",
            ));
        }
        m.insert("auth".into(), json!({ "type": "bearer", "token": token }));
        return Ok(());
    }
    if !cc_flags {
        return Ok(());
    }
    let mut auth = match m.get("auth") {
        Some(Value::Object(o)) if o.get("type") == Some(&json!("client_credentials")) => o.clone(),
        _ => {
            let mut o = Map::new();
            o.insert("type".into(), json!("client_credentials"));
            o
        }
    };
    let secret = |env: &Option<String>, file: &Option<String>, what: &str| match (env, file) {
        (Some(_), Some(_)) => Err(CliError::usage(format!(
            "give the {what} by --{what}-env or --{what}-file, not both"
        ))),
        (Some(env), None) => Ok(Some(json!({ "env": env }))),
        (None, Some(file)) => Ok(Some(json!({ "file": file }))),
        (None, None) => Ok(None),
    };
    if let Some(k) = secret(&a.private_key_env, &a.private_key_file, "private-key")? {
        auth.insert("private_key".into(), k);
        auth.remove("client_secret");
    }
    if let Some(s) = secret(&a.client_secret_env, &a.client_secret_file, "client-secret")? {
        auth.insert("client_secret".into(), s);
        auth.remove("private_key");
    }
    set_str(&mut auth, "client_id", &a.client_id);
    set_str(&mut auth, "kid", &a.kid);
    set_str(&mut auth, "jku", &a.jku);
    set_str(&mut auth, "scope", &a.scope);
    set_str(&mut auth, "token_url", &a.token_url);
    if let Some(alg) = a.alg {
        let name = match alg {
            AlgArg::Rs384 => "RS384",
            AlgArg::Es384 => "ES384",
        };
        auth.insert("alg".into(), json!(name));
    }
    if !auth.contains_key("client_id") {
        return Err(CliError::usage(
            "client credentials need --client-id (or auth.client_id in --config)",
        ));
    }
    m.insert("auth".into(), Value::Object(auth));
    Ok(())
}

/// How `_since` is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    /// As given (or none).
    Fixed,
    /// From the state file: the last complete export's `transactionTime`.
    Auto,
}

/// The config object from `--config` and the flags; `since: auto` is taken out and reported.
pub fn build(a: &ExportArgs) -> Result<(Map<String, Value>, Since), CliError> {
    let mut m = match &a.config {
        Some(p) => read_config_file(p)?,
        None => Map::new(),
    };
    if m.contains_key("resume") {
        return Err(CliError::usage(
            "the config key \"resume\" is managed by fhirbulk (it resumes from the checkpoint in --out); remove it from --config",
        ));
    }
    set_str(&mut m, "base_url", &a.base_url);
    if let Some(g) = &a.group {
        m.insert("level".into(), json!("group"));
        m.insert("group_id".into(), json!(g));
    } else if a.patient_level {
        m.insert("level".into(), json!("patient"));
        m.remove("group_id");
    } else if a.system {
        m.insert("level".into(), json!("system"));
        m.remove("group_id");
    }
    set_list(&mut m, "types", &a.types);
    set_str(&mut m, "since", &a.since);
    set_str(&mut m, "until", &a.until);
    set_list(&mut m, "type_filters", &a.type_filter);
    set_list(&mut m, "elements", &a.elements);
    set_list(
        &mut m,
        "include_associated_data",
        &a.include_associated_data,
    );
    set_str(&mut m, "organize_output_by", &a.organize_output_by);
    set_str(&mut m, "output_format", &a.output_format);
    set_flag(&mut m, "allow_partial_manifests", a.allow_partial_manifests);
    set_list(&mut m, "patients", &a.patient);
    if let Some(meth) = a.method {
        let name = match meth {
            MethodArg::Auto => "auto",
            MethodArg::Get => "get",
            MethodArg::Post => "post",
        };
        m.insert("method".into(), json!(name));
    }
    set_flag(&mut m, "lenient", a.lenient);
    set_flag(&mut m, "separate_export_status", a.separate_export_status);
    if !a.param.is_empty() {
        let mut params = match m.remove("params") {
            Some(Value::Object(p)) => p,
            _ => Map::new(),
        };
        let mut from_flags: Map<String, Value> = Map::new();
        for p in &a.param {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                CliError::usage(format!("--param {p:?} must look like name=value"))
            })?;
            match from_flags.get_mut(k) {
                Some(Value::Array(list)) => list.push(json!(v)),
                _ => {
                    from_flags.insert(k.to_owned(), json!([v]));
                }
            }
        }
        // A flag's name replaces that name of the config file; one value goes as a string.
        for (k, v) in from_flags {
            let v = match v {
                Value::Array(mut list) if list.len() == 1 => list.remove(0),
                v => v,
            };
            params.insert(k, v);
        }
        m.insert("params".into(), Value::Object(params));
    }
    if !a.header.is_empty() {
        let mut headers = match m.remove("headers") {
            Some(Value::Object(h)) => h,
            _ => Map::new(),
        };
        for h in &a.header {
            let (k, v) = h.split_once(':').ok_or_else(|| {
                CliError::usage(format!("--header {h:?} must look like \"Name: value\""))
            })?;
            headers.insert(k.trim().to_owned(), json!(v.trim()));
        }
        m.insert("headers".into(), Value::Object(headers));
    }
    apply_auth(&mut m, &a.auth)?;
    set_list(&mut m, "token_origins", &a.token_origin);
    set_str(&mut m, "ca_bundle", &a.ca_bundle);
    set_str(&mut m, "client_cert", &a.client_cert);
    set_flag(&mut m, "allow_insecure_http", a.allow_insecure_http);
    for (key, v) in [
        ("concurrency", a.concurrency),
        ("buffer_chunks", a.buffer_chunks),
        ("chunk_bytes", a.chunk_bytes),
        ("max_line_bytes", a.max_line_bytes),
        ("connect_timeout_ms", a.connect_timeout_ms),
        ("request_timeout_ms", a.request_timeout_ms),
        ("read_timeout_ms", a.read_timeout_ms),
        ("min_bytes_per_s", a.min_bytes_per_s),
        ("stall_window_ms", a.stall_window_ms),
        ("poll_min_ms", a.poll_min_ms),
        ("poll_max_ms", a.poll_max_ms),
        ("poll_backoff_max_ms", a.poll_backoff_max_ms),
        ("retry_max_attempts", a.retry_max_attempts),
        ("retry_max_wait_ms", a.retry_max_wait_ms),
        ("retry_backoff_min_ms", a.retry_backoff_min_ms),
        ("retry_backoff_max_ms", a.retry_backoff_max_ms),
    ] {
        set_num(&mut m, key, v);
    }
    if let Some(p) = a.on_invalid_line {
        let name = match p {
            InvalidLineArg::Fail => "fail",
            InvalidLineArg::Skip => "skip",
        };
        m.insert("on_invalid_line".into(), json!(name));
    }
    set_flag(&mut m, "validate_json", a.validate_json);
    set_flag(&mut m, "delete_on_complete", a.delete_on_complete);
    if let Some(mode) = a.attachments {
        let name = match mode {
            AttachmentsArg::None => "none",
            AttachmentsArg::Inline => "inline",
            AttachmentsArg::Save => "save",
        };
        m.insert("attachments".into(), json!(name));
    }
    set_list(&mut m, "attachment_types", &a.attachment_types);
    set_list(
        &mut m,
        "attachment_content_types",
        &a.attachment_content_types,
    );
    set_num(&mut m, "attachment_max_bytes", a.attachment_max_bytes);
    if m.contains_key("attachment_dir") {
        // The output directory's layout is the CLI's: documents go to DIR/attachments/.
        return Err(CliError::usage(
            "attachment_dir cannot be set for the fhirbulk command: saved documents go to DIR/attachments/",
        ));
    }
    // Ctrl-C and crashes must leave the server job in place so the run can resume;
    // `fhirbulk cancel` deletes it.
    m.insert("delete_on_cancel".into(), json!(false));

    if !m.contains_key("base_url") {
        return Err(CliError::usage(
            "no FHIR base URL: give --base-url URL (or \"base_url\" in --config)",
        ));
    }
    let since = if m.get("since").and_then(Value::as_str) == Some("auto") {
        m.remove("since");
        Since::Auto
    } else {
        Since::Fixed
    };
    Ok((m, since))
}

/// A copy of the config without inline secrets, kept in the checkpoint for `fhirbulk cancel`.
/// `None` for `auth` when it held an inline secret (cancel then needs the credentials again).
pub fn without_inline_secrets(m: &Map<String, Value>) -> (Map<String, Value>, bool) {
    let mut c = m.clone();
    c.remove("resume");
    let mut complete = true;
    if let Some(Value::Object(auth)) = c.get("auth") {
        let inline = ["token", "private_key", "client_secret"]
            .iter()
            .any(|k| auth.get(*k).is_some_and(Value::is_string));
        if inline {
            c.remove("auth");
            complete = false;
        }
    }
    (c, complete)
}
