//! `tartan-echo`: the test image's workload (std only, test-only).
//!
//! ```text
//!   serve [--tcp 8080] [--udp 8081]           TCP: one line `tartan-echo <hostname> <peer>`
//!                                             per connection; UDP: each datagram back,
//!                                             prefixed with `<hostname> `
//!   probe tcp|udp HOST:PORT [--timeout-ms 2000]
//!                                             one request; prints the answer; exit 0 on an
//!                                             answer, 1 otherwise
//!   flow udp HOST:PORT --seconds N [--rate 100] [--timeout-ms 2000]
//!                                             numbered datagrams at RATE/s for N s, then
//!                                             `sent S received R lost L`
//! ```
//!
//! A TCP request that looks like HTTP (`GET / HTTP/1.0`) is answered with an
//! HTTP/1.0 200 whose body is that line, so curl and kubelet `httpGet` probes
//! work too. Std only, no signal handling: as PID 1 it does not act on
//! SIGTERM, so pods running it want a short `terminationGracePeriodSeconds`.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

const USAGE: &str = "usage:
  tartan-echo serve [--tcp PORT(8080)] [--udp PORT(8081)]
  tartan-echo probe tcp|udp HOST:PORT [--timeout-ms MS(2000)]
  tartan-echo flow udp HOST:PORT --seconds N [--rate PER_SECOND(100)] [--timeout-ms MS(2000)]";

/// How long a served TCP connection may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line (or HTTP header section) a connection may send.
const REQUEST_LIMIT: u64 = 8192;

mod flow;

use flow::flow_udp;
#[cfg(test)]
use flow::{Tally, flow_datagram, flow_seq, tally};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Serve {
        tcp: u16,
        udp: u16,
    },
    Probe {
        proto: Proto,
        target: String,
        timeout: Duration,
    },
    Flow {
        target: String,
        rate: u32,
        seconds: u32,
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(command) => ExitCode::from(run(command)),
        Err(message) => {
            eprintln!("tartan-echo: {message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command; the process's exit code.
fn run(command: Command) -> u8 {
    match command {
        Command::Serve { tcp, udp } => match serve(tcp, udp) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tartan-echo serve: {e}");
                1
            }
        },
        Command::Probe {
            proto,
            target,
            timeout,
        } => {
            let answer = resolve(&target).and_then(|addr| match proto {
                Proto::Tcp => probe_tcp(addr, timeout),
                Proto::Udp => probe_udp(addr, timeout),
            });
            match answer {
                Ok(answer) => {
                    println!("{answer}");
                    0
                }
                Err(e) => {
                    eprintln!("tartan-echo probe {target}: {e}");
                    1
                }
            }
        }
        Command::Flow {
            target,
            rate,
            seconds,
            timeout,
        } => match resolve(&target).and_then(|addr| flow_udp(addr, rate, seconds, timeout)) {
            Ok(tally) => {
                println!("{tally}");
                0
            }
            Err(e) => {
                eprintln!("tartan-echo flow {target}: {e}");
                1
            }
        },
    }
}

/// The command line, without the program name.
fn parse(args: &[String]) -> Result<Command, String> {
    let (sub, rest) = args.split_first().ok_or("no command")?;
    let (positional, flags) = split_flags(rest)?;
    let flag = |name: &str| flags.get(name).map(String::as_str);
    let known = |allowed: &[&str]| match flags.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{sub}: unknown flag --{k}")),
        None => Ok(()),
    };
    let timeout = || -> Result<Duration, String> {
        Ok(Duration::from_millis(number(
            flag("timeout-ms").unwrap_or("2000"),
            "--timeout-ms",
        )?))
    };
    match sub.as_str() {
        "serve" => {
            known(&["tcp", "udp"])?;
            if !positional.is_empty() {
                return Err(format!("serve: unexpected argument {}", positional[0]));
            }
            Ok(Command::Serve {
                tcp: number(flag("tcp").unwrap_or("8080"), "--tcp")?,
                udp: number(flag("udp").unwrap_or("8081"), "--udp")?,
            })
        }
        "probe" => {
            known(&["timeout-ms"])?;
            let [proto, target] = positional.as_slice() else {
                return Err("probe: want tcp|udp HOST:PORT".into());
            };
            let proto = match proto.as_str() {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                other => return Err(format!("probe: unknown protocol {other}")),
            };
            Ok(Command::Probe {
                proto,
                target: target.clone(),
                timeout: timeout()?,
            })
        }
        "flow" => {
            known(&["rate", "seconds", "timeout-ms"])?;
            let [proto, target] = positional.as_slice() else {
                return Err("flow: want udp HOST:PORT".into());
            };
            if proto != "udp" {
                return Err(format!("flow: only udp, not {proto}"));
            }
            let rate = number(flag("rate").unwrap_or("100"), "--rate")?;
            if rate == 0 {
                return Err("flow: --rate must be at least 1".into());
            }
            Ok(Command::Flow {
                target: target.clone(),
                rate,
                seconds: number(
                    flag("seconds").ok_or("flow: --seconds is required")?,
                    "--seconds",
                )?,
                timeout: timeout()?,
            })
        }
        other => Err(format!("unknown command {other}")),
    }
}

