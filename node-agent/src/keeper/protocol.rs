//! The keeper's messages: one line of text per `SOCK_SEQPACKET` message,
//! descriptors beside it as `SCM_RIGHTS`.

use std::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::str::FromStr;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

use super::{KeeperError, MAX_DESCRIPTORS};

/// A message's text is at most this long.
const MAX_MESSAGE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get { device: String },
    Put { device: String, meta: String },
    Drop { device: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Kept { meta: String },
    None,
    Ok,
    Error { why: String },
}

/// Device names as the kernel takes them: 1 to 15 bytes, no `/`, no space.
fn device(name: &str) -> Result<String, KeeperError> {
    let fits = !name.is_empty() && name.len() < libc::IFNAMSIZ;
    if fits && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        Ok(name.to_string())
    } else {
        Err(KeeperError::Malformed(format!("device name {name:?}")))
    }
}

fn meta(text: &str) -> Result<String, KeeperError> {
    if text.is_empty() || text.chars().any(char::is_control) {
        return Err(KeeperError::Malformed(format!("meta {text:?}")));
    }
    Ok(text.to_string())
}

impl FromStr for Request {
    type Err = KeeperError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut words = text.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("get"), Some(name), None) => Ok(Request::Get {
                device: device(name)?,
            }),
            (Some("put"), Some(name), Some(rest)) => Ok(Request::Put {
                device: device(name)?,
                meta: meta(rest)?,
            }),
            (Some("drop"), Some(name), None) => Ok(Request::Drop {
                device: device(name)?,
            }),
            _ => Err(KeeperError::Malformed(format!("request {text:?}"))),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Get { device } => write!(f, "get {device}"),
            Request::Put { device, meta } => write!(f, "put {device} {meta}"),
            Request::Drop { device } => write!(f, "drop {device}"),
        }
    }
}

impl FromStr for Reply {
    type Err = KeeperError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(' ') {
            None if text == "none" => Ok(Reply::None),
            None if text == "ok" => Ok(Reply::Ok),
            Some(("kept", rest)) => Ok(Reply::Kept { meta: meta(rest)? }),
            Some(("error", why)) => Ok(Reply::Error {
                why: why.to_string(),
            }),
            _ => Err(KeeperError::Malformed(format!("reply {text:?}"))),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Kept { meta } => write!(f, "kept {meta}"),
            Reply::None => f.write_str("none"),
            Reply::Ok => f.write_str("ok"),
            Reply::Error { why } => write!(f, "error {why}"),
        }
    }
}

/// Sends `text` with `fds` attached, as one message.
pub(super) fn send(socket: &OwnedFd, text: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(text)];
    let rights = [ControlMessage::ScmRights(fds)];
    let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    socket::sendmsg::<()>(socket.as_raw_fd(), &iov, control, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one message: its text, and the descriptors that came with it
/// (close-on-exec). A message cut short, in its text or its descriptors,
/// is refused whole, its descriptors closed.
pub(super) fn receive(socket: &OwnedFd) -> nix::Result<(String, Vec<OwnedFd>)> {
    let mut buffer = [0u8; MAX_MESSAGE];
    let mut control = nix::cmsg_space!([RawFd; MAX_DESCRIPTORS]);
    let mut iov = [IoSliceMut::new(&mut buffer)];
    let message = socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: SCM_RIGHTS hands this process new descriptors that
            // nothing else owns.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let truncated = message
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let len = message.bytes;
    if truncated {
        return Err(nix::Error::EMSGSIZE);
    }
    let text = std::str::from_utf8(&buffer[..len]).map_err(|_| nix::Error::EBADMSG)?;
    Ok((text.to_string(), fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_their_text() {
        let requests = [
            Request::Get {
                device: "tartan0".into(),
            },
            Request::Put {
                device: "tartan-wg0".into(),
                meta: "v1 port=51820 queues=2".into(),
            },
            Request::Drop {
                device: "tartan0".into(),
            },
        ];
        for request in requests {
            assert_eq!(request.to_string().parse::<Request>().ok(), Some(request));
        }
        let replies = [
            Reply::Kept {
                meta: "v1 port=8472".into(),
            },
            Reply::None,
            Reply::Ok,
            Reply::Error {
                why: "no such thing".into(),
            },
        ];
        for reply in replies {
            assert_eq!(reply.to_string().parse::<Reply>().ok(), Some(reply));
        }
    }

    #[test]
    fn malformed_messages_are_refused_naming_what_is_wrong() {
        for text in [
            "",
            "get",
            "get a b",
            "put tartan0",
            "get ../../etc",
            "get averyveryverylongname",
            "put tartan0 \u{7}",
            "take tartan0",
        ] {
            let error = text.parse::<Request>().expect_err(text);
            assert!(error.to_string().contains("malformed"), "{text}: {error}");
        }
        assert!("kept".parse::<Reply>().is_err());
        assert!("maybe".parse::<Reply>().is_err());
    }
}
