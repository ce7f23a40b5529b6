//! Checkpoints: everything needed to continue an export in another process — the status URL,
//! the manifest, and per file how many lines the caller has already received.

use crate::error::{Error, Result};
use crate::manifest::Kind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The checkpoint format version.
pub const CHECKPOINT_VERSION: u32 = 1;

/// A checkpoint, as JSON: `{"fhirbulk_checkpoint": 1, "base_url": ..., "status_url": ...,
/// "transaction_time": ..., "manifest": {...}, "manifest_complete": true, "next_page": null,
/// "files": [{"url": ..., "kind": "output", "type": "Patient", "lines_delivered": 120,
/// "complete": false}, ...]}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub fhirbulk_checkpoint: u32,
    pub base_url: String,
    #[serde(default)]
    pub status_url: Option<String>,
    #[serde(default)]
    pub transaction_time: Option<String>,
    /// The manifest as merged so far.
    #[serde(default)]
    pub manifest: Option<Value>,
    /// The final manifest has arrived (pages may remain: `next_page`).
    #[serde(default)]
    pub manifest_complete: bool,
    #[serde(default)]
    pub next_page: Option<String>,
    #[serde(default)]
    pub files: Vec<CheckpointFile>,
}

/// One file's progress: the physical line number of the last line the caller received.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointFile {
    pub url: String,
    pub kind: String,
    #[serde(rename = "type", default)]
    pub resource_type: Option<String>,
    #[serde(default)]
    pub count: Option<u64>,
    pub lines_delivered: u64,
    #[serde(default)]
    pub complete: bool,
}

impl CheckpointFile {
    pub fn kind(&self) -> Kind {
        match self.kind.as_str() {
            "error" => Kind::Error,
            "deleted" => Kind::Deleted,
            _ => Kind::Output,
        }
    }
}

impl Checkpoint {
    /// Parse and check a checkpoint given in the config's `resume`.
    pub fn from_value(v: &Value) -> Result<Checkpoint> {
        let v = match v {
            // Accept the checkpoint as a JSON string too (what export_checkpoint returns).
            Value::String(s) => serde_json::from_str(s).map_err(|e| {
                Error::config(format!("invalid config: resume is not a checkpoint: {e}"))
            })?,
            other => other.clone(),
        };
        let cp: Checkpoint = serde_json::from_value(v).map_err(|e| {
            Error::config(format!("invalid config: resume is not a checkpoint: {e}"))
        })?;
        if cp.fhirbulk_checkpoint != CHECKPOINT_VERSION {
            return Err(Error::config(format!(
                "invalid config: resume has checkpoint version {}, this library reads {CHECKPOINT_VERSION}",
                cp.fhirbulk_checkpoint
            )));
        }
        for f in &cp.files {
            if !matches!(f.kind.as_str(), "output" | "error" | "deleted") {
                return Err(Error::config(format!(
                    "invalid config: resume has a file of kind {:?}",
                    f.kind
                )));
            }
            if !f.url.starts_with("http://") && !f.url.starts_with("https://") {
                return Err(Error::config(
                    "invalid config: resume has a file URL that is not http(s)",
                ));
            }
        }
        Ok(cp)
    }
}
