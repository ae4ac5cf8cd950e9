//! Optional shared-key authentication of datagrams (`--udp-key-file`): every
//! datagram carries a 16-byte tag, BLAKE3 keyed with a key derived from the
//! cluster's secret, over the inner packet. A datagram whose tag does not
//! verify is dropped (`bad_tag`) before anything in it is looked at. No
//! encryption and no replay window: it stops forged and stray datagrams, not
//! an attacker who can record and resend.

use std::fmt;

/// Bytes appended to every datagram when a key is set.
pub const TAG_LEN: usize = 16;
const CONTEXT: &str = "tartan udp backend datagram tag v1";
const MIN_SECRET: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DatagramKey([u8; 32]);

impl fmt::Debug for DatagramKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatagramKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the udp key must hold at least {MIN_SECRET} bytes (after trimming whitespace); it holds {0}"
)]
pub struct KeyTooShort(pub usize);

impl DatagramKey {
    /// The key from a shared secret (e.g. a Secret's file, trailing newline ignored).
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyTooShort> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET {
            return Err(KeyTooShort(secret.len()));
        }
        Ok(Self(blake3::derive_key(CONTEXT, secret)))
    }

    pub fn tag(&self, packet: &[u8]) -> [u8; TAG_LEN] {
        let hash = blake3::keyed_hash(&self.0, packet);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
        tag
    }

    /// The packet of a datagram whose tag verifies (compared in constant time).
    pub fn verify<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let split = datagram.len().checked_sub(TAG_LEN)?;
        let (packet, tag) = datagram.split_at(split);
        let want = self.tag(packet);
        let diff = want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_only_with_the_same_key_and_bytes() {
        let key = DatagramKey::from_secret(b"correct horse battery staple\n").expect("key");
        let mut datagram = b"an inner packet".to_vec();
        datagram.extend_from_slice(&key.tag(b"an inner packet"));
        assert_eq!(key.verify(&datagram), Some(&b"an inner packet"[..]));
        let other = DatagramKey::from_secret(b"another secret of enough length").expect("key");
        assert_eq!(other.verify(&datagram), None, "another key");
        datagram[3] ^= 1;
        assert_eq!(key.verify(&datagram), None, "a flipped bit");
        assert_eq!(key.verify(&datagram[..10]), None, "shorter than a tag");
        assert_eq!(DatagramKey::from_secret(b"  short \n"), Err(KeyTooShort(5)));
        assert_eq!(format!("{key:?}"), "DatagramKey(<redacted>)");
    }
}
