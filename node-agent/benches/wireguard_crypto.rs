//! The crypto cost on the wireguard backend's hot path, next to the udp
//! backend's work on the same input: one 64 KiB TCP super-packet from the TUN
//! cut into 1448-byte segments (udp: cut only; wireguard: cut and encrypt
//! each), and the 45 data messages of such a train decrypted. Compare the
//! groups' throughput in one run: the ratio is the price of encryption.

use boringtun::noise::{Tunn, TunnResult};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tartan_agent::udp::segment::segment_into;
use tartan_agent::udp::vnet::{GSO_TCPV4, NEEDS_CSUM, VnetHeader};
use tartan_testbed::wireguard::{ipv4_tcp_packet, session_pair};

const MSS: usize = 1448;
const PAYLOAD: usize = 45 * MSS;

/// An IPv4 TCP super-packet and the virtio header the TUN gives with it.
fn super_packet() -> (VnetHeader, Vec<u8>) {
    let p = ipv4_tcp_packet(PAYLOAD);
    let header = VnetHeader {
        flags: NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 40,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    (header, p)
}

/// Cuts the super-packet and encrypts each segment into `out`.
fn encrypt_train(
    tunn: &mut Tunn,
    header: &VnetHeader,
    packet: &[u8],
    plain: &mut Vec<u8>,
    out: &mut [Vec<u8>],
) {
    plain.clear();
    let cut = segment_into(header, packet, plain, None).expect("segments");
    for (segment, message) in plain.chunks(cut.size).zip(out.iter_mut()) {
        message.resize(segment.len() + 32, 0);
        let TunnResult::WriteToNetwork(_) = tunn.encapsulate(segment, message) else {
            panic!("data message");
        };
    }
}

fn hot_path(c: &mut Criterion) {
    let (header, packet) = super_packet();
    let mut group = c.benchmark_group("one 64 KiB super-packet");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    let mut plain = Vec::with_capacity(2 * 65536);
    group.bench_function("udp: cut into segments", |b| {
        b.iter(|| {
            plain.clear();
            segment_into(&header, &packet, &mut plain, None).expect("segments")
        })
    });
    let (mut sender, mut receiver) = session_pair().expect("a session");
    let mut messages = (0..45)
        .map(|_| Vec::with_capacity(MSS + 100))
        .collect::<Vec<_>>();
    group.bench_function("wireguard: cut and encrypt", |b| {
        b.iter(|| encrypt_train(&mut sender, &header, &packet, &mut plain, &mut messages))
    });
    let mut scratch = vec![0u8; 65536];
    group.bench_function("wireguard: decrypt the train", |b| {
        b.iter_batched_ref(
            || {
                let mut train = (0..45)
                    .map(|_| Vec::with_capacity(MSS + 100))
                    .collect::<Vec<_>>();
                encrypt_train(&mut sender, &header, &packet, &mut Vec::new(), &mut train);
                train
            },
            |train| {
                for message in train.iter() {
                    let TunnResult::WriteToTunnelV4(..) =
                        receiver.decapsulate(None, message, &mut scratch)
                    else {
                        panic!("decrypts");
                    };
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
