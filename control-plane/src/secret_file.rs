//! Files that hold a secret: created readable by their owner only (0600), written whole
//! before they appear under their name (a temporary file beside, then a link or rename).

use std::io::Write;
use std::path::{Path, PathBuf};

/// A new file beside `path`, 0600, holding `bytes`, synced.
fn write_temp(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let suffix = crate::random::random_bytes::<8>()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        .unwrap_or_else(|_| std::process::id().to_string());
    let temp = dir.join(format!(".{}.tmp-{suffix}", file_name.to_string_lossy()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written {
        Ok(()) => Ok(temp),
        Err(e) => {
            // Best effort: the temporary file is ours and useless now.
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Creates `path` with `bytes` unless it exists: `Ok(false)` when another process made it
/// first (its content is then whole, never half written).
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let temp = write_temp(path, bytes)?;
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `path` with `bytes`, replacing it whole if it exists.
pub fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = write_temp(path, bytes)?;
    std::fs::rename(&temp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_owner_only_and_created_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        assert!(create_private(&path, b"first\n").expect("create"));
        assert!(!create_private(&path, b"second\n").expect("exists"));
        assert_eq!(std::fs::read(&path).expect("read"), b"first\n");
        replace_private(&path, b"third\n").expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"third\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
