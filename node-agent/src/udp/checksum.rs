//! The Internet checksum (RFC 1071): the udp backend checksums every
//! segment it cuts out of a TCP super-packet, so this is on the hot path.
//!
//! The one's-complement sum does not depend on byte order (RFC 1071
//! §2(B)): the words are summed as the machine reads them, eight bytes at a
//! time (which the compiler turns into vector adds), and the folded result is
//! brought into network order once at the end.

/// One's-complement sum of `data` (as big-endian 16-bit words) added to
/// `initial`, not yet folded.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let native = fold(native_sum(data));
    let network = if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    };
    initial + u64::from(network)
}

/// The sum of `data`'s 16-bit words in the machine's byte order. Each step
/// adds two 32-bit halves to a 64-bit accumulator: no packet is long enough
/// to carry out of it.
fn native_sum(data: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_ne_bytes(bytes);
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    let rest = words.remainder();
    // Zero padding after the last byte, as RFC 1071 pads an odd length.
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    let w = u64::from_ne_bytes(tail);
    acc + (w & 0xffff_ffff) + (w >> 32)
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

        #[test]
        fn sums_of_parts_add_up(data in proptest::collection::vec(0u8.., 0..3000), cut in 0usize..1500) {
            // Even cuts only: a word must not straddle the parts.
            let cut = (cut.min(data.len())) & !1;
            let whole = fold(sum(&data, 7));
            let parts = fold(sum(&data[cut..], sum(&data[..cut], 7)));
            proptest::prop_assert_eq!(whole, parts);
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
