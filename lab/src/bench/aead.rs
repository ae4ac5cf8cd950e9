//! What WireGuard's ChaCha20-Poly1305 alone costs on this CPU, for the CPU
//! table's wireguard row: boringtun encrypting and decrypting full-size
//! segments in a loop, timed by this thread's CPU clock (not the wall clock,
//! which a busy neighbour would stretch).

use std::time::Duration;

use anyhow::{Context as _, bail};
use boringtun::noise::TunnResult;
use nix::time::{ClockId, clock_gettime};

/// TCP payload per segment at a wireguard pod MTU of 1440 (a 1500-byte
/// underlay less 60), as the datapath cuts a super-packet: the bench's iperf3
/// bytes are payload, so the cost is per payload byte.
const PAYLOAD: usize = 1400;
/// Packets per timed round.
const ROUND: usize = 64;

/// CPU seconds to encrypt and then decrypt one byte of TCP payload.
pub fn seconds_per_payload_byte(at_least: Duration) -> anyhow::Result<f64> {
    let (mut sender, mut receiver) = tartan_testbed::wireguard::session_pair()
        .context("a wireguard session for the AEAD cost")?;
    let packet = tartan_testbed::wireguard::ipv4_tcp_packet(PAYLOAD);
    let mut sealed = vec![0u8; packet.len() + 64];
    let mut opened = vec![0u8; packet.len() + 64];
    let start = thread_cpu()?;
    let mut packets = 0usize;
    while thread_cpu()? - start < at_least {
        for _ in 0..ROUND {
            let TunnResult::WriteToNetwork(message) = sender.encapsulate(&packet, &mut sealed)
            else {
                bail!("boringtun did not encrypt a data message");
            };
            let TunnResult::WriteToTunnelV4(..) = receiver.decapsulate(None, message, &mut opened)
            else {
                bail!("boringtun did not decrypt its own data message");
            };
        }
        packets += ROUND;
    }
    let spent = (thread_cpu()? - start).as_secs_f64();
    Ok(spent / (packets * PAYLOAD) as f64)
}

fn thread_cpu() -> anyhow::Result<Duration> {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).context("the thread's CPU clock")?;
    Ok(Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_costs_some_time_per_byte() {
        let cost = seconds_per_payload_byte(Duration::from_millis(20)).expect("measured");
        // Far below a microsecond per byte, far above nothing.
        assert!(cost > 1e-12 && cost < 1e-6, "{cost}");
    }
}
