//! Kernel settings the data plane needs: forwarding on, set and read back.
//! Written under a configurable `/proc/sys` root (tests point it elsewhere);
//! `/proc/sys/net` belongs to the namespace of the thread that opens it.

use std::io;
use std::path::{Path, PathBuf};

use crate::netns::NetNs;

#[derive(Debug, Clone)]
pub struct Sysctls {
    pub root: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc/sys"),
        }
    }
}

/// `(key, value)` pairs the data plane requires.
pub fn required(ipv6: bool) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![("net/ipv4/ip_forward", "1")];
    if ipv6 {
        out.push(("net/ipv6/conf/all/forwarding", "1"));
    }
    out
}

impl Sysctls {
    /// Sets each key that differs and verifies it reads back; returns how many changed.
    pub fn ensure(&self, netns: &NetNs, settings: &[(&str, &str)]) -> io::Result<usize> {
        let root = self.root.clone();
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        netns.run(move || ensure_all(&root, &settings))?
    }
}

fn ensure_all(root: &Path, settings: &[(String, String)]) -> io::Result<usize> {
    let mut changed = 0;
    for (key, value) in settings {
        let path = root.join(key);
        let current = std::fs::read_to_string(&path).map_err(|e| with_path(e, &path))?;
        if current.trim() == value {
            continue;
        }
        std::fs::write(&path, value).map_err(|e| with_path(e, &path))?;
        let read_back = std::fs::read_to_string(&path).map_err(|e| with_path(e, &path))?;
        if read_back.trim() != value {
            return Err(io::Error::other(format!(
                "{} is {} after writing {value}",
                path.display(),
                read_back.trim()
            )));
        }
        changed += 1;
    }
    Ok(changed)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_only_what_differs_and_verifies() {
        let dir = std::env::temp_dir().join(format!("tartan-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net/ipv4")).expect("dir");
        std::fs::write(dir.join("net/ipv4/ip_forward"), "0\n").expect("file");
        let sysctls = Sysctls { root: dir.clone() };
        assert_eq!(
            sysctls
                .ensure(&NetNs::Current, &required(false))
                .expect("set"),
            1
        );
        assert_eq!(
            sysctls
                .ensure(&NetNs::Current, &required(false))
                .expect("again"),
            0
        );
        let err = sysctls
            .ensure(&NetNs::Current, &required(true))
            .unwrap_err();
        assert!(
            err.to_string().contains("net/ipv6/conf/all/forwarding"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
