//! The Secrets that hold BGP passwords (`passwordSecretRef`): each watched
//! by name in the agent's namespace, and only while the OverlayNetwork
//! refers to it. RBAC grants `get`/`list`/`watch` on exactly those names
//! (a single-object watch is a list and watch with a `metadata.name` field
//! selector, which RBAC's `resourceNames` allows); the agent reads no other
//! Secret. What is kept is the data, each value as a [`Password`], which
//! never prints; the Secret's metadata is dropped on arrival.
//!
//! At 5,000 nodes a password change is one event per agent: the same fan-out
//! as the kubelet's watch of a Secret mounted into every agent pod, without
//! tying the Secret names to the pod spec.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tartan_crds::validate::valid_bgp_password;
use tartan_crds::{SecretKeyRef, ValidNetwork};

use super::Sink;
use crate::plan::{Password, PasswordLookup};

/// One Secret as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SecretState {
    /// Its watch has not answered yet.
    #[default]
    Unread,
    /// The API server says there is no such Secret.
    Missing,
    /// The watch fails (RBAC, say) and nothing has been read.
    Unreadable(String),
    /// Its data, by key.
    Read(BTreeMap<String, Password>),
}

/// The Secret names `network`'s BGP peers refer to.
pub fn referenced(network: &ValidNetwork) -> BTreeSet<String> {
    (network.backend.bgp.peers.iter())
        .filter_map(|p| Some(p.password_secret_ref.as_ref()?.name.clone()))
        .collect()
}

/// Each peer's password as `secrets` hold it, or why there is none, naming
/// the Secret (with its namespace) and the key, never the value.
pub fn lookup(
    network: &ValidNetwork,
    secrets: &BTreeMap<String, SecretState>,
    namespace: &str,
) -> BTreeMap<SecretKeyRef, PasswordLookup> {
    let refs = (network.backend.bgp.peers.iter()).filter_map(|p| p.password_secret_ref.clone());
    refs.map(|r| {
        let found = password(&r, secrets.get(&r.name), namespace);
        (r, found)
    })
    .collect()
}

fn password(r: &SecretKeyRef, state: Option<&SecretState>, namespace: &str) -> PasswordLookup {
    let secret = format!("Secret {namespace}/{}", r.name);
    let data = match state.unwrap_or(&SecretState::Unread) {
        SecretState::Unread => return Err(format!("{secret} not read yet")),
        SecretState::Missing => return Err(format!("{secret} not found (key {})", r.key)),
        SecretState::Unreadable(why) => return Err(format!("{secret} cannot be read: {why}")),
        SecretState::Read(data) => data,
    };
    let value = data
        .get(&r.key)
        .ok_or_else(|| format!("{secret} has no key {}", r.key))?;
    if !valid_bgp_password(value.expose()) {
        return Err(format!(
            "{secret} key {}: not a usable password (1 to 80 printable ASCII characters \
             without spaces, quotes or backslashes)",
            r.key
        ));
    }
    Ok(value.clone())
}

/// A Secret's data as passwords: UTF-8 (lossy), trailing whitespace trimmed
/// (a Secret made with `--from-file` often ends in a newline).
fn data(secret: Secret) -> BTreeMap<String, Password> {
    (secret.data.unwrap_or_default().into_iter())
        .map(|(key, value)| {
            let text = String::from_utf8_lossy(&value.0).trim_end().to_string();
            (key, Password::new(text))
        })
        .collect()
}

/// The running watches, one per referenced Secret.
pub struct BgpSecrets {
    client: Client,
    namespace: String,
    sink: Sink,
    watches: BTreeMap<String, tokio::task::JoinHandle<()>>,
}

