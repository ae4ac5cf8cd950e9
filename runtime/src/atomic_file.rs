//! Files replaced whole: a reader (kubelet's CNI runtime, BIRD, a process
//! starting meanwhile) sees the old content or the new, never half a file.
//! The new content goes to a temp file in the same directory (so the rename
//! stays on one filesystem), is fsynced, then renamed over the old one.

use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `content` unless it already holds exactly that; true
/// when written. Creates the directory when missing.
pub fn write_atomic(path: &Path, content: &[u8]) -> io::Result<bool> {
    write_atomic_mode(path, content, 0o644)
}

/// [`write_atomic`] with the file's permission bits: 0o600 for a file that
/// holds a secret (it never exists, even as the temporary, with more).
pub fn write_atomic_mode(path: &Path, content: &[u8], mode: u32) -> io::Result<bool> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let permissions = std::fs::Permissions::from_mode(mode);
    if std::fs::read(path).is_ok_and(|old| old == content) {
        // Unchanged, but perhaps written by a version that was less strict.
        std::fs::set_permissions(path, permissions)?;
        return Ok(false);
    }
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(permissions)?;
        file.write_all(content)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_on_change_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("tartan-atomic-{}", std::process::id()));
        let path = dir.join("sub").join("file.conf");
        assert!(
            write_atomic(&path, b"one").expect("write"),
            "creates the directory"
        );
        assert!(!write_atomic(&path, b"one").expect("same"));
        assert!(write_atomic(&path, b"two").expect("changed"));
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.conf")]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_file_for_secrets_is_never_readable_by_others() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("tartan-atomic-mode-{}", std::process::id()));
        let path = dir.join("bird.conf");
        write_atomic(&path, b"old").expect("write");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o644);
        write_atomic_mode(&path, b"old", 0o600).expect("same content");
        assert_eq!(mode(&path), 0o600, "tightened even when unchanged");
        write_atomic_mode(&path, b"new", 0o600).expect("write");
        assert_eq!(mode(&path), 0o600);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_path_without_a_directory_is_an_error() {
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
