//! IPAM speed on the largest pools the schema allows: a /8 cut into /24s and an
//! IPv6 /48 cut into /64s (65,536 node subnets each).

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tartan_crds::OverlayNetworkSpec;
use tartan_operator::ipam::{Ipam, Preference};

fn network(v6: bool) -> tartan_crds::ValidNetwork {
    let mut spec = OverlayNetworkSpec::with_cidr("10.0.0.0/8");
    if v6 {
        spec.ipv6_cidr = Some("fd00:10::/48".into());
    }
    spec.validate().expect("valid")
}

fn names() -> Vec<String> {
    (0..65_536).map(|i| format!("node-{i}")).collect()
}

fn fill_slash_8(c: &mut Criterion) {
    let names = names();
    let mut group = c.benchmark_group("ipam");
    group.sample_size(10);
    for (label, v6) in [
        ("allocate 65536 /24s from a /8", false),
        ("allocate 65536 dual-stack pairs (/8 + /48)", true),
    ] {
        group.bench_function(label, |b| {
            b.iter_batched(
                || Ipam::new(&network(v6)),
                |mut ipam| {
                    for name in &names {
                        ipam.allocate(name, Preference::default()).expect("room");
                    }
                    ipam
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.bench_function("release + reallocate one in a full /8", |b| {
        let mut ipam = Ipam::new(&network(false));
        for name in &names {
            ipam.allocate(name, Preference::default()).expect("room");
        }
        let mut i = 0usize;
        b.iter(|| {
            let name = &names[i % names.len()];
            i += 7919;
            ipam.release(name);
            ipam.allocate(name, Preference::default()).expect("room")
        })
    });
    group.finish();
}

criterion_group!(benches, fill_slash_8);
criterion_main!(benches);
