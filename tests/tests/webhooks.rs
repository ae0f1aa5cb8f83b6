//! Approval notifications reach a local HTTP receiver, with retries when it
//! fails, and a receiver that never accepts neither blocks nor loses the
//! approval. Both outcomes are in the audit chain.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches fail loudly by design.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::{Event, Identity};
use airlock_tests::{EchoTarget, LineClient, TestGateway, approval_id, line_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP/1.1 receiver that answers 503 to the first `failures` requests and
/// 200 afterwards, keeping every request body.
async fn receiver(failures: usize) -> (String, Arc<Mutex<Vec<(u16, serde_json::Value)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hooks/airlock-approvals",
        listener.local_addr().unwrap()
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let body = loop {
                let mut chunk = [0u8; 4096];
                let n = conn.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(
                            serde_json::from_slice::<serde_json::Value>(
                                &buf[end + 4..end + 4 + len],
                            )
                            .unwrap(),
                        );
                    }
                }
            };
            let Some(body) = body else { continue };
            let status = if log.lock().unwrap().len() < failures {
                503
            } else {
                200
            };
            log.lock().unwrap().push((status, body));
            let reply =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            conn.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    (url, seen)
}

fn rules(url: &str, format: &str, attempts: u32) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:0"

[[rules]]
name = "deploys-need-approval"
action = "review"
approvers = ["dba"]
message = "deploys need approval"
[rules.command]
line = ["^deploy "]

[[approvals.webhooks]]
url = "{url}"
format = "{format}"
attempts = {attempts}
backoff_ms = 50
"#
    )
}

async fn approval_events(gw: &TestGateway, id: &str) -> Vec<(String, Option<String>)> {
    use airlock_core::store::Store;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = gw.runtime.store.raw_records(after, 1000).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        for r in batch {
            after = r.seq;
            let record: airlock_core::audit::Record = serde_json::from_slice(&r.body).unwrap();
            if let Event::Approval {
                id: aid,
                status,
                reason,
                ..
            } = record.event
                && aid == id
            {
                out.push((status, reason));
            }
        }
    }
}

async fn request(gw: &TestGateway) -> (LineClient, String) {
    let mut client = gw.login("agent-1", &["agents"]).await.unwrap();
    let wait = client.send("deploy api").await.unwrap();
    let id = approval_id(&wait).unwrap();
    (client, id)
}

async fn until<T>(mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 10s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_webhook_is_retried_until_the_receiver_accepts() {
    let (url, seen) = receiver(2).await;
    let dir = tempfile::tempdir().unwrap();
    let target = EchoTarget::start().await.unwrap();
    let gw = TestGateway::start(
        &line_config(target.addr, &rules(&url, "slack", 5)),
        dir.path(),
    )
    .await
    .unwrap();
    let (_client, id) = request(&gw).await;
    let notified = until(async || {
        approval_events(&gw, &id)
            .await
            .into_iter()
            .find(|(s, _)| s == "notified")
    })
    .await;
    assert!(notified.1.unwrap().contains("accepted it on attempt 3"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![503, 503, 200]
    );
    let body = &seen[2].1;
    assert_eq!(body["text"], "Approval needed: agent-1 on echo");
    // The buttons lead to the request's page, at how to approve or deny
    // (a link that decided by itself would be followed by link previews),
    // and that page is there.
    let buttons = body["blocks"][1]["elements"].as_array().unwrap();
    for (button, anchor) in [(0, "approve"), (1, "deny")] {
        let url = buttons[button]["url"].as_str().unwrap();
        assert!(url.ends_with(&format!("/approvals/{id}#{anchor}")), "{url}");
        let page = reqwest::get(url.split('#').next().unwrap()).await.unwrap();
        assert_eq!(page.status(), 200, "{url}");
        let html = page.text().await.unwrap();
        assert!(html.contains(&format!("id=\"{anchor}\"")), "{html}");
    }
    assert!(
        body["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("deploy api")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_notification_never_blocks_or_loses_the_approval() {
    let (url, seen) = receiver(usize::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let target = EchoTarget::start().await.unwrap();
    let gw = TestGateway::start(
        &line_config(target.addr, &rules(&url, "json", 3)),
        dir.path(),
    )
    .await
    .unwrap();
    let (mut client, id) = request(&gw).await;
    let failed = until(async || {
        approval_events(&gw, &id)
            .await
            .into_iter()
            .find(|(s, _)| s == "notify_failed")
    })
    .await;
    assert!(
        failed
            .1
            .unwrap()
            .contains("failed after 3 attempts: HTTP 503")
    );
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(seen.lock().unwrap()[0].1["approval"]["id"], id.as_str());
    // The approval is still there and still works.
    let dana = Identity {
        subject: "dana".into(),
        groups: vec!["dba".into()],
        issuer: "t".into(),
    };
    gw.runtime
        .gateway
        .approvals()
        .decide(&id, &dana, true, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.next().await.unwrap(), "deploy api");
    assert_eq!(target.received(), vec!["deploy api".to_string()]);
}
