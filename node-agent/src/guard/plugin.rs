//! `tartan`, the CNI plugin: the agent's own binary, run by the container
//! runtime as a chained plugin after `bridge`. It reads the bridge's result,
//! asks the agent to bind the pod's port to its addresses, and passes the
//! result on unchanged. It holds no state and touches no kernel object.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{DEFAULT_SOCKET, Reply, Request};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("CNI_COMMAND is not set")]
    NoCommand,
    #[error("reading the network configuration from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("the network configuration is not JSON: {0}")]
    Config(#[source] serde_json::Error),
    #[error("prevResult: {0}")]
    PrevResult(String),
    #[error("asking the agent at {socket}: {source}")]
    Agent {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent refused: {0}")]
    Refused(String),
}

/// Whether this process was started as the CNI plugin.
pub fn invoked_as_plugin() -> bool {
    let name = std::env::args_os().next();
    let is_plugin = name
        .as_deref()
        .and_then(|n| Path::new(n).file_name())
        .is_some_and(|n| n == super::PLUGIN);
    is_plugin && std::env::var_os("CNI_COMMAND").is_some()
}

/// Runs the plugin: the result (or the CNI error) on stdout, and the exit code.
pub fn main() -> std::process::ExitCode {
    let mut stdin = String::new();
    let result = std::io::stdin()
        .read_to_string(&mut stdin)
        .map_err(PluginError::Stdin)
        .and_then(|_| run(std::env::var("CNI_COMMAND").ok().as_deref(), &stdin));
    match result {
        Ok(output) => {
            // DEL and CHECK print nothing at all on success.
            if !output.is_empty() {
                println!("{output}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            // The CNI error format: code 999 is "plugin-specific".
            println!(
                "{}",
                json!({"cniVersion": "1.0.0", "code": 999, "msg": e.to_string()})
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// One invocation: `command` with the network configuration `stdin`.
pub fn run(command: Option<&str>, stdin: &str) -> Result<String, PluginError> {
    let command = command.ok_or(PluginError::NoCommand)?;
    if command == "VERSION" {
        return Ok(
            json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}).to_string(),
        );
    }
    let config: Value = serde_json::from_str(stdin).map_err(PluginError::Config)?;
    let socket = config["socket"]
        .as_str()
        .unwrap_or(DEFAULT_SOCKET)
        .to_string();
    let container = std::env::var("CNI_CONTAINERID").unwrap_or_default();
    match command {
        "ADD" => {
            let prev = &config["prevResult"];
            let (port, ips) =
                port_and_addresses(prev, config["bridge"].as_str().unwrap_or("cni0"))?;
            ask(
                &socket,
                &Request::Add {
                    container,
                    port,
                    ips,
                },
            )?;
            let mut result = prev.clone();
            result["cniVersion"] = config["cniVersion"].clone();
            Ok(result.to_string())
        }
        // DEL must succeed when the agent is away (a node going down): the
        // agent sweeps ports that no longer exist when it comes back.
        "DEL" => match ask(&socket, &Request::Del { container }) {
            Err(PluginError::Agent { source, .. }) => {
                eprintln!(
                    "tartan: agent unreachable on DEL ({source}); it sweeps the binding later"
                );
                Ok(String::new())
            }
            other => other.map(|_| String::new()),
        },
        "CHECK" => ask(&socket, &Request::Check { container }).map(|_| String::new()),
        other => Err(PluginError::PrevResult(format!(
            "unknown CNI_COMMAND {other:?}"
        ))),
    }
}

/// The host side of the pod's veth (no sandbox, not the bridge) and the
/// pod's addresses, from the bridge plugin's result.
pub fn port_and_addresses(
    prev: &Value,
    bridge: &str,
) -> Result<(String, Vec<IpAddr>), PluginError> {
    let interfaces = prev["interfaces"].as_array().ok_or_else(|| {
        PluginError::PrevResult("no interfaces (is `tartan` chained after `bridge`?)".into())
    })?;
    let hosts: Vec<&str> = interfaces
        .iter()
        .filter(|i| {
            i.get("sandbox")
                .is_none_or(|s| s.as_str().unwrap_or_default().is_empty())
        })
        .filter_map(|i| i["name"].as_str())
        .filter(|name| *name != bridge)
        .collect();
    let [port] = hosts.as_slice() else {
        return Err(PluginError::PrevResult(format!(
            "expected one host-side veth besides {bridge}, found {hosts:?}"
        )));
    };
    let ips: Vec<IpAddr> = (prev["ips"].as_array().into_iter().flatten())
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .collect();
    if ips.is_empty() {
        return Err(PluginError::PrevResult("no pod addresses".into()));
    }
    Ok((port.to_string(), ips))
}

fn ask(socket: &str, request: &Request) -> Result<(), PluginError> {
    let agent = |source| PluginError::Agent {
        socket: socket.to_string(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(agent)?;
    let timeout = Some(Duration::from_secs(10));
    stream.set_read_timeout(timeout).map_err(agent)?;
    stream.set_write_timeout(timeout).map_err(agent)?;
    let line = serde_json::to_string(request).map_err(|e| agent(std::io::Error::other(e)))?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(agent)?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(agent)?;
    let reply: Reply = serde_json::from_str(&reply)
        .map_err(|e| agent(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    match reply {
        Reply { ok: true, .. } => Ok(()),
        Reply { error, .. } => Err(PluginError::Refused(error.unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the reference bridge plugin returns (CNI 1.0.0).
    fn bridge_result() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "0e:00:00:00:00:01"},
                {"name": "veth1a2b3c4d", "mac": "0e:00:00:00:00:02"},
                {"name": "eth0", "mac": "0e:00:00:00:00:03", "sandbox": "/var/run/netns/p"},
            ],
            "ips": [
                {"interface": 2, "address": "10.244.1.5/24", "gateway": "10.244.1.1"},
                {"interface": 2, "address": "fd00:10:244:1::5/64"},
            ],
        })
    }

    #[test]
    fn the_port_is_the_host_side_veth_and_the_addresses_are_the_pods() {
        let (port, ips) = port_and_addresses(&bridge_result(), "cni0").expect("parsed");
        assert_eq!(port, "veth1a2b3c4d");
        let expected: Vec<IpAddr> = vec![
            "10.244.1.5".parse().expect("ip"),
            "fd00:10:244:1::5".parse().expect("ip"),
        ];
        assert_eq!(ips, expected);
    }

    #[test]
    fn a_result_without_interfaces_names_the_chaining_mistake() {
        let error = port_and_addresses(&json!({"ips": []}), "cni0").expect_err("refused");
        assert!(
            error.to_string().contains("chained after `bridge`"),
            "{error}"
        );
    }

    #[test]
    fn version_needs_no_agent_and_del_succeeds_without_one() {
        let version = run(Some("VERSION"), "").expect("version");
        assert!(version.contains("1.0.0"));
        let config =
            json!({"cniVersion": "1.0.0", "socket": "/nonexistent/tartan.sock"}).to_string();
        assert_eq!(run(Some("DEL"), &config).expect("DEL succeeds"), "");
        let add = json!({"cniVersion": "1.0.0", "socket": "/nonexistent/tartan.sock",
            "prevResult": bridge_result()});
        let error = run(Some("ADD"), &add.to_string()).expect_err("ADD needs the agent");
        assert!(
            error.to_string().contains("/nonexistent/tartan.sock"),
            "{error}"
        );
    }
}
