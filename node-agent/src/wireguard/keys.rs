//! This node's WireGuard key pair. The private key is made by the agent on
//! first start and kept in a file on the node (mode 0600, as `wg genkey`
//! output: base64 and a newline), so the public key peers know survives
//! restarts and upgrades. It is never sent to the API; only the public key
//! is, in the NodeSubnet status.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use boringtun::x25519::{PublicKey, StaticSecret};
use tartan_crds::validate::{format_wireguard_key, parse_wireguard_key};

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the WireGuard key {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing a new WireGuard key to {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "the WireGuard key {path} holds no key (want 32 bytes in base64, as `wg genkey` writes)"
    )]
    Malformed { path: PathBuf },
    #[error("the kernel's random source failed: {0}")]
    Random(io::Error),
}

/// The key pair; the private half is redacted from `Debug`.
#[derive(Clone)]
pub struct NodeKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NodeKey(public {}, private <redacted>)",
            self.public_base64()
        )
    }
}

impl NodeKey {
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// A fresh key from the kernel's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        let mut filled = 0;
        while filled < bytes.len() {
            let rest = &mut bytes[filled..];
            // SAFETY: writes at most rest.len() bytes into rest.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(KeyError::Random(e));
            }
            filled += n as usize;
        }
        Ok(Self::from_secret(bytes))
    }

    /// The key in `path`, or a new one written there first.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => parse_wireguard_key(text.trim())
                .map(Self::from_secret)
                .ok_or_else(|| KeyError::Malformed { path: path.into() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                let text = format!("{}\n", format_wireguard_key(&key.secret.to_bytes()));
                tartan_runtime::atomic_file::write_atomic_mode(path, text.as_bytes(), 0o600)
                    .map_err(|source| KeyError::Write {
                        path: path.into(),
                        source,
                    })?;
                tracing::info!(path = %path.display(), public_key = %key.public_base64(), "made this node's WireGuard key");
                Ok(key)
            }
            Err(source) => Err(KeyError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    pub fn public(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    pub fn public_base64(&self) -> String {
        format_wireguard_key(&self.public())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_made_once_kept_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("tartan-wg-key-{}", std::process::id()));
        let path = dir.join("private.key");
        let made = NodeKey::load_or_create(&path).expect("made");
        let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = NodeKey::load_or_create(&path).expect("read");
        assert_eq!(
            made.public(),
            again.public(),
            "the same key after a restart"
        );
        assert!(!format!("{made:?}").contains(&format_wireguard_key(&made.secret.to_bytes())));
        std::fs::write(&path, "not a key\n").expect("overwrite");
        let err = NodeKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("holds no key"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_public_key_is_the_one_wg_derives() {
        // From `wg genkey | tee k | wg pubkey` (wireguard-tools).
        let secret =
            parse_wireguard_key("IGG2oIvVr5EWE6ONGGOm3B3GmWJeaCW71i1NmEWI7HM=").expect("key");
        let key = NodeKey::from_secret(secret);
        assert_eq!(
            key.public_base64(),
            "wC9tySw4N4KB5Ig2p963bWrfIhZOFsfz1jGeY3pb1gQ="
        );
    }
}
