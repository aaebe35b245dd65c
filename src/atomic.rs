//! Crash-safe file writing: content goes to a temporary name in the same directory, then is renamed over the
//! target, so a reader never sees half a file and a crash leaves the previous version intact.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The temporary name used while `path` is being written.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |temporary| {
        let mut file = std::fs::File::create(temporary)?;
        file.write_all(bytes)?;
        file.sync_all()
    })
}

/// Lets `write` produce the file at a temporary path, then renames it to `path`. The file gets the permissions of
/// any file the process creates (the umask's), whatever `write` made it with (safetensors' writer makes it private).
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let temporary = temporary_path(path);
    let written = std::fs::File::create(&temporary).and_then(|file| file.metadata()).and_then(|created| {
        write(&temporary)?;
        std::fs::set_permissions(&temporary, created.permissions())
    });
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(Error::io(path, error));
    }
    std::fs::rename(&temporary, path).map_err(|e| Error::io(path, e))
}

/// Serialises `value` as pretty JSON to `path`, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads and parses a JSON file, naming the file and the position of any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::bad_input(path, format!("line {} column {}", e.line(), e.column()), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.bin");
        write_atomic(&path, b"good").unwrap();
        let result = write_atomic_with(&path, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err(std::io::Error::other("crash"))
        });
        assert!(result.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Files written through a writer that would create them private (as safetensors' does) get the same
    /// permissions as any file the process creates: the umask's.
    #[cfg(unix)]
    #[test]
    fn permissions_follow_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (plain, written) = (dir.path().join("plain"), dir.path().join("written"));
        std::fs::write(&plain, b"x").unwrap();
        write_atomic_with(&written, |temporary| {
            // as safetensors does: a private file of its own, renamed over the path
            let private = temporary.with_extension("private");
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options.open(&private)?.write_all(b"x")?;
            std::fs::rename(&private, temporary)
        })
        .unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&written), mode(&plain));
    }
}
