//! Command line, with environment fallbacks for what a DaemonSet sets.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
pub use tartan_runtime::LogFormat;

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
    pub iface_regex: Option<String>,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "TARTAN_METRICS_ADDR", default_value = "0.0.0.0:9101")]
    pub metrics_addr: SocketAddr,

    /// Directory of the CNI configuration.
    #[arg(long, env = "TARTAN_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,

    /// Seconds between full resyncs of the kernel state (drift is repaired at once anyway).
    #[arg(long, env = "TARTAN_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,

    /// TUN queues of the udp backend, each with a send and a receive thread (0: one per core, at most 4).
    #[arg(long, env = "TARTAN_UDP_QUEUES", default_value_t = 0)]
    pub udp_queues: usize,

    /// A file holding a shared secret (at least 16 bytes, the same on every
    /// node): udp datagrams then carry and must carry an authentication tag.
    #[arg(long, env = "TARTAN_UDP_KEY_FILE")]
    pub udp_key_file: Option<PathBuf>,

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

    /// Program a named network namespace instead of this one (labs and tests).
    #[arg(long, env = "TARTAN_NETNS")]
    pub netns: Option<String>,

    /// Path of a kubeconfig file (defaults to KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

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
}
