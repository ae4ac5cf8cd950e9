//! TCP between two namespaces with iperf3: the throughput figure of the
//! bench and the "bulk traffic crosses" check of the kernel tests.

use std::io;
use std::process::Stdio;
use std::time::Duration;

use crate::exec;

/// What the receiving side counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    pub bytes: f64,
    pub gbps: f64,
}

/// `seconds` of one TCP stream from `client` to `server_ip`, where `server_netns` listens.
pub fn tcp(
    client: &str,
    server_netns: &str,
    server_ip: &str,
    seconds: u32,
) -> io::Result<Transfer> {
    tcp_streams(client, server_netns, server_ip, seconds, 1)
}

/// [`tcp`] with `streams` parallel streams (`iperf3 -P`), summed.
pub fn tcp_streams(
    client: &str,
    server_netns: &str,
    server_ip: &str,
    seconds: u32,
    streams: u32,
) -> io::Result<Transfer> {
    let mut server = crate::command_in(server_netns, "iperf3")
        .args(["-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = exec(
        client,
        &[
            "iperf3",
            "-c",
            server_ip,
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
    );
    let _ = server.kill();
    let _ = server.wait();
    let json: serde_json::Value = serde_json::from_slice(&out?.stdout)
        .map_err(|e| io::Error::other(format!("iperf3 JSON: {e}")))?;
    let received = &json["end"]["sum_received"];
    match (
        received["bytes"].as_f64(),
        received["bits_per_second"].as_f64(),
    ) {
        (Some(bytes), Some(bps)) => Ok(Transfer {
            bytes,
            gbps: bps / 1e9,
        }),
        _ => Err(io::Error::other("iperf3 reported no transfer")),
    }
}
