//! The Internet checksum (RFC 1071), summed 32 bits at a time: the udp
//! backend checksums every segment it cuts out of a TCP super-packet.

/// One's-complement sum of `data` added to `initial`, not yet folded.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

/// Folds a running sum to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` (with its checksum field zeroed).
pub fn checksum(data: &[u8], initial: u64) -> u16 {
    !fold(sum(data, initial))
}

/// The TCP/UDP pseudo-header sum for either family.
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, length: usize) -> u64 {
    let acc = sum(src, 0) + sum(dst, 0);
    acc + u64::from(protocol) + length as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straight from RFC 1071, 16 bits at a time.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            acc += u32::from(word);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    proptest::proptest! {
        #[test]
        fn matches_the_rfc_reference(data in proptest::collection::vec(0u8.., 0..3000)) {
            proptest::prop_assert_eq!(checksum(&data, 0), reference(&data));
        }
    }

    #[test]
    fn a_known_ipv4_header() {
        // Example header from Wikipedia's IPv4 checksum article.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header, 0), 0xb861);
    }
}
