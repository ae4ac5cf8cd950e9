//! The table `inet tartan-policy` in the kernel: each change is one
//! `nft -j -f -` transaction, the difference from the state last applied
//! (the kernel's, unless someone changed it by hand: a resync, or any failed
//! transaction, replaces the table whole).

use std::collections::BTreeMap;

use serde_json::Value;

use super::compile::Compiled;
use super::render::{self, GENERATIONS, TABLE};
use crate::netns::NetNs;
pub use crate::nft::NftError;
use crate::nft::nft;

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Incremental,
    Full,
}

pub struct PolicyTable {
    netns: NetNs,
    last: Option<Compiled>,
    generation: u32,
}

impl PolicyTable {
    /// Continues the generation a running table has (a restarted agent must
    /// never reuse one: a connection admitted under it would skip the check).
    pub fn new(netns: NetNs) -> Self {
        let generation = current_generation(&netns).unwrap_or_else(fresh_generation);
        PolicyTable {
            netns,
            last: None,
            generation,
        }
    }

    /// Makes the kernel enforce `compiled`: nothing when it is what was last
    /// applied, else one transaction with the difference (or the whole table).
    pub fn apply(&mut self, compiled: &Compiled) -> Result<Applied, NftError> {
        if self.last.as_ref() == Some(compiled) {
            return Ok(Applied::Unchanged);
        }
        let generation = next(self.generation);
        let applied = match &self.last {
            Some(last) => {
                let delta = render::incremental(last, compiled, generation);
                match nft(&self.netns, &["-j", "-f", "-"], Some(&delta.to_string())) {
                    Ok(_) => Applied::Incremental,
                    Err(e) => {
                        // The kernel is not what we last left: start over, whole.
                        tracing::warn!(error = %e, "incremental policy update refused; replacing the table");
                        self.replace(compiled, generation)?
                    }
                }
            }
            None => self.replace(compiled, generation)?,
        };
        self.generation = generation;
        self.last = Some(compiled.clone());
        Ok(applied)
    }

    fn replace(&mut self, compiled: &Compiled, generation: u32) -> Result<Applied, NftError> {
        self.last = None;
        let full = render::full(compiled, generation);
        nft(&self.netns, &["-j", "-f", "-"], Some(&full.to_string()))?;
        Ok(Applied::Full)
    }

    /// The next apply replaces the table whole (drift repair).
    pub fn resync(&mut self) {
        self.last = None;
    }

    /// Packets dropped so far, by group (the table's named counters).
    pub fn drops(&self) -> Result<BTreeMap<String, u64>, NftError> {
        let args = ["-j", "list", "counters", "table", "inet", TABLE];
        let text = nft(&self.netns, &args, None)?;
        let value: Value = serde_json::from_str(&text).map_err(NftError::Output)?;
        let mut out = BTreeMap::new();
        for item in value["nftables"].as_array().into_iter().flatten() {
            let counter = &item["counter"];
            if let (Some(name), Some(packets)) =
                (counter["name"].as_str(), counter["packets"].as_u64())
            {
                out.insert(name.to_string(), packets);
            }
        }
        Ok(out)
    }
}

/// Removes the table (NetworkPolicy turned off, or cleanup).
pub fn remove(netns: &NetNs) -> Result<(), NftError> {
    let json = serde_json::json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": TABLE}}},
        {"delete": {"table": {"family": "inet", "name": TABLE}}},
    ]});
    nft(netns, &["-j", "-f", "-"], Some(&json.to_string())).map(|_| ())
}

fn next(generation: u32) -> u32 {
    match (generation + 1) % GENERATIONS {
        0 => 1,
        g => g,
    }
}

/// The generation in the running table's `generation` set, if there is one.
fn current_generation(netns: &NetNs) -> Option<u32> {
    let args = ["-j", "list", "set", "inet", TABLE, "generation"];
    let text = nft(netns, &args, None).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    value["nftables"].as_array()?.iter().find_map(|item| {
        let mark = item["set"]["elem"].as_array()?.first()?.as_u64()?;
        u32::try_from(mark >> 8).ok()
    })
}

/// A generation no earlier table on this node is likely to have used.
fn fresh_generation() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = blake3::hash(format!("{nanos}-{}", std::process::id()).as_bytes());
    let bytes = seed.as_bytes();
    next(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]))
}
