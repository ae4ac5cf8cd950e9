//! The configuration files of a node's containerd, kubelet and kube-proxy.
//! Pure text from the node's facts; what each setting is for is said where
//! it is not the component's default.

use std::path::{Path, PathBuf};

use crate::node::{NodeSpec, SANDBOX_IMAGE};

/// The node's containerd socket.
pub fn socket(dir: &Path) -> PathBuf {
    dir.join("containerd/containerd.sock")
}

/// containerd 2.x (config version 3): its own root, state, socket and runc
/// root, so two nodes' runtimes never see each other's containers.
pub fn containerd(dir: &Path, runc: &Path) -> String {
    let d = |p: &str| dir.join(p).display().to_string();
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

# containerd 2 unpacks imports only for the snapshotters listed here.
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "native"

[plugins."io.containerd.cri.v1.images"]
  # The host's filesystem may itself be an overlay: copy-based snapshots work everywhere.
  snapshotter = "native"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox}"

[plugins."io.containerd.cri.v1.runtime"]
  # Root here lacks CAP_SYS_RESOURCE: never lower a container's oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{runc_root}"
        SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        root = d("containerd/root"),
        state = d("containerd/state"),
        socket = socket(dir).display(),
        sandbox = SANDBOX_IMAGE,
        runc = runc.display(),
        runc_root = d("runc"),
    )
}

/// The kubelet on a shared host: cgroup v1 with cgroupfs under its own
/// root, no swap check, image GC and eviction effectively off (the host's
/// disk is shared with everything else), its own log dir.
pub fn kubelet(node: &NodeSpec, cgroup_root: &str, ca: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "{ip}"
readOnlyPort: 0
healthzBindAddress: "127.0.0.1"
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: "{ca}"}}
authorization: {{mode: AlwaysAllow}}
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: "/{cgroup_root}"
failSwapOn: false
containerRuntimeEndpoint: "unix://{socket}"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
localStorageCapacityIsolation: false
serializeImagePulls: false
maxPods: 32
resolvConf: "/etc/resolv.conf"
"#,
        ip = node.ip,
        ca = ca.display(),
        socket = socket(&node.dir).display(),
    )
}

/// kube-proxy in nftables mode, leaving the host-wide conntrack sysctls alone.
pub fn kube_proxy(node: &NodeSpec, kubeconfig: &Path) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {{kubeconfig: "{kubeconfig}"}}
hostnameOverride: "{name}"
clusterCIDR: "{cidr}"
metricsBindAddress: "127.0.0.1:10249"
healthzBindAddress: "127.0.0.1:10256"
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"#,
        kubeconfig = kubeconfig.display(),
        name = node.name,
        cidr = node.cluster_cidr,
    )
}
