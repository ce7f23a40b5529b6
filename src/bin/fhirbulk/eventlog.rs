//! `log.ndjson`: one JSON event per line in the schema of the SMART bulk-data-client's log,
//! `{"exportId": ..., "timestamp": ..., "eventId": ..., "eventDetail": {...}}`, with the event ids
//! `kickoff` (it also carries `_client`, `_clientVersion` and `logVersion`), `status_progress`,
//! `status_complete`, `status_page_complete`, `manifest_complete`, `status_error`,
//! `download_request`, `download_complete`, `download_error` and `export_complete`, plus
//! fhirbulk's own `warning`, `retry`, `download_resumed`, `download_restarted` and `token`.
//! The lines are written from the engine's events (`export::Run::on_event`).

use crate::util::{self, CliError};
use serde_json::Value;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct EventLog {
    path: PathBuf,
    file: BufWriter<File>,
    export_id: String,
    /// Bytes in the file (what a checkpoint records).
    len: u64,
    error: Option<std::io::Error>,
}

impl EventLog {
    /// Open the log: a new one (`resume_len` None), or an existing one cut back to the length a
    /// checkpoint recorded, so events after the checkpoint are not there twice.
    pub fn open(
        path: &Path,
        export_id: &str,
        resume_len: Option<u64>,
        perms: util::Perms,
    ) -> Result<EventLog, CliError> {
        let err =
            |e: std::io::Error| CliError::io(format_args!("cannot open {}", path.display()), &e);
        let (file, len) = match resume_len {
            Some(len) => {
                let f = perms.open(path, true).map_err(err)?;
                let actual = f.metadata().map_err(err)?.len();
                let len = len.min(actual);
                f.set_len(len).map_err(err)?;
                (f, len)
            }
            None => (perms.open(path, false).map_err(err)?, 0),
        };
        Ok(EventLog {
            path: path.to_owned(),
            file: BufWriter::new(file),
            export_id: export_id.to_owned(),
            len,
            error: None,
        })
    }

    pub fn event(&mut self, event_id: &str, detail: Value) {
        self.event_with(event_id, detail, "")
    }

    /// An event with more top-level fields (`extra`: `,"name":value...` or empty).
    pub fn event_with(&mut self, event_id: &str, detail: Value, extra: &str) {
        let line = format!(
            "{{\"exportId\":{},\"timestamp\":{},\"eventId\":{},\"eventDetail\":{}{extra}}}\n",
            Value::String(self.export_id.clone()),
            Value::String(util::now()),
            Value::String(event_id.to_owned()),
            detail
        );
        match self.file.write_all(line.as_bytes()) {
            Ok(()) => self.len += line.len() as u64,
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(e);
                }
            }
        }
    }

    /// Flush (and fsync when `sync`) and give the length for a checkpoint.
    pub fn flush(&mut self, sync: bool) -> Result<u64, CliError> {
        let path = self.path.clone();
        let err =
            |e: &std::io::Error| CliError::io(format_args!("cannot write {}", path.display()), e);
        if let Some(e) = self.error.take() {
            return Err(err(&e));
        }
        self.file.flush().map_err(|e| err(&e))?;
        if sync {
            self.file.get_ref().sync_data().map_err(|e| err(&e))?;
        }
        Ok(self.len)
    }
}
