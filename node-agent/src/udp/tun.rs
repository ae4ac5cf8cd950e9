//! The TUN device `tartan0`: one file descriptor per queue (multiqueue, one
//! per core), persistent so the device and its routes outlive an agent
//! restart, with the virtio header and TSO/USO offloads when the kernel has
//! them, so one read carries up to 64 KiB of a TCP or UDP flow.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::vnet;

const IFF_TUN: i16 = 0x0001;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_USO4: u32 = 0x20;
const TUN_F_USO6: u32 = 0x40;

const TUNSETIFF: libc::c_ulong =
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()) as libc::c_ulong;
const TUNSETPERSIST: libc::c_ulong =
    nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>()) as libc::c_ulong;
const TUNSETOFFLOAD: libc::c_ulong =
    nix::request_code_write!(b'T', 208, std::mem::size_of::<libc::c_uint>()) as libc::c_ulong;
const TUNGETIFF: libc::c_ulong =
    nix::request_code_read!(b'T', 210, std::mem::size_of::<libc::c_uint>()) as libc::c_ulong;
const TUNGETDEVNETNS: libc::c_ulong = nix::request_code_none!(b'T', 227) as libc::c_ulong;
const TUNSETVNETHDRSZ: libc::c_ulong =
    nix::request_code_write!(b'T', 216, std::mem::size_of::<libc::c_int>()) as libc::c_ulong;

/// Packets a queue holds while nothing reads it (the kernel's default for a
/// TUN is 500): what pods send during an agent restart waits here, about
/// 40 s of a 100/s flow. Bulk senders are held back by their own socket
/// buffers long before, so this bounds small packets, not memory.
pub const QUEUE_PACKETS: libc::c_int = 4096;

#[repr(C)]
struct IfReqQueueLen {
    name: [u8; libc::IFNAMSIZ],
    qlen: libc::c_int,
    _pad: [u8; 20],
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// What the kernel granted, for the log and `tartan_agent_udp_offload`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunFeatures {
    pub vnet_hdr: bool,
    pub tso: bool,
    pub uso: bool,
    pub queues: usize,
}

pub struct Tun {
    pub queues: Vec<OwnedFd>,
    pub features: TunFeatures,
}

fn attach(name: &str, flags: i16) -> io::Result<OwnedFd> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("device name {name:?} is longer than 15 bytes"),
        ));
    }
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which IfReq lays
    // out (16-byte name, then the flags in a 24-byte union).
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

fn ioctl_value(fd: &OwnedFd, request: libc::c_ulong, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: these requests take their argument by value and touch no memory of ours.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, value) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The device a queue descriptor is attached to, and whether it carries the
/// virtio header: an error (`EBADFD`) once the device is gone.
pub fn attached(fd: &OwnedFd) -> io::Result<(String, bool)> {
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes one `struct ifreq`, which IfReq lays out.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut request as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let end = request
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(libc::IFNAMSIZ);
    let name = String::from_utf8_lossy(&request.name[..end]).into_owned();
    Ok((name, request.flags & IFF_VNET_HDR != 0))
}

/// Sets the device's `txqueuelen`, each queue's length (in the calling
/// thread's network namespace).
fn set_queue_len(name: &str, packets: libc::c_int) -> io::Result<()> {
    let mut request = IfReqQueueLen {
        name: [0; libc::IFNAMSIZ],
        qlen: packets,
        _pad: [0; 20],
    };
    let len = name.len().min(libc::IFNAMSIZ - 1);
    request.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: SIOCSIFTXQLEN reads one `struct ifreq` (name, then the length
    // as an int), which IfReqQueueLen lays out.
    let rc = unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFTXQLEN,
            &mut request as *mut IfReqQueueLen,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The inode of the network namespace a queue's device lives in.
pub fn device_netns(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new descriptor.
    let raw = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETDEVNETNS) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a new descriptor nobody else owns.
    let netns = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    use std::os::unix::fs::MetadataExt;
    Ok(File::from(netns).metadata()?.ino())
}

/// Creates (or re-attaches to) the persistent TUN `name` with `queues` queues,
/// in the calling thread's network namespace.
pub fn open(name: &str, queues: usize, offloads: bool) -> io::Result<Tun> {
    let base = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE;
    let (first, vnet_hdr) = match offloads.then(|| attach(name, base | IFF_VNET_HDR)) {
        Some(Ok(fd)) => (fd, true),
        Some(Err(e)) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
        _ => (attach(name, base)?, false),
    };
    let mut features = TunFeatures {
        vnet_hdr,
        ..Default::default()
    };
    if vnet_hdr {
        let size = vnet::LEN as libc::c_ulong;
        let set_size = || -> io::Result<()> {
            let size_value: libc::c_int = size as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
            let rc = unsafe {
                libc::ioctl(
                    first.as_raw_fd(),
                    TUNSETVNETHDRSZ,
                    &size_value as *const libc::c_int,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        set_size()?;
        let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        let attempts = [
            (tso | TUN_F_USO4 | TUN_F_USO6, true, true),
            (tso, true, false),
        ];
        for (flags, has_tso, has_uso) in attempts {
            if ioctl_value(&first, TUNSETOFFLOAD, libc::c_ulong::from(flags)).is_ok() {
                features.tso = has_tso;
                features.uso = has_uso;
                break;
            }
        }
    }
    if !vnet_hdr {
        // A persistent device keeps the offloads an earlier owner set; without
        // a virtio header to describe them, super-packets would arrive as
        // "packets" of 64 KiB with unfinished checksums. Turn them off.
        ioctl_value(&first, TUNSETOFFLOAD, 0)?;
    }
    ioctl_value(&first, TUNSETPERSIST, 1)?;
    set_queue_len(name, QUEUE_PACKETS)?;
    let flags = if vnet_hdr { base | IFF_VNET_HDR } else { base };
    let mut fds = vec![first];
    for _ in 1..queues.max(1) {
        match attach(name, flags) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                tracing::warn!(error = %e, device = name, "could not add a TUN queue");
                break;
            }
        }
    }
    features.queues = fds.len();
    Ok(Tun {
        queues: fds,
        features,
    })
}
