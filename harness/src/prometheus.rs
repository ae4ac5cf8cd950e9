//! A real Prometheus scraping a cluster the way a user's would (built by
//! tests/control-plane/build.sh: Debian's lacks Kubernetes discovery):
//! Kubernetes service discovery against the API server, keeping the
//! endpoints of Tartan's metrics Services; queried over its HTTP API.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cluster::ControlPlane;
use crate::process::Process;

pub struct Prometheus {
    pub port: u16,
    log: std::path::PathBuf,
    process: Process,
}

impl Prometheus {
    /// Scrapes every 2 s the endpoints of the `*-metrics` Services in `namespace`.
    pub fn start(cp: &ControlPlane, namespace: &str, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("data"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let tls = format!(
            "{{ca_file: {}, cert_file: {}, key_file: {}}}",
            cp.ca.display(),
            cp.dir.join("admin.crt").display(),
            cp.dir.join("admin.key").display()
        );
        let config = format!(
            r#"global: {{scrape_interval: 2s, evaluation_interval: 2s}}
scrape_configs:
  - job_name: tartan
    kubernetes_sd_configs:
      - role: endpointslice
        api_server: {server}
        tls_config: {tls}
        namespaces: {{names: [{namespace}]}}
    relabel_configs:
      - source_labels: [__meta_kubernetes_service_name]
        regex: '.+-(agent|operator)-metrics'
        action: keep
      - source_labels: [__meta_kubernetes_endpointslice_port_name]
        regex: metrics
        action: keep
      - source_labels: [__meta_kubernetes_service_label_app_kubernetes_io_component]
        target_label: component
      - source_labels: [__meta_kubernetes_pod_node_name]
        target_label: node
"#,
            server = cp.server,
        );
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config)?;
        let process = Process::spawn(
            "prometheus",
            &crate::cluster::binaries_dir().join("prometheus"),
            &[
                format!("--config.file={}", file.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--log.level=info".to_string(),
            ],
            &dir.join("prometheus.log"),
            &[],
        )?;
        Ok(Self {
            port,
            log: dir.join("prometheus.log"),
            process,
        })
    }

    /// The result of an instant query (`data.result`), as JSON.
    pub fn query(&mut self, expr: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        if !self.process.alive() {
            bail!("prometheus exited");
        }
        let output = std::process::Command::new("curl")
            .args(["-sfG", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .arg("--data-urlencode")
            .arg(format!("query={expr}"))
            .output()
            .context("running curl")?;
        if !output.status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "querying {expr:?}: curl {}; prometheus says: {tail:?}",
                output.status
            );
        }
        let body: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The scrape targets and their health (`up`), by `component` and `node`.
    pub fn targets_up(&mut self) -> anyhow::Result<Vec<(String, String, f64)>> {
        Ok(self
            .query("up")?
            .iter()
            .map(|s| {
                let label = |k: &str| s["metric"][k].as_str().unwrap_or_default().to_string();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                (label("component"), label("node"), value)
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(2));
    }
}
