//! The command line.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};
use tartan_crds::{BackendType, OverlayNetworkSpec};

use crate::lifecycle::{self, UpOptions};

/// Tartan lab: nodes and pods as network namespaces, driven by Tartan's own code.
#[derive(Parser, Debug)]
#[command(name = "tartan-lab", version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: LabCommand,
}

/// What `tartan-lab cluster` does.
#[derive(Subcommand, Debug)]
pub enum ClusterAction {
    /// Real nodes (kubelet, containerd, kube-proxy), Tartan by helm, an echo Deployment and Service.
    Up {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=8))]
        nodes: u8,
    },
    /// kubectl get nodes,nodesubnets,pods -o wide.
    Status {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Remove every process, mount, cgroup and namespace the cluster made.
    Down {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// (internal) The daemon `up` starts, holding the cluster until SIGTERM.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        nodes: u8,
    },
}

/// `bench --scale N`: N fake nodes and two real agents on a real API server.
#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// Run the scale benchmark with N fake nodes (writes OUT/scale-N.json and .md).
    #[arg(long, value_name = "N")]
    pub scale: Option<usize>,
    /// Nodes joining one at a time on the settled cluster (latency, CPU per join).
    #[arg(long, default_value_t = 10, requires = "scale")]
    pub joins: usize,
    /// Seconds any one wait may take; what was reached by then is reported.
    #[arg(long, default_value_t = 600, requires = "scale")]
    pub timeout: u64,
    /// Seconds without a tartan.dev write that count as settled.
    #[arg(long, default_value_t = 5, requires = "scale")]
    pub quiet: u64,
    /// Node creates and simulated status writes in flight at once.
    #[arg(long, default_value_t = 32, requires = "scale")]
    pub in_flight: usize,
    /// Seconds a joining node's simulated agent takes to publish its status
    /// (a real one starts after its Node registers; peers see it without an address meanwhile).
    #[arg(long, default_value_t = 2.0, requires = "scale")]
    pub status_delay: f64,
    /// The tartan-agent to measure (default: next to tartan-lab).
    #[arg(long, requires = "scale")]
    pub agent_bin: Option<PathBuf>,
    /// The tartan-operator to measure (default: next to tartan-lab).
    #[arg(long, requires = "scale")]
    pub operator_bin: Option<PathBuf>,
    /// Directory holding etcd and kube-apiserver (default: the harness's).
    #[arg(long, env = "TARTAN_CONTROL_PLANE_DIR", requires = "scale")]
    pub control_plane_dir: Option<PathBuf>,
    /// Directory of CRD YAML to install (another build's crds/; default: this build's).
    #[arg(long, requires = "scale")]
    pub crds: Option<PathBuf>,
    /// An extra kube-apiserver flag (repeatable), e.g. --apiserver-arg=--max-requests-inflight=800.
    #[arg(long = "apiserver-arg", requires = "scale", allow_hyphen_values = true)]
    pub apiserver_args: Vec<String>,
}