impl BgpSecrets {
    pub fn new(client: Client, namespace: String, sink: Sink) -> Self {
        BgpSecrets {
            client,
            namespace,
            sink,
            watches: BTreeMap::new(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Watches exactly the Secrets `network` refers to: new ones start,
    /// ones no longer referred to stop and are forgotten.
    pub fn follow(&mut self, network: &ValidNetwork) {
        let wanted = referenced(network);
        let gone: Vec<String> = (self.watches.keys())
            .filter(|name| !wanted.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(task) = self.watches.remove(&name) {
                task.abort();
            }
            self.sink.lock().forget_secret(&name);
        }
        for name in wanted {
            if !self.watches.contains_key(&name) {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
                let task = tokio::spawn(watch_secret(api, name.clone(), self.sink.clone()));
                self.watches.insert(name, task);
            }
        }
    }
}

impl Drop for BgpSecrets {
    fn drop(&mut self) {
        for task in self.watches.values() {
            task.abort();
        }
    }
}

/// Follows one Secret by name into the index; a change wakes the agent.
async fn watch_secret(api: Api<Secret>, name: String, sink: Sink) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut seen_in_list = false;
    while let Some(event) = events.next().await {
        let state = match event {
            Ok(watcher::Event::Init) => {
                seen_in_list = false;
                continue;
            }
            Ok(watcher::Event::InitApply(secret)) => {
                seen_in_list = true;
                SecretState::Read(data(secret))
            }
            Ok(watcher::Event::InitDone) if seen_in_list => continue,
            Ok(watcher::Event::InitDone) | Ok(watcher::Event::Delete(_)) => SecretState::Missing,
            Ok(watcher::Event::Apply(secret)) => SecretState::Read(data(secret)),
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "watching a BGP password Secret; retrying");
                // What was read stays in use while the API is unreachable.
                let known = matches!(sink.lock().secret(&name), Some(SecretState::Read(_)));
                if known {
                    continue;
                }
                SecretState::Unreadable(e.to_string())
            }
        };
        if sink.lock().set_secret(&name, state) {
            sink.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network_with(reference: SecretKeyRef) -> ValidNetwork {
        let mut spec = tartan_crds::OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        let mut peer = tartan_crds::BgpPeer::new("192.0.2.1", 65000);
        peer.password_secret_ref = Some(reference);
        spec.backend.bgp.peers = vec![peer];
        spec.validate().expect("valid")
    }

    #[test]
    fn every_way_a_password_can_be_missing_names_the_secret_and_the_key() {
        let reference = SecretKeyRef {
            name: "bgp-tor".into(),
            key: "password".into(),
        };
        let network = network_with(reference.clone());
        assert_eq!(
            referenced(&network),
            BTreeSet::from(["bgp-tor".to_string()])
        );
        let with = |state: SecretState| {
            let secrets = BTreeMap::from([("bgp-tor".to_string(), state)]);
            lookup(&network, &secrets, "tartan-system")[&reference].clone()
        };
        let read = |key: &str, value: &str| {
            SecretState::Read(BTreeMap::from([(
                key.to_string(),
                Password::new(value.into()),
            )]))
        };
        assert_eq!(
            with(SecretState::Missing),
            Err("Secret tartan-system/bgp-tor not found (key password)".into())
        );
        assert_eq!(
            with(read("other", "s3cret")),
            Err("Secret tartan-system/bgp-tor has no key password".into())
        );
        let invalid = with(read("password", "x7Q\"; evil")).expect_err("invalid");
        assert!(
            invalid.contains("key password: not a usable password"),
            "{invalid}"
        );
        assert!(
            !invalid.contains("x7Q"),
            "the value is never shown: {invalid}"
        );
        assert!(with(SecretState::Unread).is_err());
        assert!(with(SecretState::Unreadable("forbidden".into())).is_err());
        assert_eq!(
            with(read("password", "s3cret")),
            Ok(Password::new("s3cret".into()))
        );
    }

    #[test]
    fn a_trailing_newline_is_not_part_of_the_password() {
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "password".to_string(),
                k8s_openapi::ByteString(b"s3cret\n".to_vec()),
            )])),
            ..Default::default()
        };
        assert_eq!(data(secret)["password"], Password::new("s3cret".into()));
    }
}
