//! Test-only: a real Kubernetes control plane for Tartan's end-to-end tests and the lab:
//! etcd on a temporary directory and loopback ports, kube-apiserver with real
//! TLS, service-account keys and RBAC, kube-controller-manager (the garbage
//! collector among its controllers); an admin kubeconfig; torn down, processes
//! and files, when the [`ControlPlane`] drops (also on a failing test). With
//! [`cluster::Options`] it serves the API on the lab's switch and runs what
//! real workloads need, and [`node::KubeletNode`] adds real nodes: containerd,
//! kubelet and kube-proxy in a node's namespaces.
//!
//! The binaries are built by `tests/control-plane/build.sh` into
//! `target/control-plane/<version>/`.

pub mod cluster;
pub mod echo;
pub mod kubelet_cluster;
pub mod node;
pub mod node_config;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod setup;
pub mod token;

pub use cluster::{ControlPlane, binaries_dir, require_binaries};
