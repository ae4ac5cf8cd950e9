//! `10-tartan.conflist`: the CNI configuration kubelet's runtime reads, for the
//! reference plugins `bridge` (cni0, gateway, hairpin, MTU; masquerade is the
//! agent's, so `ipMasq` is off), `host-local` IPAM over the node's subnet(s)
//! and `portmap`. Written atomically, and only when its content would change.
//! (`loopback` is installed beside them; runtimes call it on their own.)

use std::io;
use std::path::PathBuf;

use serde_json::{Value, json};
use tartan_crds::ValidNodeSubnet;
use tartan_runtime::atomic_file::write_atomic;

use crate::plan::{BRIDGE, gateway};

pub const FILE_NAME: &str = "10-tartan.conflist";
pub const NETWORK_NAME: &str = "tartan";

#[derive(Debug, Clone)]
pub struct CniConfig {
    /// Directory of the conflist (`/etc/cni/net.d`).
    pub dir: PathBuf,
    /// host-local's state directory; `None` keeps the plugin's default.
    pub ipam_data_dir: Option<PathBuf>,
    /// The agent's socket when the pod source check is on: the `tartan`
    /// plugin is chained after `bridge` and binds each pod's port there.
    pub source_check: Option<PathBuf>,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/etc/cni/net.d"),
            ipam_data_dir: None,
            source_check: None,
        }
    }
}

impl CniConfig {
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The conflist for this node.
    pub fn render(&self, subnet: &ValidNodeSubnet, mtu: u32) -> Value {
        let mut ranges = vec![json!([{
            "subnet": subnet.cidr.to_string(),
            "gateway": gateway(ipnet::IpNet::V4(subnet.cidr)).addr().to_string(),
        }])];
        if let Some(v6) = subnet.ipv6_cidr {
            ranges.push(json!([{
                "subnet": v6.to_string(),
                "gateway": gateway(ipnet::IpNet::V6(v6)).addr().to_string(),
            }]));
        }
        let mut ipam = json!({ "type": "host-local", "ranges": ranges });
        if let Some(dir) = &self.ipam_data_dir {
            ipam["dataDir"] = json!(dir);
        }
        let bridge = json!({
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "isDefaultGateway": true,
            "hairpinMode": true,
            "ipMasq": false,
            "mtu": mtu,
            "ipam": ipam,
        });
        let mut plugins = vec![bridge];
        if let Some(socket) = &self.source_check {
            plugins.push(json!({
                "type": crate::guard::PLUGIN,
                "bridge": BRIDGE,
                "socket": socket,
            }));
        }
        plugins.push(
            json!({ "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }),
        );
        json!({
            "cniVersion": "1.0.0",
            "name": NETWORK_NAME,
            "plugins": plugins,
        })
    }

    /// Writes the conflist when it differs (temp file + rename); true when written.
    pub fn write(&self, subnet: &ValidNodeSubnet, mtu: u32) -> io::Result<bool> {
        let content = serde_json::to_string_pretty(&self.render(subnet, mtu))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        write_atomic(&self.path(), content.as_bytes())
    }

    /// Removes the conflist (cleanup); true when there was one.
    pub fn remove(&self) -> io::Result<bool> {
        match std::fs::remove_file(self.path()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(ipv6: bool) -> ValidNodeSubnet {
        ValidNodeSubnet {
            node_name: "a".into(),
            network: "default".into(),
            cidr: "10.244.3.0/24".parse().expect("cidr"),
            ipv6_cidr: ipv6.then(|| "fd00:10:244:3::/64".parse().expect("cidr")),
        }
    }

    #[test]
    fn renders_bridge_host_local_and_portmap() {
        let config = CniConfig {
            dir: "/x".into(),
            ipam_data_dir: Some("/var/lib/tartan/ipam".into()),
            source_check: None,
        };
        let conf = config.render(&subnet(true), 1450);
        assert_eq!(conf["cniVersion"], "1.0.0");
        let bridge = &conf["plugins"][0];
        assert_eq!(
            (bridge["type"].as_str(), bridge["bridge"].as_str()),
            (Some("bridge"), Some("cni0"))
        );
        assert_eq!(
            (
                bridge["ipMasq"].as_bool(),
                bridge["hairpinMode"].as_bool(),
                bridge["mtu"].as_u64()
            ),
            (Some(false), Some(true), Some(1450))
        );
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.244.3.0/24");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["gateway"], "10.244.3.1");
        assert_eq!(
            bridge["ipam"]["ranges"][1][0]["gateway"],
            "fd00:10:244:3::1"
        );
        assert_eq!(bridge["ipam"]["dataDir"], "/var/lib/tartan/ipam");
        assert_eq!(conf["plugins"][1]["type"], "portmap");
        let checked = CniConfig {
            source_check: Some("/run/tartan/cni.sock".into()),
            ..config
        };
        let conf = checked.render(&subnet(false), 1450);
        let types: Vec<&str> = (conf["plugins"].as_array().expect("plugins").iter())
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, vec!["bridge", "tartan", "portmap"]);
        assert_eq!(conf["plugins"][1]["socket"], "/run/tartan/cni.sock");
    }

    #[test]
    fn writes_atomically_and_only_on_change() {
        let dir = std::env::temp_dir().join(format!("tartan-cni-{}", std::process::id()));
        let config = CniConfig {
            dir: dir.clone(),
            ipam_data_dir: None,
            source_check: None,
        };
        assert!(config.write(&subnet(false), 1450).expect("write"));
        assert!(!config.write(&subnet(false), 1450).expect("same"));
        assert!(config.write(&subnet(false), 1400).expect("mtu changed"));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(FILE_NAME)],
            "no temp file left"
        );
        assert!(config.remove().expect("remove"));
        std::fs::remove_dir_all(dir).ok();
    }
}
