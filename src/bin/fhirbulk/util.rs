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

/// The permissions of what the CLI writes (`--file-mode`): files get `file`, directories it
/// creates get `dir` (the file mode plus the execute bits where read is granted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    pub file: u32,
    pub dir: u32,
}

impl Default for Perms {
    fn default() -> Perms {
        Perms::from_file_mode(0o600)
    }
}

impl Perms {
    pub fn from_file_mode(file: u32) -> Perms {
        Perms {
            file,
            dir: file | ((file & 0o444) >> 2),
        }
    }

    /// `--file-mode`: octal digits, at most 777, the owner can read and write.
    pub fn parse(s: &str) -> Result<Perms, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!(
                "{s:?} is not an octal mode such as 600 or 640 (digits 0-7)"
            ));
        }
        let mode = u32::from_str_radix(digits, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("{s:?} is more than 777 (only permission bits are allowed)"))?;
        if mode & 0o600 != 0o600 {
            return Err(format!(
                "{s:?} does not let the owner read and write (fhirbulk must read its own files back)"
            ));
        }
        Ok(Perms::from_file_mode(mode))
    }

    /// Give `f` exactly the file mode (creation modes are narrowed by the umask; this is not).
    pub fn fix_file(&self, f: &std::fs::File) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(self.file))?;
        }
        #[cfg(not(unix))]
        let _ = f;
        Ok(())
    }

    /// Open `path` for writing with the file mode: created with it (then set exactly, whatever
    /// the umask), and an existing file is set to it too. `append`: keep the content and
    /// append; otherwise truncate.
    pub fn open(&self, path: &Path, append: bool) -> std::io::Result<std::fs::File> {
        let mut o = std::fs::OpenOptions::new();
        o.create(true);
        if append {
            o.append(true);
        } else {
            o.write(true).truncate(true);
        }
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, self.file);
        let f = o.open(path)?;
        self.fix_file(&f)?;
        Ok(f)
    }

    /// `create_dir_all` giving every directory it creates the directory mode (set exactly,
    /// whatever the umask); existing directories are left as they are. True when `path` itself
    /// was created.
    pub fn create_dir_all(&self, path: &Path) -> std::io::Result<bool> {
        if path.as_os_str().is_empty() || path.is_dir() {
            return Ok(false);
        }
        if let Some(parent) = path.parent() {
            self.create_dir_all(parent)?;
        }
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, self.dir);
        match b.create(path) {
            Ok(()) => {}
            // Created meanwhile by someone else: theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.dir))?;
        }
        Ok(true)
    }

    /// The permission bits of an existing directory when they grant group or others more than
    /// the directory mode (for a warning).
    pub fn too_open(&self, dir: &Path) -> Option<u32> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o777;
            (mode & 0o077 & !self.dir != 0).then_some(mode)
        }
        #[cfg(not(unix))]
        {
            let _ = dir;
            None
        }
    }
}

/// Write a file atomically: a temporary file in the same directory (created with the file
/// mode), fsync, rename, fsync the directory. The temporary file is removed when a step fails.
pub fn write_atomic(path: &Path, perms: Perms, data: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, perms, &mut |w| w.write_all(data))
}

/// [`write_atomic`] of what `write` writes (through a buffer).
pub fn write_atomic_with(
    path: &Path,
    perms: Perms,
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
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(perms.file));
    let mut tmp = builder.tempfile_in(dir)?;
    perms.fix_file(tmp.as_file())?;
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
        let perms = Perms::default();
        write_atomic(&path, perms, b"one").unwrap();
        write_atomic(&path, perms, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temporary file left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            write_atomic(&path, Perms::from_file_mode(0o640), b"three").unwrap();
            assert_eq!(mode(&path), 0o640);
        }
        let missing = dir.path().join("no-such-dir").join("x");
        assert!(write_atomic(&missing, perms, b"x").is_err());
    }

    #[test]
    fn file_modes() {
        assert_eq!(
            Perms::default(),
            Perms {
                file: 0o600,
                dir: 0o700
            }
        );
        let p = |s: &str| Perms::parse(s).map(|p| (p.file, p.dir));
        assert_eq!(p("600"), Ok((0o600, 0o700)));
        assert_eq!(p("640"), Ok((0o640, 0o750)));
        assert_eq!(p("0644"), Ok((0o644, 0o755)));
        assert_eq!(p("0o660"), Ok((0o660, 0o770)));
        assert_eq!(p("620"), Ok((0o620, 0o720)));
        for bad in [
            "", "abc", "648", "-600", "1600", "4755", "400", "200", "0", "+600",
        ] {
            assert!(Perms::parse(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn names() {
        assert_eq!(safe_name("../etc/passwd"), "etcpasswd");
        assert_eq!(safe_name(""), "output");
        assert_eq!(safe_name("Observation"), "Observation");
    }
}
