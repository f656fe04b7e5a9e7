//! A raw HTTP/1.1 upgrade client over TLS: sends the upgrade request kubectl
//! exec sends, expects `101 Switching Protocols`, then exchanges bytes on
//! the tunnel.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Env;

/// An open tunnel through the proxy.
pub struct Tunnel {
    stream: TlsStream<TcpStream>,
    /// The response head the proxy sent (status line and headers).
    pub response_head: String,
}

/// Opens an upgraded connection to `path` through authproxy.
pub async fn open(env: &Env, path: &str, token: &str, protocol: &str) -> anyhow::Result<Tunnel> {
    let addr = env.proxy.as_ref().context("proxy running")?.addr();
    open_at(addr, "localhost", env.pki.ca_pem(), path, token, protocol).await
}

/// Opens an upgraded connection to `path` of the proxy at `addr`, whose
/// certificate (from the CA `ca_pem`) names `host`.
pub async fn open_at(
    addr: std::net::SocketAddr,
    host: &str,
    ca_pem: &str,
    path: &str,
    token: &str,
    protocol: &str,
) -> anyhow::Result<Tunnel> {
    let config = crate::pki::client_config(ca_pem, &[b"http/1.1"])?;
    let connector = tokio_rustls::TlsConnector::from(Arc::<rustls::ClientConfig>::clone(&config));
    let tcp = TcpStream::connect(addr).await?;
    let mut stream = connector
        .connect(ServerName::try_from(host)?.to_owned(), tcp)
        .await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await??;
        if n == 0 {
            bail!(
                "connection closed before the response head: {}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(byte[0]);
    }
    let response_head = String::from_utf8_lossy(&head).into_owned();
    if !response_head.starts_with("HTTP/1.1 101") {
        bail!("expected 101 Switching Protocols, got:\n{response_head}");
    }
    Ok(Tunnel {
        stream,
        response_head,
    })
}

impl Tunnel {
    /// Writes `message` and reads the same number of bytes back.
    pub async fn round_trip(&mut self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.stream.write_all(message).await?;
        self.stream.flush().await?;
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), self.stream.read_exact(&mut echoed))
            .await
            .context("echo did not come back within 10s")??;
        Ok(echoed)
    }
}
