//! The REST API end to end: approvals decided over HTTP release or refuse a
//! waiting client; roles are enforced; errors are JSON; the OpenAPI document
//! validates.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches fail loudly by design.

use std::process::Command;

use airlock_tests::{EchoTarget, LineClient, TestGateway, approval_id, certificate, line_config};
use serde_json::{Value, json};

const RULES: &str = r#"
[api]
listen = "127.0.0.1:0"
admins = ["platform"]
approvers = ["dba"]
auditors = ["audit"]

[[rules]]
name = "deploys-need-approval"
action = "review"
approvers = ["dba"]
message = "deploys need a DBA's approval"
[rules.command]
line = ["^deploy "]
"#;

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(gw: &TestGateway) -> Api {
        airlock_core::identity::install_crypto_provider();
        Api {
            base: format!("http://{}", gw.runtime.api.unwrap()),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }
}

async fn waiting(gw: &TestGateway, line: &str) -> (LineClient, String) {
    let mut client = gw.login("agent-1", &["agents"]).await.unwrap();
    let wait = client.send(line).await.unwrap();
    assert!(wait.starts_with("WAIT "), "{wait}");
    let id = approval_id(&wait).unwrap();
    assert!(
        wait.ends_with(&format!(
            "at http://{}/approvals/{id}",
            gw.runtime.api.unwrap()
        )),
        "{wait}"
    );
    (client, id)
}

