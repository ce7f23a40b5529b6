//! Exit codes, errors, timestamps and atomic file writes.

use fhirbulk::{Error, ErrorCode};
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

pub const EXIT_OK: u8 = 0;
pub const EXIT_OTHER: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_AUTH: u8 = 3;
pub const EXIT_HTTP: u8 = 4;
pub const EXIT_NETWORK: u8 = 5;
pub const EXIT_PROTOCOL: u8 = 6;
pub const EXIT_INTERRUPTED: u8 = 7;

/// The exit code for an engine error class.
pub fn exit_code(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::Config | ErrorCode::InvalidArgument => EXIT_USAGE,
        ErrorCode::Auth | ErrorCode::Unauthorized | ErrorCode::Forbidden => EXIT_AUTH,
        ErrorCode::BadRequest
        | ErrorCode::NotFound
        | ErrorCode::NotAcceptable
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::Unprocessable
        | ErrorCode::Throttled
        | ErrorCode::Server
        | ErrorCode::Http => EXIT_HTTP,
        ErrorCode::Network | ErrorCode::Timeout => EXIT_NETWORK,
        ErrorCode::Protocol => EXIT_PROTOCOL,
        ErrorCode::Internal | ErrorCode::InvalidHandle | ErrorCode::Busy => EXIT_OTHER,
    }
}

/// A failure of the command: an engine error, or a local one with its own exit code.
#[derive(Debug)]
pub enum CliError {
    Engine(Error),
    Local { exit: u8, message: String },
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::Local {
            exit: EXIT_USAGE,
            message: message.into(),
        }
    }
    pub fn io(what: impl fmt::Display, e: &std::io::Error) -> CliError {
        CliError::Local {
            exit: EXIT_OTHER,
            message: format!("{what}: {e}"),
        }
    }
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Engine(e) => exit_code(e.code),
            CliError::Local { exit, .. } => *exit,
        }
    }
    /// The error as the JSON object of the `--json` summary.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            CliError::Engine(e) => {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("name".into(), e.code.name().into());
                    o.insert("exit_code".into(), exit_code(e.code).into());
                }
                v
            }
            CliError::Local { exit, message } => serde_json::json!({
                "name": if *exit == EXIT_USAGE { "usage" } else { "local" },
                "message": message,
                "exit_code": exit,
            }),
        }
    }
    /// Print to stderr: the message, the HTTP status and the server's issues.
    pub fn report(&self) {
        let mut err = std::io::stderr().lock();
        match self {
            CliError::Engine(e) => {
                let _ = write!(err, "fhirbulk: error: {e}");
                if let Some(s) = e.http_status {
                    let _ = write!(err, " [HTTP {s}]");
                }
                let _ = writeln!(err, " ({})", e.code.name());
                for i in &e.issues {
                    let text = i
                        .diagnostics
                        .as_deref()
                        .or(i.details.as_deref())
                        .unwrap_or("");
                    let _ = writeln!(err, "  server issue: {} {}: {text}", i.severity, i.code);
                }
            }
            CliError::Local { message, .. } => {
                let _ = writeln!(err, "fhirbulk: error: {message}");
            }
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> CliError {
        CliError::Engine(e)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Engine(e) => write!(f, "{e}"),
            CliError::Local { message, .. } => f.write_str(message),
        }
    }
}

/// `YYYY-MM-DDThh:mm:ss.mmmZ`, what the event log and the checkpoint write.
const INSTANT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `t` in UTC to the millisecond; before 1970 is 1970, past the last representable instant
/// is that instant.
pub fn utc(t: SystemTime) -> OffsetDateTime {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    i128::try_from(ms)
        .ok()
        .and_then(|ms| ms.checked_mul(1_000_000))
        .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .unwrap_or_else(|| PrimitiveDateTime::MAX.assume_utc())
}

/// `2024-05-01T12:00:00.123Z`
pub fn rfc3339(t: SystemTime) -> String {
    utc(t).format(INSTANT).unwrap_or_default()
}

/// `hh:mm:ss` of `t` in UTC.
pub fn clock_utc(t: SystemTime) -> String {
    utc(t)
        .format(format_description!("[hour]:[minute]:[second]"))
        .unwrap_or_default()
}

pub fn now() -> String {
    rfc3339(SystemTime::now())
}

/// Write a file atomically: a temporary file in the same directory, fsync, rename, fsync the
/// directory. The temporary file is removed when a step fails.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, &mut |w| w.write_all(data))
}

/// [`write_atomic`] of what `write` writes (through a buffer).
pub fn write_atomic_with(
    path: &Path,
    write: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!(
        ".{}.",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // tempfile creates 0600 files; keep the mode `File::create` gives (0666 less the umask).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir)?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        write(&mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// fsync a directory so a rename in it survives a power loss (best effort).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A file or directory name for a resource type from the server: letters and digits only, so a
/// hostile manifest cannot write outside the output directory.
pub fn safe_name(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "output".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
        assert_eq!(clock_utc(t), "23:59:59");
    }

    #[test]
    fn atomic_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temporary file left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let plain = dir.path().join("plain");
            std::fs::File::create(&plain).unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode(&path), mode(&plain), "the mode File::create gives");
        }
        let missing = dir.path().join("no-such-dir").join("x");
        assert!(write_atomic(&missing, b"x").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(safe_name("../etc/passwd"), "etcpasswd");
        assert_eq!(safe_name(""), "output");
        assert_eq!(safe_name("Observation"), "Observation");
    }
}
