//! BIRD's control socket (what `birdc` speaks): a command per line, replies
//! as lines with a four-digit code, `-` continuing and ` ` ending a reply,
//! and lines starting with a space continuing the previous code.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::plan::SessionState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    pub text: String,
}

pub struct BirdControl {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Codes 8xxx and 9xxx are errors (runtime and parse).
fn is_error(code: u16) -> bool {
    code >= 8000
}

impl BirdControl {
    pub fn connect(socket: &Path) -> io::Result<Self> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut control = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        control.read_reply()?; // "0001 BIRD x.y ready."
        Ok(control)
    }

    /// Sends one command and returns its reply; an error reply is an error.
    pub fn request(&mut self, command: &str) -> io::Result<Vec<ReplyLine>> {
        self.writer.write_all(command.as_bytes())?;
        self.writer.write_all(b"\n")?;
        let reply = self.read_reply()?;
        if let Some(error) = reply.iter().find(|l| is_error(l.code)) {
            return Err(io::Error::other(format!(
                "BIRD refused {command:?}: {}",
                error.text.trim()
            )));
        }
        Ok(reply)
    }

    fn read_reply(&mut self) -> io::Result<Vec<ReplyLine>> {
        let mut lines = Vec::new();
        let mut code = 0;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "BIRD closed the socket",
                ));
            }
            let line = line.trim_end_matches('\n');
            let (parsed, last) = parse_line(line, code);
            code = parsed.code;
            lines.push(parsed);
            if last {
                return Ok(lines);
            }
        }
    }

    /// Rereads the configuration file BIRD was started with.
    pub fn configure(&mut self) -> io::Result<()> {
        self.request("configure").map(|_| ())
    }

    pub fn protocols(&mut self) -> io::Result<Vec<ReplyLine>> {
        self.request("show protocols all")
    }
}

/// One reply line: (the line, whether it ends the reply).
pub fn parse_line(line: &str, previous_code: u16) -> (ReplyLine, bool) {
    let bytes = line.as_bytes();
    let coded = bytes.len() >= 5 && bytes[..4].iter().all(u8::is_ascii_digit);
    if coded && (bytes[4] == b' ' || bytes[4] == b'-') {
        let code = line[..4].parse().unwrap_or(0);
        let text = line[5..].to_string();
        return (ReplyLine { code, text }, bytes[4] == b' ');
    }
    if coded && bytes.len() == 4 {
        let code = line.parse().unwrap_or(0);
        return (
            ReplyLine {
                code,
                text: String::new(),
            },
            true,
        );
    }
    let text = line.strip_prefix(' ').unwrap_or(line).to_string();
    (
        ReplyLine {
            code: previous_code,
            text,
        },
        false,
    )
}

/// What `show protocols all` says about the BGP sessions: by protocol name,
/// the state and last error, and the routes each imported.
pub fn parse_protocols(reply: &[ReplyLine]) -> (BTreeMap<String, SessionState>, u32) {
    let mut sessions = BTreeMap::new();
    let mut routes = 0;
    let mut current: Option<String> = None;
    for line in reply {
        match line.code {
            // Summary row: name proto table state since info.
            1002 => {
                let fields: Vec<&str> = line.text.split_whitespace().collect();
                current = None;
                if fields.get(1) == Some(&"BGP")
                    && let Some(name) = fields.first()
                {
                    current = Some(name.to_string());
                    sessions.insert(
                        name.to_string(),
                        SessionState {
                            state: fields.get(5).unwrap_or(&"Idle").to_string(),
                            last_error: None,
                        },
                    );
                }
            }
            // Details of the protocol named by the last summary row.
            1006 => {
                let Some(name) = &current else { continue };
                let Some(session) = sessions.get_mut(name) else {
                    continue;
                };
                let text = line.text.trim();
                if let Some(state) = text.strip_prefix("BGP state:") {
                    session.state = state.trim().to_string();
                } else if let Some(error) = text.strip_prefix("Last error:") {
                    session.last_error = Some(error.trim().to_string());
                } else if let Some(counts) = text.strip_prefix("Routes:") {
                    routes += counts
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<u32>().ok())
                        .unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    (sessions, routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from BIRD 2.0.12 (`show protocols all`), trimmed.
    const REPLY: &str = "2002-Name       Proto      Table      State  Since         Info
1002-device1    Device     ---        up     11:30:17.934  
1006-
1002-mesh_192_168_100_12 BGP        ---        up     11:30:22.413  Established   
1006-  BGP state:          Established
     Neighbor address: 192.168.100.12
   Channel ipv4
     State:          UP
     Routes:         1 imported, 1 exported, 1 preferred
1002-peer_192_168_100_1 BGP        ---        start  11:30:17.934  Active        Socket: Connection refused
1006-  BGP state:          Active
     Neighbor address: 192.168.100.1
     Last error:       Socket: Connection refused
   Channel ipv4
     State:          DOWN
0000 ";

    fn lines(text: &str) -> Vec<ReplyLine> {
        let mut code = 0;
        text.lines()
            .map(|l| {
                let (line, _) = parse_line(l, code);
                code = line.code;
                line
            })
            .collect()
    }

    #[test]
    fn reads_sessions_errors_and_routes() {
        let (sessions, routes) = parse_protocols(&lines(REPLY));
        assert_eq!(sessions.len(), 2, "only BGP protocols: {sessions:?}");
        assert!(sessions["mesh_192_168_100_12"].established());
        let down = &sessions["peer_192_168_100_1"];
        assert_eq!(down.state, "Active");
        assert_eq!(
            down.last_error.as_deref(),
            Some("Socket: Connection refused")
        );
        assert_eq!(routes, 1);
    }

    #[test]
    fn reply_lines_end_on_a_space_after_the_code() {
        assert!(parse_line("0001 BIRD 2.0.12 ready.", 0).1);
        assert!(!parse_line("1002-device1", 0).1);
        let (line, last) = parse_line(" continued", 1006);
        assert_eq!(
            (line.code, line.text.as_str(), last),
            (1006, "continued", false)
        );
        assert!(is_error(parse_line("9001 syntax error", 0).0.code));
    }
}
