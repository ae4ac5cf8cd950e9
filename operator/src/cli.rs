//! Command line, with environment fallbacks for every flag a Deployment sets.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
pub use tartan_runtime::LogFormat;

/// Tartan operator: allocates one pod subnet per Node into NodeSubnet objects.
#[derive(Parser, Debug, Clone)]
#[command(name = "tartan-operator", version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Name of the OverlayNetwork this operator manages.
    #[arg(long, env = "TARTAN_NETWORK", default_value = "default")]
    pub network: String,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "TARTAN_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// Run leader election (disable only for a single replica).
    #[arg(long, env = "TARTAN_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease (defaults to the pod's namespace).
    #[arg(long, env = "TARTAN_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "TARTAN_LEADER_ELECTION_ID",
        default_value = "tartan-operator"
    )]
    pub leader_election_id: String,

    /// This replica's identity in the Lease (defaults to the pod name or hostname).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a Lease stays valid without renewal; a standby takes over after it.
    #[arg(long, env = "TARTAN_LEASE_DURATION_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_duration_seconds: u64,

    /// Report NetworkPolicies the agents cannot enforce (a Warning Event on
    /// each); the chart sets it with the agents' `networkPolicy.enabled`.
    #[arg(long, env = "TARTAN_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    pub network_policy: bool,

    /// Path of a kubeconfig file (defaults to KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Client-side rate limit on requests to the API server.
    #[command(flatten)]
    pub kube_api: tartan_runtime::RateLimit,

    /// Log format.
    #[arg(long, env = "TARTAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Print the CRDs (YAML).
    Crds,
    /// (Helm uninstall hook) Delete the agent DaemonSet, then wait until the
    /// cleanup DaemonSet reports every node clean.
    Uninstall {
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: String,
        #[arg(long)]
        agent_daemonset: String,
        #[arg(long)]
        cleanup_daemonset: String,
        #[arg(long, default_value_t = 300)]
        timeout_seconds: u64,
    },
    /// Print the ClusterRole and Role the operator needs (YAML).
    Rbac {
        #[arg(long, default_value = "tartan-operator")]
        name: String,
        #[arg(long, default_value = "kube-system")]
        namespace: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Args;

    #[test]
    fn a_lease_shorter_than_three_seconds_is_refused_with_the_flag_named() {
        let error = Args::try_parse_from(["tartan-operator", "--lease-duration-seconds", "1"])
            .expect_err("too short");
        assert!(
            error.to_string().contains("--lease-duration-seconds"),
            "{error}"
        );
        assert!(error.to_string().contains("3..=300"), "{error}");
    }
}
