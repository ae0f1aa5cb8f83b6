//! A minimal connector for a line protocol.
//!
//! The client sends `AUTH <target> <token>` and then one command per line;
//! the gateway answers `OK <session id>` or `ERR <message>`, then, per
//! command, the upstream's one-line answer (masked) or `ERR <message>`.
//! The target is any TCP service that answers each line with one line.
//!
//! ```toml
//! [[listeners]]
//! name = "lines"
//! protocol = "line"
//! listen = "127.0.0.1:7100"
//!
//! [targets.echo]
//! protocol = "line"
//! address = "127.0.0.1:7000"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use airlock_core::{
    ClientInfo, ClientStream, CommandOperation, Connector, Decision, Error, Event, Gateway,
    MaskCounts, Operation, Result,
};
use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest line accepted from a client or a target.
const MAX_LINE: usize = 64 * 1024;

/// Listener options: none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineListener {}

/// A line-protocol target.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineTarget {
    /// The upstream service's address.
    pub address: SocketAddr,
}

/// The line-protocol connector.
#[derive(Debug)]
pub struct LineConnector {
    targets: BTreeMap<String, LineTarget>,
}

#[async_trait]
impl Connector for LineConnector {
    const PROTOCOL: &'static str = "line";
    type Listener = LineListener;
    type Target = LineTarget;

    fn new(_listener: LineListener, targets: BTreeMap<String, LineTarget>) -> Result<Self> {
        Ok(LineConnector { targets })
    }

    async fn serve(&self, client: ClientStream, info: ClientInfo, gateway: Gateway) -> Result<()> {
        let (read, mut write) = tokio::io::split(client);
        let mut lines = BufReader::new(read);
        let Some(first) = read_line(&mut lines).await? else {
            return Ok(());
        };
        let mut words = first.splitn(3, ' ');
        let (Some("AUTH"), Some(target), Some(token)) = (words.next(), words.next(), words.next())
        else {
            return reply(&mut write, "ERR expected `AUTH <target> <token>` first").await;
        };
        // Each refusal reaches the client in its own protocol, then ends the connection.
        let identity = match gateway
            .authenticate(token, target, Self::PROTOCOL, &info)
            .await
        {
            Ok(identity) => identity,
            Err(e) => return reply(&mut write, &format!("ERR {e}")).await,
        };
        let session = match gateway
            .open_session(identity, target, Self::PROTOCOL, info)
            .await
        {
            Ok(s) => s,
            Err(e) => return reply(&mut write, &format!("ERR {e}")).await,
        };
        let Some(upstream_addr) = self.targets.get(target).map(|t| t.address) else {
            return reply(&mut write, "ERR target has no address").await;
        };
        let upstream = TcpStream::connect(upstream_addr)
            .await
            .map_err(|e| Error::Upstream(format!("target {target:?} at {upstream_addr}: {e}")))?;
        let (up_read, mut up_write) = upstream.into_split();
        let mut up_lines = BufReader::new(up_read);
        reply(&mut write, &format!("OK {}", session.id())).await?;

        while let Some(line) = read_line(&mut lines).await? {
            let op = Operation::Command(CommandOperation {
                line: line.clone(),
                interactive: false,
            });
            // authorize() returns only once the operation's record is durable.
            let mut decision = match session.authorize(&op).await {
                Ok(d) => d,
                Err(e) => {
                    reply(&mut write, &format!("ERR {e}")).await?;
                    continue;
                }
            };
            if let Decision::Review { message, .. } = &decision {
                // Tell the client it waits and where to approve, then wait.
                decision = match session.request_approval(&op, &[], &decision).await {
                    Ok(pending) => {
                        if !pending.is_decided() {
                            let note = format!(
                                "WAIT {message}: approval {} at {}",
                                pending.id(),
                                pending.url()
                            );
                            reply(&mut write, &note).await?;
                        }
                        pending.wait().await
                    }
                    Err(e) => Err(e),
                }
                .unwrap_or_else(|e| Decision::Deny {
                    rule: "approval".into(),
                    message: e.to_string(),
                });
            }
            if let Decision::Deny { rule, message } = decision {
                reply(&mut write, &format!("ERR denied by rule {rule}: {message}")).await?;
                continue;
            }
            let started = Instant::now();
            up_write
                .write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(upstream_err)?;
            let answer = read_line(&mut up_lines).await?.unwrap_or_default();
            let mut counts = MaskCounts::new();
            let masked = session
                .masker()
                .mask_str(None, &answer, &mut counts)
                .into_owned();
            session.record_later(Event::Result {
                rows: None,
                error: None,
                duration_us: started.elapsed().as_micros() as u64,
                output: Some(masked.clone()),
                masked: counts,
            });
            reply(&mut write, &masked).await?;
        }
        session.end("client closed").await
    }
}

fn upstream_err(e: std::io::Error) -> Error {
    Error::Upstream(format!("the target connection failed: {e}"))
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| Error::Client(format!("read failed: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(Error::Client(format!("line longer than {MAX_LINE} bytes")));
    }
    let s = String::from_utf8_lossy(&buf);
    Ok(Some(s.trim_end_matches(['\r', '\n']).to_string()))
}

use tokio::io::AsyncReadExt as _;

async fn reply<W: AsyncWrite + Unpin>(w: &mut W, line: &str) -> Result<()> {
    w.write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(|e| Error::Client(format!("write failed: {e}")))
}
