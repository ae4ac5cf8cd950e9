//! Starting and stopping the control plane.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::pki;
use crate::process::Process;

/// The Kubernetes release the control plane is built from (tests/control-plane/kube/go.mod).
pub const VERSION: &str = "v1.37.2";

pub fn binaries_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TARTAN_CONTROL_PLANE_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/control-plane")
        .join(VERSION)
}

/// Fails the (ignored, explicitly run) test when a control-plane binary is
/// missing: an end-to-end test that cannot run must never report as passed.
pub fn require_binaries() {
    let missing: Vec<&str> = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
        "helm",
    ]
    .into_iter()
    .filter(|b| !binaries_dir().join(b).exists())
    .collect();
    assert!(
        missing.is_empty(),
        "control plane binaries missing in {}: {missing:?} (make deps builds them)",
        binaries_dir().display()
    );
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How much of a control plane to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve the API on this host address (reachable from node namespaces,
    /// and the `kubernetes` Service's endpoint) instead of loopback only.
    pub address: Option<std::net::Ipv4Addr>,
    /// What real workloads need: the workload controllers, the root CA
    /// publisher (`kube-root-ca.crt`), endpoint slices, node lifecycle, and
    /// kube-scheduler. Without it only what the operator and agents use runs.
    pub workloads: bool,
    /// Only etcd and kube-apiserver, no kube-controller-manager: a benchmark
    /// that counts API writes wants no controller writing to its objects.
    pub api_only: bool,
    /// Where the binaries are, instead of [`binaries_dir`].
    pub binaries: Option<PathBuf>,
    /// More kube-apiserver flags (a benchmark raising its in-flight limits).
    pub apiserver_args: Vec<String>,
}

/// The ClusterIP range of Services; the `kubernetes` Service takes the first address.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

// The admission policy status controller type-checks the agent's policy.
const MINIMAL_CONTROLLERS: &str = "garbagecollector,namespace,serviceaccount,serviceaccount-token,\
validatingadmissionpolicy-status-controller";
const WORKLOAD_CONTROLLERS: &str = "garbagecollector,namespace,serviceaccount,serviceaccount-token,\
validatingadmissionpolicy-status-controller,\
root-ca-cert-publisher,daemonset,deployment,replicaset,job,endpointslice,endpointslicemirroring,\
nodelifecycle,ttl-after-finished,disruption,podgc";

pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    /// The CA every component and client trusts.
    pub ca: PathBuf,
    // Order matters for drop: the scheduler and controller manager, then the API server, then etcd.
    scheduler: Process,
    controller_manager: Process,
    apiserver: Process,
    etcd: Process,
    apiserver_args: Vec<String>,
    bin: PathBuf,
    keep_dir: bool,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until ready.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        Self::start_in(
            std::env::temp_dir().join(format!("tartan-cp-{name}-{}", std::process::id())),
        )
        .await
    }

    /// Like [`start`](Self::start), with its files in `dir`.
    pub async fn start_in(dir: PathBuf) -> anyhow::Result<Self> {
        Self::start_with(dir, Options::default()).await
    }

    /// A control plane with `options`, its files in `dir`.
    pub async fn start_with(dir: PathBuf, options: Options) -> anyhow::Result<Self> {
        let bin = options.binaries.clone().unwrap_or_else(binaries_dir);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etcd"))?;
        let sans: Vec<String> = options
            .address
            .iter()
            .map(|a| a.to_string())
            .chain(std::iter::once(KUBERNETES_SERVICE_IP.to_string()))
            .collect();
        let pki = pki::generate(&sans).context("generating certificates")?;
        let write = |file: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(file);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        let ca = write("ca.crt", &pki.ca_pem)?;
        // For clients configured by file rather than kubeconfig (Prometheus).
        write("admin.crt", &pki.admin_cert_pem)?;
        write("admin.key", &pki.admin_key_pem)?;
        let server_crt = write("apiserver.crt", &pki.server_cert_pem)?;
        let server_key = write("apiserver.key", &pki.server_key_pem)?;
        let sa_key = write("sa.key", &pki.sa_private_pem)?;
        let sa_pub = write("sa.pub", &pki.sa_public_pem)?;
        let (client_port, peer_port, secure_port) = (free_port()?, free_port()?, free_port()?);

        let s = |v: &str| v.to_string();
        let etcd = Process::spawn(
            "etcd",
            &bin.join("etcd"),
            &[
                s("--name=e2e"),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=e2e=http://127.0.0.1:{peer_port}"),
                s("--unsafe-no-fsync"),
                s("--log-level=warn"),
            ],
            &dir.join("etcd.log"),
            &[],
        )?;
        let host = options
            .address
            .map_or_else(|| "127.0.0.1".to_string(), |a| a.to_string());
        let server = format!("https://{host}:{secure_port}");
        let mut apiserver_args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{client_port}"),
            format!("--bind-address={host}"),
            format!("--advertise-address={host}"),
            // The `kubernetes` Service points at the API server only when
            // something can reach it there.
            format!(
                "--endpoint-reconciler-type={}",
                if options.address.is_some() {
                    "lease"
                } else {
                    "none"
                }
            ),
            format!("--secure-port={secure_port}"),
            format!("--tls-cert-file={}", server_crt.display()),
            format!("--tls-private-key-file={}", server_key.display()),
            format!("--client-ca-file={}", ca.display()),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            s("--service-account-issuer=https://kubernetes.default.svc"),
            s("--authorization-mode=RBAC"),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            s("--allow-privileged=true"),
            // Nodes are found by address: their names do not resolve.
            s("--kubelet-preferred-address-types=InternalIP,Hostname"),
            s("--enable-priority-and-fairness=false"),
            s("--v=1"),
        ];
        apiserver_args.extend(options.apiserver_args.iter().cloned());
        let apiserver = Process::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &apiserver_args,
            &dir.join("kube-apiserver.log"),
            &[],
        )?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, admin_kubeconfig(&server, &pki))?;
        let mut cp = Self {
            dir,
            kubeconfig,
            server,
            ca: ca.clone(),
            scheduler: Process::placeholder(),
            controller_manager: Process::placeholder(),
            apiserver,
            etcd,
            apiserver_args,
            bin: bin.clone(),
            keep_dir: false,
        };
        cp.wait_ready(Duration::from_secs(120)).await?;
        if options.api_only {
            return Ok(cp);
        }
        cp.controller_manager = Process::spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", cp.kubeconfig.display()),
                format!(
                    "--controllers={}",
                    if options.workloads {
                        WORKLOAD_CONTROLLERS
                    } else {
                        MINIMAL_CONTROLLERS
                    }
                ),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                s("--leader-elect=false"),
                format!("--service-account-private-key-file={}", sa_key.display()),
                format!("--root-ca-file={}", ca.display()),
                s("--bind-address=127.0.0.1"),
                s("--secure-port=0"),
                s("--v=1"),
            ],
            &cp.dir.join("kube-controller-manager.log"),
            &[],
        )?;
        if options.workloads {
            cp.scheduler = Process::spawn(
                "kube-scheduler",
                &bin.join("kube-scheduler"),
                &[
                    format!("--kubeconfig={}", cp.kubeconfig.display()),
                    s("--leader-elect=false"),
                    s("--bind-address=127.0.0.1"),
                    format!("--secure-port={}", free_port()?),
                    s("--v=1"),
                ],
                &cp.dir.join("kube-scheduler.log"),
                &[],
            )?;
        }
        Ok(cp)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let client = self.client().await?;
        loop {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(text) = client.request_text(request).await
                && text.trim() == "ok"
            {
                return Ok(());
            }
            if !self.apiserver.alive() || !self.etcd.alive() {
                bail!(
                    "the control plane died:\n--- etcd ---\n{}\n--- kube-apiserver ---\n{}",
                    self.log_tail("etcd.log"),
                    self.log_tail("kube-apiserver.log")
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "kube-apiserver not ready within {timeout:?}:\n{}",
                    self.log_tail("kube-apiserver.log")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kube-apiserver's process id (a benchmark reads its memory).
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.pid()
    }

    /// Stops kube-apiserver (the API becomes unreachable); etcd keeps the data.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop(Duration::from_secs(5));
    }

    /// Starts kube-apiserver again with the same flags and waits until ready.
    pub async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        self.apiserver = Process::spawn(
            "kube-apiserver",
            &self.bin.join("kube-apiserver"),
            &self.apiserver_args,
            &self.dir.join("kube-apiserver-restarted.log"),
            &[],
        )?;
        self.wait_ready(Duration::from_secs(120)).await
    }

    pub fn log_tail(&self, file: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// An admin client (system:masters).
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_for(&self.kubeconfig, None).await
    }

    /// A client that impersonates `user` (e.g. a ServiceAccount), with the admin's credentials.
    pub async fn impersonating(&self, user: &str) -> anyhow::Result<Client> {
        client_for(&self.kubeconfig, Some(user)).await
    }

    /// A kubeconfig file that impersonates `user`, for the binaries under test.
    pub fn kubeconfig_as(&self, user: &str, file: &str) -> anyhow::Result<PathBuf> {
        self.kubeconfig_edited(file, |user_entry| {
            user_entry["as"] = serde_yaml::Value::String(user.to_string());
        })
    }

    /// A kubeconfig file that authenticates only with the bearer token in
    /// `token_file` (re-read as it is renewed), as an in-cluster client does.
    pub fn kubeconfig_with_token_file(
        &self,
        token_file: &Path,
        file: &str,
    ) -> anyhow::Result<PathBuf> {
        self.kubeconfig_edited(file, |user_entry| {
            let mut user = serde_yaml::Mapping::new();
            user.insert("tokenFile".into(), token_file.display().to_string().into());
            *user_entry = serde_yaml::Value::Mapping(user);
        })
    }

    /// A client that authenticates only with `token`.
    pub async fn client_with_token(&self, token: &str, file: &str) -> anyhow::Result<Client> {
        let path = self.dir.join(format!("{file}.token"));
        std::fs::write(&path, token)?;
        let kubeconfig = self.kubeconfig_with_token_file(&path, &format!("{file}.kubeconfig"))?;
        client_for(&kubeconfig, None).await
    }

    /// The admin kubeconfig with its user entry changed by `edit`, as `file`.
    fn kubeconfig_edited(
        &self,
        file: &str,
        edit: impl FnOnce(&mut serde_yaml::Value),
    ) -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let mut config: serde_yaml::Value = serde_yaml::from_str(&text)?;
        edit(&mut config["users"][0]["user"]);
        let path = self.dir.join(file);
        // Written whole and renamed: a process starting meanwhile never reads half a file.
        tartan_runtime::atomic_file::write_atomic(
            &path,
            serde_yaml::to_string(&config)?.as_bytes(),
        )?;
        Ok(path)
    }

    /// Runs the real kubectl against this control plane.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let output = std::process::Command::new(binaries_dir().join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .context("running kubectl")?;
        Ok(output)
    }

    /// Keeps the temporary directory (logs) after drop, for a person to read.
    pub fn keep_files(&mut self) {
        self.keep_dir = true;
    }
}

async fn client_for(kubeconfig: &Path, impersonate: Option<&str>) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    if let Some(user) = impersonate {
        config.auth_info.impersonate = Some(user.to_string());
    }
    Ok(Client::try_from(config)?)
}

fn admin_kubeconfig(server: &str, pki: &pki::Pki) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: admin\ncurrent-context: e2e\n",
        b64(&pki.ca_pem),
        b64(&pki.admin_cert_pem),
        b64(&pki.admin_key_pem)
    )
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.scheduler.stop(Duration::from_secs(2));
        self.controller_manager.stop(Duration::from_secs(2));
        self.apiserver.stop(Duration::from_secs(5));
        self.etcd.stop(Duration::from_secs(2));
        if std::thread::panicking() {
            for log in ["kube-apiserver.log", "kube-controller-manager.log"] {
                eprintln!("--- last lines of {log} ---\n{}", self.log_tail(log));
            }
        }
        if !self.keep_dir && std::env::var_os("TARTAN_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
