//! Command line, with environment fallbacks for what a DaemonSet sets.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
pub use tartan_runtime::LogFormat;

use crate::underlay::InterfacePattern;

/// Tartan node agent: programs this node's bridge, VXLAN, routes and masquerade from NodeSubnets.
#[derive(Parser, Debug, Clone)]
#[command(name = "tartan-agent", version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Name of the OverlayNetwork to program.
    #[arg(long, env = "TARTAN_NETWORK", default_value = "default")]
    pub network: String,

    /// Underlay interface (default: the one holding the Node's InternalIP).
    #[arg(long, env = "TARTAN_IFACE", conflicts_with = "iface_regex")]
    pub iface: Option<String>,

    /// Regular expression picking the underlay interface by name.
    #[arg(long, env = "TARTAN_IFACE_REGEX")]
    pub iface_regex: Option<InterfacePattern>,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "TARTAN_METRICS_ADDR", default_value = "0.0.0.0:9101")]
    pub metrics_addr: SocketAddr,

    /// Directory of the CNI configuration.
    #[arg(long, env = "TARTAN_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,

    /// Where host-local keeps its pod address allocations (the conflist's
    /// `dataDir`; default host-local's own, /var/lib/cni/networks).
    #[arg(long, env = "TARTAN_CNI_IPAM_DATA_DIR")]
    pub cni_ipam_data_dir: Option<PathBuf>,

    /// Seconds between full resyncs of the kernel state (drift is repaired at once anyway).
    #[arg(long, env = "TARTAN_RESYNC_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub resync_seconds: u64,

    /// TUN queues of the udp backend, each with a send and a receive thread (0: one per core, at most 4).
    #[arg(long, env = "TARTAN_UDP_QUEUES", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=64))]
    pub udp_queues: u16,

    /// udp and wireguard backends: microseconds an idle datapath loop keeps
    /// polling (yielding its core) after a round of a stream before it
    /// sleeps; 0 turns polling off.
    #[arg(long, env = "TARTAN_TUN_BUSY_POLL_US",
          default_value_t = crate::udp::sys::DEFAULT_BUSY_POLL.as_micros() as u16,
          value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub tun_busy_poll_us: u16,

    /// A file holding a shared secret (at least 16 bytes, the same on every
    /// node): udp datagrams then carry and must carry an authentication tag.
    #[arg(long, env = "TARTAN_UDP_KEY_FILE")]
    pub udp_key_file: Option<PathBuf>,

    /// wireguard backend: this node's private key, made on first start (mode
    /// 0600) and kept across restarts; only its public key leaves the node.
    #[arg(
        long,
        env = "TARTAN_WIREGUARD_KEY_FILE",
        default_value = "/var/lib/tartan/wireguard/private.key"
    )]
    pub wireguard_key_file: PathBuf,

    /// bgp backend: `managed` runs `bird` itself (files in --bird-dir); with
    /// --bird-socket the agent drives a BIRD that is already running.
    #[arg(long, env = "TARTAN_BIRD", default_value = "managed", value_parser = ["managed"])]
    pub bird: String,

    /// Where a managed BIRD's configuration and control socket live.
    #[arg(long, env = "TARTAN_BIRD_DIR", default_value = "/run/tartan/bird")]
    pub bird_dir: PathBuf,

    /// The control socket of a BIRD already running (instead of a managed one).
    #[arg(long, env = "TARTAN_BIRD_SOCKET")]
    pub bird_socket: Option<PathBuf>,

    /// With --bird-socket: the configuration file that BIRD was started with;
    /// the agent rewrites it and runs `configure`.
    #[arg(
        long,
        env = "TARTAN_BIRD_CONFIG",
        default_value = "/etc/bird/bird.conf"
    )]
    pub bird_config: PathBuf,

    /// Bind each local pod's bridge port to its addresses (the pod source
    /// check): the conflist chains the `tartan` CNI plugin (this binary,
    /// installed as `tartan` in the CNI bin directory) after `bridge`, and
    /// the plugin asks the agent on --cni-socket. `false` removes the table.
    #[arg(long, env = "TARTAN_POD_SOURCE_CHECK", default_value_t = false, action = clap::ArgAction::Set)]
    pub pod_source_check: bool,

    /// Where the agent listens for the `tartan` CNI plugin.
    #[arg(long, env = "TARTAN_CNI_SOCKET", default_value = crate::guard::DEFAULT_SOCKET)]
    pub cni_socket: PathBuf,

    /// The namespace Tartan runs in: where BGP password Secrets are read.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tartan-system")]
    pub namespace: String,

    /// Enforce Kubernetes NetworkPolicy at this node's pods (the nftables table
    /// `inet tartan-policy`); `false` removes the table and watches nothing.
    #[arg(long, env = "TARTAN_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    pub network_policy: bool,

    /// Remove everything Tartan owns on this node, then exit (uninstall).
    #[arg(long)]
    pub cleanup: bool,

    /// With --cleanup: keep cleaning every few seconds (a still-running agent
    /// may restore things) and report ready on /readyz once two rounds in a row
    /// found nothing; run until SIGTERM. What the uninstall hook uses.
    #[arg(long, requires = "cleanup")]
    pub cleanup_hold: bool,

    /// Root of the sysctl tree (the chart mounts the host's /proc/sys/net here).
    #[arg(long, env = "TARTAN_SYSCTL_ROOT", default_value = "/proc/sys")]
    pub sysctl_root: std::path::PathBuf,

    /// The datapath keeper's socket (`tartan-agent keep`): the udp and
    /// wireguard datapaths hand it their TUN queues and sockets, and take them
    /// back after a restart, so what arrives meanwhile waits instead of being
    /// dropped. Unset: no keeper.
    #[arg(long, env = "TARTAN_DATAPATH_KEEPER")]
    pub datapath_keeper: Option<PathBuf>,

    /// Program a named network namespace instead of this one (labs and tests).
    #[arg(long, env = "TARTAN_NETNS")]
    pub netns: Option<String>,

    /// Path of a kubeconfig file (defaults to KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The API client's rate limit (`--kube-api-qps`, `--kube-api-burst`).
    #[command(flatten)]
    pub kube_api: tartan_runtime::RateLimit,

    #[arg(long, env = "TARTAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Print the ClusterRole the agent needs.
    Rbac {
        #[arg(long, default_value = "tartan-agent")]
        name: String,
    },
    /// Print the ValidatingAdmissionPolicy (and binding) that holds the agent
    /// to its own node's NodeSubnet.
    AdmissionPolicy {
        #[arg(long, default_value = "tartan-system")]
        namespace: String,
        #[arg(long, default_value = "tartan-agent")]
        service_account: String,
    },
    /// Run the datapath keeper: hold the TUN queues and sockets the agent
    /// hands over, across its restarts, until SIGTERM (the chart runs it in
    /// a container beside the agent's).
    Keep {
        /// Where to listen (a stale socket file there is replaced).
        #[arg(long, env = "TARTAN_DATAPATH_KEEPER")]
        socket: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("tartan-agent").chain(args.iter().copied()))
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_flag_named() {
        let error = parse(&["--resync-seconds", "3"]).expect_err("too short");
        assert!(error.to_string().contains("--resync-seconds"), "{error}");
        assert!(error.to_string().contains("10..=86400"), "{error}");
        assert!(parse(&["--udp-queues", "65"]).is_err());
        assert_eq!(
            parse(&["--resync-seconds", "10"])
                .expect("ok")
                .resync_seconds,
            10
        );
    }

    #[test]
    fn a_bad_interface_pattern_is_refused_when_parsed() {
        let error = parse(&["--iface-regex", "^(eth"]).expect_err("unbalanced");
        assert!(error.to_string().contains("--iface-regex"), "{error}");
        assert!(parse(&["--iface-regex", "^ens[0-9]+$"]).is_ok());
    }
}
