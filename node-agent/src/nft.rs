//! Running `nft` in a network namespace: JSON in on stdin, JSON out. Shared
//! by Tartan's nftables tables that change element by element (NetworkPolicy,
//! the pod source check); the masquerade table goes through the `nftables`
//! crate, as it is only ever replaced whole.

use std::io::Write as _;
use std::process::Stdio;

use crate::netns::NetNs;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the transaction ({status}): {stderr}")]
    Refused { status: String, stderr: String },
    #[error("nft printed what is not JSON: {0}")]
    Output(#[source] serde_json::Error),
}

pub fn nft(netns: &NetNs, args: &[&str], input: Option<&str>) -> Result<String, NftError> {
    let mut command = netns.command("nft").map_err(NftError::Spawn)?;
    command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(NftError::Spawn)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).map_err(NftError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(NftError::Spawn)?;
    if !output.status.success() {
        return Err(NftError::Refused {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
