//! Spreading one peer's flows over the receive queues.
//!
//! Every datagram between two nodes has the same outer addresses and ports,
//! so `SO_REUSEPORT`'s hash puts all of them on one socket: every flow from
//! that peer ran on one receive thread, and, since the TUN sends a flow out
//! of the queue its packets last came in on, on one send thread as well. A
//! classic BPF program on the socket group (`SO_ATTACH_REUSEPORT_CBPF`)
//! picks the socket from the *inner* packet's addresses and ports instead,
//! as kernel VXLAN picks its source port from the inner flow for RSS. The
//! segments of one flow keep one queue, so none is reordered.
//!
//! Only the udp backend carries its inner packet in clear; wireguard's is
//! encrypted, so its sockets keep the kernel's hash (one queue per peer).

use std::io;
use std::os::fd::AsRawFd;

use super::packet::{TCP, UDP};
use super::socket::UdpSocket;

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h; the libc crate has it
/// for Android only).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
/// Knuth's multiplicative constant. A product's bit k depends only on the
/// bits below it, so the hash is folded first: connect(2) picks even ports,
/// and without the fold every client port of a node would share a queue.
const MIX: u32 = 0x9e37_79b1;

/// The queue `datagram` (the UDP payload: an inner IP packet) is steered
/// to, out of `queues`: exactly what [`flow_program`] computes in the
/// kernel, so tests can predict it. A datagram too short for what it says
/// it is goes to queue 0, as the kernel does when a load runs off its end.
pub fn queue_for(datagram: &[u8], queues: u32) -> u32 {
    inner_flow_hash(datagram).map_or(0, |hash| {
        ((hash ^ (hash >> 16)).wrapping_mul(MIX) >> 16) % queues.max(1)
    })
}

fn word(packet: &[u8], at: usize) -> Option<u32> {
    let bytes = packet.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Source and destination addresses, XORed, and for TCP and UDP (but not a
/// later IPv4 fragment, which has no ports) the port word too.
fn inner_flow_hash(packet: &[u8]) -> Option<u32> {
    let first = *packet.first()?;
    let (mut hash, protocol, ports_at, fragment) = match first & 0xf0 {
        0x40 => {
            let hash = word(packet, 12)? ^ word(packet, 16)?;
            let protocol = *packet.get(9)?;
            let offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]);
            (
                hash,
                protocol,
                usize::from(first & 0x0f) * 4,
                offset & 0x1fff != 0,
            )
        }
        0x60 => {
            let mut hash = 0;
            for at in (8..40).step_by(4) {
                hash ^= word(packet, at)?;
            }
            (hash, *packet.get(6)?, 40, false)
        }
        _ => return None,
    };
    if (protocol == TCP || protocol == UDP) && !fragment {
        hash ^= word(packet, ports_at)?;
    }
    Some(hash)
}

/// Classic BPF, assembled with named jump targets resolved at the end.
struct Assembler {
    code: Vec<(u16, u32, &'static str, &'static str)>,
    labels: Vec<(&'static str, usize)>,
}

impl Assembler {
    fn op(&mut self, code: u32, k: u32) -> &mut Self {
        self.code.push((code as u16, k, "", ""));
        self
    }

    /// A conditional jump: to `yes` or `no`, where "" is the next instruction.
    fn jump(&mut self, code: u32, k: u32, yes: &'static str, no: &'static str) -> &mut Self {
        self.code
            .push(((libc::BPF_JMP | code | libc::BPF_K) as u16, k, yes, no));
        self
    }

    fn label(&mut self, name: &'static str) -> &mut Self {
        self.labels.push((name, self.code.len()));
        self
    }