async fn start() -> (tempfile::TempDir, EchoTarget, TestGateway) {
    let dir = tempfile::tempdir().unwrap();
    let target = EchoTarget::start().await.unwrap();
    let gw = TestGateway::start(&line_config(target.addr, RULES), dir.path())
        .await
        .unwrap();
    (dir, target, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_over_the_api_releases_the_waiting_operation() {
    let (_dir, target, gw) = start().await;
    let api = Api::new(&gw);
    let (mut client, id) = waiting(&gw, "deploy v1").await;
    let dana = gw.token("dana", &["dba"]).unwrap();

    let (status, list) = api
        .get("/api/v1/approvals?status=pending", Some(&dana))
        .await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["summary"], "deploy v1");
    assert_eq!(list[0]["requester"], "agent-1");
    assert!(target.received().is_empty());
    // A second request: a limit of one lists the newest only; 0 is refused.
    let (_client2, id2) = waiting(&gw, "deploy v1b").await;
    let (status, list) = api
        .get("/api/v1/approvals?status=pending&limit=1", Some(&dana))
        .await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id2.as_str());
    let (status, all) = api.get("/api/v1/approvals", Some(&dana)).await;
    assert_eq!((status, all.as_array().unwrap().len()), (200, 2));
    let (status, e) = api.get("/api/v1/approvals?limit=0", Some(&dana)).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );

    let (status, a) = api
        .post(&format!("/api/v1/approvals/{id}/approve"), &dana, json!({}))
        .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["status"], "approved");
    assert_eq!(client.next().await.unwrap(), "deploy v1");
    assert_eq!(target.received(), vec!["deploy v1".to_string()]);

    // Deciding twice is a conflict with a JSON body.
    let (status, e) = api
        .post(
            &format!("/api/v1/approvals/{id}/deny"),
            &dana,
            json!({"reason": "late"}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_over_the_api_reaches_the_client_with_its_reason() {
    let (_dir, target, gw) = start().await;
    let api = Api::new(&gw);
    let (mut client, id) = waiting(&gw, "deploy v2").await;
    let dana = gw.token("dana", &["dba"]).unwrap();
    let (status, e) = api
        .post(&format!("/api/v1/approvals/{id}/deny"), &dana, json!({}))
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "a denial needs a reason: {e}"
    );
    // A body that is not JSON gets the API's JSON error, not plain text.
    let raw = |content_type: Option<&str>, body: &'static str| {
        let mut req = api
            .http
            .post(format!("{}/api/v1/approvals/{id}/deny", api.base))
            .bearer_auth(&dana)
            .body(body);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        req.send()
    };
    let resp = raw(
        Some("application/x-www-form-urlencoded"),
        "reason=not+during+the+incident",
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "bad_request", "{e}");
    // A JSON body without its content type keeps its reason.
    let resp = raw(None, r#"{"reason": "not during the incident"}"#)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        client.next().await.unwrap(),
        format!(
            "ERR denied by rule deploys-need-approval: approval {id} was denied by dana: not during the incident"
        )
    );
    assert!(target.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced() {
    let (_dir, target, gw) = start().await;
    let api = Api::new(&gw);
    let (mut client, id) = waiting(&gw, "deploy v3").await;
    let approve = format!("/api/v1/approvals/{id}/approve");

    // No token: 401 with a JSON body (checked with curl, a real client).
    let out = Command::new("curl")
        .args(["-s", "-i", "-X", "POST", &format!("{}{approve}", api.base)])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );

    // A bad token: 401.
    let (status, _) = api.get("/api/v1/sessions", Some("not-a-token")).await;
    assert_eq!(status, 401);

    // The requester's groups hold no API role: 403.
    let agent = gw.token("agent-1", &["agents"]).unwrap();
    let (status, e) = api.post(&approve, &agent, json!({})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );

    // An auditor reads sessions and approvals but cannot approve.
    let auditor = gw.token("ada", &["audit"]).unwrap();
    let (status, sessions) = api
        .get("/api/v1/sessions?user=agent-1", Some(&auditor))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sessions[0]["user"], "agent-1");
    let sid = sessions[0]["id"].as_str().unwrap().to_string();
    let (status, detail) = api
        .get(&format!("/api/v1/sessions/{sid}"), Some(&auditor))
        .await;
    assert_eq!(status, 200);
    assert!(
        detail["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "operation")
    );
    assert_eq!(detail["next_after"], Value::Null, "all of it in one page");
    // Page by page, the same records in the same order.
    let all: Vec<Value> = detail["events"].as_array().unwrap().clone();
    assert!(all.len() >= 3, "{all:?}");
    let (mut paged, mut after) = (Vec::new(), None::<u64>);
    loop {
        let path = match after {
            Some(a) => format!("/api/v1/sessions/{sid}?limit=2&after={a}"),
            None => format!("/api/v1/sessions/{sid}?limit=2"),
        };
        let (status, page) = api.get(&path, Some(&auditor)).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 2);
        paged.extend(events.iter().cloned());
        match page["next_after"].as_u64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, all);
    let (status, found) = api
        .get("/api/v1/sessions?q=DEPLOY%20v3", Some(&auditor))
        .await;
    assert_eq!(
        (status, found.as_array().unwrap().len()),
        (200, 1),
        "text search in operations"
    );
    let (status, found) = api
        .get("/api/v1/sessions?q=no-such-command", Some(&auditor))
        .await;
    assert_eq!((status, found.as_array().unwrap().len()), (200, 0));
    // A limit that is not a number, or is 0, is a JSON 400; 1 is one.
    for bad in ["ten", "0"] {
        let (status, e) = api
            .get(&format!("/api/v1/sessions?limit={bad}"), Some(&auditor))
            .await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}: {e}"
        );
    }
    let (status, found) = api.get("/api/v1/sessions?limit=1", Some(&auditor)).await;
    assert_eq!((status, found.as_array().unwrap().len()), (200, 1));
    let (status, _) = api
        .get(&format!("/api/v1/approvals/{id}"), Some(&auditor))
        .await;
    assert_eq!(status, 200);
    let (status, e) = api.post(&approve, &auditor, json!({})).await;
    assert_eq!(status, 403, "{e}");

    // An approver holding the API role but outside the rule's approver groups is refused too.
    let platform = gw.token("pat", &["platform"]).unwrap();
    let (status, e) = api.post(&approve, &platform, json!({})).await;
    assert_eq!(status, 403, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only members of dba"),
        "{e}"
    );
    // An approver cannot read sessions.
    let dana = gw.token("dana", &["dba"]).unwrap();
    let (status, _) = api.get("/api/v1/sessions", Some(&dana)).await;
    assert_eq!(status, 403);
    assert!(target.received().is_empty());

    // ... and the right approver can.
    let (status, _) = api.post(&approve, &dana, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(client.next().await.unwrap(), "deploy v3");

    let (status, report) = api.get("/api/v1/audit/verify", Some(&auditor)).await;
    assert_eq!(
        (status, &report["ok"]),
        (200, &Value::Bool(true)),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_openapi_document() {
    let (dir, _target, gw) = start().await;
    let api = Api::new(&gw);
    assert_eq!(
        api.get("/healthz", None).await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        api.get("/readyz", None).await,
        (200, json!({"status": "ok"}))
    );
    let metrics = reqwest::get(format!("{}/metrics", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("# TYPE airlock_audit_records_total counter"),
        "{metrics}"
    );
    let (status, e) = api.get("/api/v1/nope", None).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    let (status, doc) = api.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/api/v1/sessions",
        "/api/v1/approvals/{id}/approve",
        "/api/v1/audit/verify",
        "/readyz",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-c", "import json,sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the OpenAPI document must validate (scripts/test installs openapi-spec-validator): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator does reject a broken document (so the check above can fail).
    let mut broken = doc.clone();
    broken["paths"]["/api/v1/sessions"]["get"]["responses"] = json!("not-an-object");
    std::fs::write(&file, serde_json::to_vec(&broken).unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-c", "import json,sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1])))"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// curl against the API: `(status, JSON body)`; `ca` makes it trust that
/// certificate (and nothing else) for https.
fn curl(url: &str, token: &str, method: &str, ca: Option<&std::path::Path>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-X",
        method,
        "-H",
        &format!("Authorization: Bearer {token}"),
    ])
    .args([
        "-H",
        "Content-Type: application/json",
        "-w",
        "\n%{http_code}",
    ]);
    if method == "POST" {
        cmd.args(["-d", "{}"]);
    }
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (
        status.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_api_decides_approvals_and_tells_a_plain_http_caller_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path()).unwrap();
    let rules = RULES.replace(
        "auditors = [\"audit\"]\n",
        &format!(
            "auditors = [\"audit\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    assert!(rules.contains("tls_key"));
    let target = EchoTarget::start().await.unwrap();
    let gw = TestGateway::start(&line_config(target.addr, &rules), &dir.path().join("data"))
        .await
        .unwrap();
    let port = gw.runtime.api.unwrap().port();
    let mut client = gw.login("agent-1", &["agents"]).await.unwrap();
    let wait = client.send("deploy v9").await.unwrap();
    let id = approval_id(&wait).unwrap();
    // The link people follow is https.
    let link = format!("https://127.0.0.1:{port}/approvals/{id}");
    assert!(wait.ends_with(&link), "{wait}");
    let dana = gw.token("dana", &["dba"]).unwrap();
    let approve = format!("/api/v1/approvals/{id}/approve");

    // The approval sent over plain HTTP is not processed, and the answer
    // says what to do instead (and that the token was exposed).
    let (status, e) = curl(
        &format!("http://localhost:{port}{approve}"),
        &dana,
        "POST",
        None,
    );
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("use https://localhost:{port}{approve}"))
            && message.contains("treat it as exposed"),
        "{message}"
    );
    // A client that does not trust the certificate gets no answer at all.
    let (status, _) = curl(
        &format!("https://localhost:{port}{approve}"),
        &dana,
        "POST",
        None,
    );
    assert_eq!(status, 0);
    let https = |path: &str| format!("https://localhost:{port}{path}");
    let (status, a) = curl(
        &https(&format!("/api/v1/approvals/{id}")),
        &dana,
        "GET",
        Some(&cert),
    );
    assert_eq!(
        (status, a["status"].as_str()),
        (200, Some("pending")),
        "{a}"
    );
    assert!(target.received().is_empty());

    // The same approval over HTTPS releases the waiting operation.
    let (status, a) = curl(&https(&approve), &dana, "POST", Some(&cert));
    assert_eq!(
        (status, a["status"].as_str()),
        (200, Some("approved")),
        "{a}"
    );
    assert_eq!(client.next().await.unwrap(), "deploy v9");
    assert_eq!(target.received(), vec!["deploy v9".to_string()]);
}

/// `max_connections_per_address` reaches the API: with 1, a connection held
/// open makes the next one from the same address get 429 with a JSON
/// error, and once it closes the same request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_connection_limit_is_configurable() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let target = EchoTarget::start().await.unwrap();
    let rules = RULES.replace(
        "auditors = [\"audit\"]\n",
        "auditors = [\"audit\"]\nmax_connections_per_address = 1\n",
    );
    assert!(rules.contains("max_connections_per_address"));
    let gw = TestGateway::start(&line_config(target.addr, &rules), dir.path())
        .await
        .unwrap();
    let api = gw.runtime.api.unwrap();
    let mut held = tokio::net::TcpStream::connect(api).await.unwrap();
    held.write_all(b"GET /healthz HTTP/1.1\r\nHost: api\r\n")
        .await
        .unwrap();
    let url = format!("http://{api}/healthz");
    let mut refused = (0, Value::Null);
    for _ in 0..50 {
        refused = curl(&url, "none", "GET", None);
        if refused.0 == 429 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(refused.0, 429, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "too_many_connections");
    drop(held);
    let mut answered = (0, Value::Null);
    for _ in 0..50 {
        answered = curl(&url, "none", "GET", None);
        if answered.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(answered.0, 200, "{}", answered.1);
}