/// Positional arguments, and `--name value` / `--name=value` flags by name.
fn split_flags(args: &[String]) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
    let mut positional = Vec::new();
    let mut flags = BTreeMap::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let Some(name) = arg.strip_prefix("--") else {
            positional.push(arg.clone());
            continue;
        };
        let (name, value) = match name.split_once('=') {
            Some((name, value)) => (name, value.to_string()),
            None => (
                name,
                args.next()
                    .ok_or(format!("--{name} wants a value"))?
                    .clone(),
            ),
        };
        if flags.insert(name.to_string(), value).is_some() {
            return Err(format!("--{name} given twice"));
        }
    }
    Ok((positional, flags))
}

fn number<T: std::str::FromStr>(value: &str, what: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{what}: not a number: {value}"))
}

/// The first address HOST:PORT resolves to (names go through the resolver,
/// so a Service's DNS name works).
fn resolve(target: &str) -> io::Result<SocketAddr> {
    target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{target} resolves to no address")))
}

/// The kernel's hostname (the pod's name in a pod).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// An address as a peer sees it: IPv4 on a dual-stack socket (`::ffff:a.b.c.d`) as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The TCP answer: `tartan-echo <hostname> <peer>`.
fn tcp_answer(hostname: &str, peer: SocketAddr) -> String {
    format!("tartan-echo {hostname} {}", canonical(peer))
}

/// A UDP answer: the datagram back, prefixed with `<hostname> `.
fn udp_answer(hostname: &str, datagram: &[u8]) -> Vec<u8> {
    let mut answer = Vec::with_capacity(hostname.len() + 1 + datagram.len());
    answer.extend_from_slice(hostname.as_bytes());
    answer.push(b' ');
    answer.extend_from_slice(datagram);
    answer
}

/// Whether a request line is HTTP's (`GET /path HTTP/1.1`).
fn is_http(request_line: &str) -> bool {
    let mut words = request_line.split_whitespace();
    matches!(
        (words.next(), words.next(), words.next(), words.next()),
        (Some(method), Some(_), Some(version), None)
            if method.bytes().all(|b| b.is_ascii_uppercase()) && version.starts_with("HTTP/")
    )
}

/// The bytes a TCP request gets back: the line, or an HTTP/1.0 200 around it.
fn tcp_response(answer: &str, http: bool) -> String {
    if http {
        let body = format!("{answer}\n");
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        format!("{answer}\n")
    }
}

/// Binds both stacks when the kernel has IPv6, else IPv4 only.
fn bind<T>(port: u16, bind: impl Fn(SocketAddr) -> io::Result<T>) -> io::Result<T> {
    bind(SocketAddr::from(([0u16; 8], port))).or_else(|_| bind(SocketAddr::from(([0u8; 4], port))))
}

fn serve(tcp_port: u16, udp_port: u16) -> io::Result<()> {
    let hostname = hostname();
    let listener = bind(tcp_port, TcpListener::bind)?;
    let socket = bind(udp_port, UdpSocket::bind)?;
    println!(
        "tartan-echo {hostname}: tcp {} udp {}",
        listener.local_addr()?,
        socket.local_addr()?
    );
    let udp = {
        let hostname = hostname.clone();
        thread::spawn(move || serve_udp(&socket, &hostname))
    };
    serve_tcp(&listener, &hostname)?;
    udp.join()
        .map_err(|_| io::Error::other("udp server panicked"))?
}

/// Answers each connection on its own thread, forever.
fn serve_tcp(listener: &TcpListener, hostname: &str) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let answer = tcp_answer(hostname, peer);
        thread::spawn(move || {
            let _ = answer_tcp(stream, &answer);
        });
    }
}

/// Reads the request line (and an HTTP request's headers), then answers and
/// closes. A client that sends nothing before the timeout gets the line too.
fn answer_tcp(stream: TcpStream, answer: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new((&stream).take(REQUEST_LIMIT));
    let mut line = String::new();
    let http = reader.read_line(&mut line).is_ok() && is_http(&line);
    if http {
        // Read the headers up to the blank line: closing with unread input
        // would reset the connection under the answer.
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => break,
                Ok(_) if header.trim().is_empty() => break,
                Ok(_) => {}
            }
        }
    }
    (&stream).write_all(tcp_response(answer, http).as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)
}

/// Sends each datagram back, prefixed with the hostname, forever.
fn serve_udp(socket: &UdpSocket, hostname: &str) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let _ = socket.send_to(&udp_answer(hostname, &buf[..len]), peer);
    }
}

fn probe_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"probe\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    nonempty(answer.trim())
}

/// A UDP socket connected to `addr` (so only its answers arrive, and an ICMP
/// port unreachable shows as an error).
fn udp_to(addr: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => ([0u8; 4], 0).into(),
        SocketAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(addr)?;
    Ok(socket)
}

fn probe_udp(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let socket = udp_to(addr)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"probe")?;
    let mut buf = vec![0u8; 65536];
    let len = socket.recv(&mut buf)?;
    nonempty(String::from_utf8_lossy(&buf[..len]).trim())
}

fn nonempty(answer: &str) -> io::Result<String> {
    if answer.is_empty() {
        return Err(io::Error::other("empty answer"));
    }
    Ok(answer.to_string())
}

#[cfg(test)]
mod tests;