    fn finish(&self) -> Vec<libc::sock_filter> {
        let target = |from: usize, name: &str| -> u8 {
            if name.is_empty() {
                return 0;
            }
            let (_, at) = self
                .labels
                .iter()
                .find(|(label, _)| *label == name)
                .unwrap_or_else(|| panic!("the steering program jumps to {name}, which it lacks"));
            u8::try_from(at - from - 1).unwrap_or_else(|_| panic!("a jump to {name} is too far"))
        };
        self.code
            .iter()
            .enumerate()
            .map(|(i, &(code, k, yes, no))| {
                let (jt, jf) = (target(i, yes), target(i, no));
                if code == (libc::BPF_JMP | libc::BPF_JA) as u16 {
                    // An unconditional jump's offset is its k.
                    return libc::sock_filter {
                        code,
                        jt: 0,
                        jf: 0,
                        k: u32::from(jt),
                    };
                }
                libc::sock_filter { code, jt, jf, k }
            })
            .collect()
    }
}

/// The program [`queue_for`] mirrors: scratch word 0 holds the hash.
fn flow_program(queues: u32) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IND, BPF_JA, BPF_JEQ, BPF_JSET, BPF_K,
        BPF_LD, BPF_LDX, BPF_MEM, BPF_MISC, BPF_MOD, BPF_MSH, BPF_MUL, BPF_RET, BPF_RSH, BPF_ST,
        BPF_TAX, BPF_W, BPF_X, BPF_XOR,
    };
    let (load_word, tax, xor_x) = (
        BPF_LD | BPF_W | BPF_ABS,
        BPF_MISC | BPF_TAX,
        BPF_ALU | BPF_XOR | BPF_X,
    );
    let mut asm = Assembler {
        code: Vec::new(),
        labels: Vec::new(),
    };
    asm.op(BPF_LD | BPF_B | BPF_ABS, 0)
        .op(BPF_ALU | BPF_AND | BPF_K, 0xf0)
        .jump(BPF_JEQ, 0x40, "", "v6")
        // IPv4: addresses, then the ports if TCP or UDP and not a later fragment.
        .op(load_word, 12)
        .op(tax, 0)
        .op(load_word, 16)
        .op(xor_x, 0)
        .op(BPF_ST, 0)
        .op(BPF_LD | BPF_B | BPF_ABS, 9)
        .jump(BPF_JEQ, u32::from(TCP), "ports4", "")
        .jump(BPF_JEQ, u32::from(UDP), "", "fold")
        .label("ports4")
        .op(BPF_LD | BPF_H | BPF_ABS, 6)
        .jump(BPF_JSET, 0x1fff, "fold", "")
        .op(BPF_LDX | BPF_B | BPF_MSH, 0)
        .op(BPF_LD | BPF_W | BPF_IND, 0)
        .jump(BPF_JA, 0, "mix_ports", "")
        .label("v6")
        .jump(BPF_JEQ, 0x60, "", "none")
        .op(load_word, 8)
        .op(tax, 0);
    for at in (12..40).step_by(4) {
        asm.op(load_word, at).op(xor_x, 0).op(tax, 0);
    }
    asm.op(BPF_MISC | libc::BPF_TXA, 0)
        .op(BPF_ST, 0)
        .op(BPF_LD | BPF_B | BPF_ABS, 6)
        .jump(BPF_JEQ, u32::from(TCP), "ports6", "")
        .jump(BPF_JEQ, u32::from(UDP), "", "fold")
        .label("ports6")
        .op(load_word, 40)
        .label("mix_ports")
        .op(tax, 0)
        .op(BPF_LD | BPF_MEM, 0)
        .op(xor_x, 0)
        .op(BPF_ST, 0)
        .label("fold")
        .op(BPF_LD | BPF_MEM, 0)
        .op(tax, 0)
        .op(BPF_ALU | BPF_RSH | BPF_K, 16)
        .op(xor_x, 0)
        .op(BPF_ALU | BPF_MUL | BPF_K, MIX)
        .op(BPF_ALU | BPF_RSH | BPF_K, 16)
        .op(BPF_ALU | BPF_MOD | BPF_K, queues)
        .op(BPF_RET | BPF_A, 0)
        .label("none")
        .op(BPF_RET | BPF_K, 0);
    asm.finish()
}

/// Steers the datagrams arriving on `sockets`' group (all bound to one port
/// with `SO_REUSEPORT`, in this order) by their inner flow. One socket
/// needs no steering; a kernel that refuses the program leaves the hash.
pub fn steer_by_inner_flow(sockets: &[&UdpSocket]) -> io::Result<()> {
    let Some(first) = sockets.first().filter(|_| sockets.len() > 1) else {
        return Ok(());
    };
    let queues =
        u32::try_from(sockets.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut program = flow_program(queues);
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: passes a sock_fprog whose filter points at `program`, alive for
    // the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            first.fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
