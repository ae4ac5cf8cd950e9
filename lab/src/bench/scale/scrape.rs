//! Reading a `/metrics` page: kube-apiserver's through the admin client,
//! an agent's over plain HTTP on loopback (a dozen lines of HTTP/1.1 rather
//! than an HTTP client dependency for one GET).

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// kube-apiserver's own metrics.
pub async fn apiserver(client: &kube::Client) -> anyhow::Result<String> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .context("building the /metrics request")?;
    client
        .request_text(request)
        .await
        .context("GET kube-apiserver /metrics")
}

/// `GET /metrics` from a process listening on `addr`.
pub async fn metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .with_context(|| format!("reading /metrics from {addr}"))?;
    body(&raw).with_context(|| format!("/metrics from {addr}"))
}

/// The body of a whole HTTP/1.1 response, de-chunked when it is chunked.
pub fn body(raw: &[u8]) -> anyhow::Result<String> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("no end of the response headers")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("answered {status:?}");
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok(rest.to_string());
    }
    let mut out = String::new();
    let mut rest = rest;
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .context("a chunk without its size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("a bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).context("a chunk cut short")?;
        out.push_str(chunk);
        rest = after.get(size + 2..).context("a chunk without its end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nm 1\n\n";
        assert_eq!(body(plain).expect("plain"), "m 1\n\n");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nm 1\n\r\n4\r\nn 2\n\r\n0\r\n\r\n";
        assert_eq!(body(chunked).expect("chunked"), "m 1\nn 2\n");
    }

    #[test]
    fn errors_are_errors() {
        assert!(body(b"HTTP/1.1 404 Not Found\r\n\r\nnope").is_err());
        assert!(body(b"HTTP/1.1 200 OK\r\n").is_err());
        let short = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nm 1\n";
        assert!(body(short).is_err());
    }
}