impl ScaleArgs {
    fn options(
        self,
        nodes: usize,
        out: PathBuf,
    ) -> anyhow::Result<crate::bench::scale::ScaleOptions> {
        use crate::bench::scale::{ScaleOptions, beside_exe, cluster::Sources};
        use std::time::Duration;
        let agent = match self.agent_bin {
            Some(path) => path,
            None => beside_exe("tartan-agent")?,
        };
        let operator = match self.operator_bin {
            Some(path) => path,
            None => beside_exe("tartan-operator")?,
        };
        Ok(ScaleOptions {
            nodes,
            joins: self.joins,
            timeout: Duration::from_secs(self.timeout),
            quiet: Duration::from_secs(self.quiet),
            in_flight: self.in_flight,
            status_delay: Duration::try_from_secs_f64(self.status_delay)
                .map_err(|e| anyhow::anyhow!("--status-delay {}: {e}", self.status_delay))?,
            sources: Sources {
                agent,
                operator,
                control_plane: self.control_plane_dir,
                crds: self.crds,
                apiserver_args: self.apiserver_args,
            },
            out,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// A real Kubernetes cluster on this machine, with Tartan installed by helm.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Build the lab: node namespaces, subnets from IPAM, agents, pods via CNI; print the matrix.
    Up {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 2)]
        pods_per_node: usize,
        #[arg(long, default_value = "vxlan")]
        backend: BackendType,
        /// vxlan only: host-gw routes to peers on the same L2 segment.
        #[arg(long)]
        direct_routing: bool,
        /// Put every node on its own L3 subnet behind a router.
        #[arg(long)]
        routed: bool,
        #[arg(long, default_value = "10.244.0.0/16")]
        cidr: String,
        #[arg(long)]
        ipv6_cidr: Option<String>,
        /// Run a real control plane: Node objects, the real operator and one agent per node.
        #[arg(long)]
        control_plane: bool,
    },
    /// The NodeSubnets and the connectivity matrix.
    Status {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Change the backend while a 100/s ping flow runs; print loss and the longest gap.
    Switch {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long)]
        backend: BackendType,
        #[arg(long)]
        direct_routing: Option<bool>,
    },
    /// Stop the agents and start them again while a 100/s ping flow runs; print loss.
    Restart {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Remove everything the lab created (also leftovers of a crashed lab).
    Down {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Throughput per backend against the raw underlay and kernel VXLAN; programming speed; memory.
    Bench {
        #[arg(long, default_value = "bench/out")]
        out: PathBuf,
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Only the peer-programming comparison (Tartan against `ip -batch`), printed.
        #[arg(long)]
        programming_only: bool,
        #[command(flatten)]
        scale: ScaleArgs,
    },
    /// (internal) The agents daemon `up` starts.
    #[command(hide = true)]
    Agents {
        #[arg(long)]
        name: String,
    },
    /// (internal) The datapath keepers `up` starts beside the agents.
    #[command(hide = true)]
    Keeper {
        #[arg(long)]
        name: String,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Up {
            name,
            nodes,
            pods_per_node,
            backend,
            direct_routing,
            routed,
            cidr,
            ipv6_cidr,
            control_plane,
        } => {
            if nodes < 2 {
                bail!("--nodes: a lab needs at least 2 nodes, got {nodes}");
            }
            let mut network = OverlayNetworkSpec::with_cidr(cidr);
            network.ipv6_cidr = ipv6_cidr;
            network.backend.type_ = backend;
            network.backend.vxlan.direct_routing = direct_routing;
            let lab = lifecycle::up(UpOptions {
                name: name.clone(),
                nodes,
                pods_per_node,
                network,
                routed,
                control_plane,
                udp: Default::default(),
            })?;
            // Without a control plane the lab's agents converge in rounds
            // before `up` returns: one measurement is the truth.
            let (text, failures) = if control_plane {
                lifecycle::settled_status(&name, std::time::Duration::from_secs(30))?
            } else {
                lifecycle::status(&name)?
            };
            println!(
                "lab {name:?} is up: {} nodes, {} pods, backend {backend}{}\n",
                lab.nodes.len(),
                lab.pods.len(),
                if routed { ", routed underlay" } else { "" }
            );
            println!("{text}");
            println!("{}", lifecycle::how_to_look_around(&lab));
            if let Some(kubeconfig) = crate::state::AgentsReport::load(&name)
                .ok()
                .and_then(|r| r.kubeconfig)
            {
                let kubectl = tartan_harness::cluster::binaries_dir().join("kubectl");
                let kubectl = kubectl.canonicalize().unwrap_or(kubectl);
                println!("a real control plane runs the operator and one agent per node:");
                println!("  export KUBECONFIG={kubeconfig}");
                println!("  alias kubectl={}", kubectl.display());
                println!("  kubectl get nodesubnets");
                println!(
                    "  kubectl patch overlaynetwork default --type merge -p '{{\"spec\":{{\"backend\":{{\"type\":\"host-gw\"}}}}}}'"
                );
            }
            if failures > 0 {
                bail!("{failures} paths do not work");
            }
            Ok(())
        }
        LabCommand::Status { name } => {
            let (text, failures) = lifecycle::status(&name)?;
            println!("{text}");
            if failures > 0 {
                bail!("{failures} paths do not work");
            }
            Ok(())
        }
        LabCommand::Switch {
            name,
            backend,
            direct_routing,
        } => {
            let result = crate::switch::switch(&name, backend, direct_routing)?;
            println!(
                "switched {} -> {} in {} rounds: {} sent, {} lost, longest gap {:?}",
                result.from,
                result.to,
                result.rounds,
                result.sent,
                result.lost(),
                result.longest_gap
            );
            Ok(())
        }
        LabCommand::Restart { name } => {
            let result = crate::restart::restart(&name)?;
            println!(
                "restarted the agents in {:?}: {} sent, {} lost, longest gap {:?}",
                result.down_for,
                result.sent,
                result.sent.saturating_sub(result.received),
                result.longest_gap
            );
            Ok(())
        }
        LabCommand::Down { name } => {
            let removed = lifecycle::down(&name)?;
            println!("lab {name:?} removed ({removed} namespaces)");
            Ok(())
        }
        LabCommand::Bench {
            scale: scale @ ScaleArgs {
                scale: Some(nodes), ..
            },
            out,
            ..
        } => {
            let md = crate::bench::scale::run(scale.options(nodes, out.clone())?)?;
            println!(
                "{md}\nwritten to {}/scale-{nodes}.json and .md",
                out.display()
            );
            Ok(())
        }
        LabCommand::Bench {
            programming_only: true,
            ..
        } => {
            println!("{}", crate::bench::run_programming()?);
            Ok(())
        }
        LabCommand::Bench { out, seconds, .. } => {
            let md = crate::bench::run(&out, seconds)?;
            println!("{md}\nwritten to {}", out.display());
            Ok(())
        }
        LabCommand::Cluster { action } => {
            use crate::cluster;
            let out = match action {
                ClusterAction::Up { name, nodes } => cluster::up(&name, usize::from(nodes))?,
                ClusterAction::Status { name } => cluster::status(&name)?,
                ClusterAction::Down { name } => cluster::down(&name)?,
                ClusterAction::Serve { name, nodes } => {
                    cluster::serve(&name, usize::from(nodes))?;
                    String::new()
                }
            };
            print!("{out}");
            Ok(())
        }
        LabCommand::Agents { name } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
            crate::agents::run(&name)
        }
        LabCommand::Keeper { name } => {
            let _ = tracing_subscriber::fmt().try_init();
            crate::keeper::run(&name)
        }
    }
}
