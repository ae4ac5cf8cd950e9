//! Files replaced whole: a reader (kubelet's CNI runtime, BIRD, a process
//! starting meanwhile) sees the old content or the new, never half a file.
//! The new content goes to a temp file in the same directory (so the rename
//! stays on one filesystem), is fsynced, then renamed over the old one.

use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `content` unless it already holds exactly that; true
/// when written. Creates the directory when missing.
pub fn write_atomic(path: &Path, content: &[u8]) -> io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut file = std::fs::File::create(&tmp)?;
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
    fn a_path_without_a_directory_is_an_error() {
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
