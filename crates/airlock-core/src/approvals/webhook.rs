//! Approval notifications over webhooks: generic JSON, or a Slack-compatible
//! incoming-webhook payload with approve/deny links.
//!
//! Delivery runs on its own task with retries and exponential backoff. A
//! failed notification is recorded in the audit chain and never blocks or
//! loses the approval itself: people can always find pending requests in the
//! API.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::{Approval, Notifier};
use crate::recorder::Recorder;
use crate::{Error, Event, Result};

/// `[[approvals.webhooks]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL to POST to.
    pub url: String,
    /// `"json"` (default) for a generic JSON body, `"slack"` for a Slack incoming webhook.
    #[serde(default)]
    pub format: WebhookFormat,
    /// Attempts before giving up (default 5).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First retry delay in milliseconds; doubles each time (default 500).
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
}

fn default_attempts() -> u32 {
    5
}
fn default_backoff() -> u64 {
    500
}

/// A webhook's payload format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"event": "approval_requested", "approval": {...}, "approve_url": ..., "deny_url": ...}`.
    #[default]
    Json,
    /// Slack's incoming-webhook `text` + `blocks`, with link buttons.
    Slack,
}

struct Job {
    approval: Approval,
    url: String,
}

/// Sends approval notifications to every configured webhook.
#[derive(Debug)]
pub struct WebhookNotifier {
    tx: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.approval.id)
    }
}

impl WebhookNotifier {
    /// Starts the delivery task. `recorder` receives a record per delivery outcome.
    pub fn start(hooks: Vec<WebhookConfig>, recorder: Recorder) -> Result<Arc<WebhookNotifier>> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the webhook HTTP client: {e}")))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let hooks = Arc::new(hooks);
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                for hook in hooks.iter() {
                    // Each delivery retries on its own so one slow receiver delays no other.
                    tokio::spawn(deliver(
                        client.clone(),
                        hook.clone(),
                        job.approval.clone(),
                        job.url.clone(),
                        recorder.clone(),
                    ));
                }
            }
        });
        Ok(Arc::new(WebhookNotifier { tx }))
    }
}

impl Notifier for WebhookNotifier {
    fn requested(&self, approval: &Approval, url: &str) {
        let _ = self.tx.send(Job {
            approval: approval.clone(),
            url: url.to_string(),
        });
    }
}

/// The body posted for a new request. Its approve and deny links lead to
/// the request's page, at how to approve or deny it: a link that decided by
/// itself would be followed by every chat client that previews links.
pub fn payload(format: WebhookFormat, a: &Approval, url: &str) -> serde_json::Value {
    let what = a.operation.summary();
    match format {
        WebhookFormat::Json => json!({
            "event": "approval_requested",
            "approval": a,
            "summary": what,
            "url": url,
            "approve_url": format!("{url}#approve"),
            "deny_url": format!("{url}#deny"),
        }),
        WebhookFormat::Slack => {
            let grant = if a.grant_secs > 0 {
                format!(
                    " Approving also lets {}'s further operations under this rule on {} through for {} minutes.",
                    a.requester.subject,
                    a.target,
                    a.grant_secs / 60
                )
            } else {
                String::new()
            };
            let text = format!(
                "*{}* asks to run on *{}* ({}):\n```{}```\nRule `{}` needs approval from {} (expires {}).{grant}",
                a.requester.subject,
                a.target,
                a.protocol,
                what.replace("```", "'''"),
                a.rule,
                a.approvers.join(", "),
                a.expires
            );
            json!({
                "text": format!("Approval needed: {} on {}", a.requester.subject, a.target),
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                    {"type": "actions", "elements": [
                        {"type": "button", "text": {"type": "plain_text", "text": "Approve"}, "style": "primary", "url": format!("{url}#approve")},
                        {"type": "button", "text": {"type": "plain_text", "text": "Deny"}, "style": "danger", "url": format!("{url}#deny")},
                        {"type": "button", "text": {"type": "plain_text", "text": "Details"}, "url": url},
                    ]}
                ]
            })
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    hook: WebhookConfig,
    approval: Approval,
    url: String,
    recorder: Recorder,
) {
    let body = payload(hook.format, &approval, &url);
    let mut delay = Duration::from_millis(hook.backoff_ms.max(1));
    let mut last_error = String::new();
    for attempt in 1..=hook.attempts.max(1) {
        match client.post(&hook.url).json(&body).send().await {
            Ok(resp) if resp.status().is_success() => {
                let event = Event::Approval {
                    id: approval.id.clone(),
                    status: "notified".into(),
                    by: None,
                    reason: Some(format!(
                        "webhook {} accepted it on attempt {attempt}",
                        host_of(&hook.url)
                    )),
                };
                recorder.record_later(Some(approval.session), event);
                return;
            }
            Ok(resp) => last_error = format!("HTTP {}", resp.status()),
            Err(e) => last_error = e.to_string(),
        }
        tracing::warn!(approval = %approval.id, attempt, error = %last_error, "approval webhook failed; retrying");
        if attempt < hook.attempts {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(Duration::from_secs(60));
        }
    }
    let event = Event::Approval {
        id: approval.id.clone(),
        status: "notify_failed".into(),
        by: None,
        reason: Some(format!(
            "webhook {} failed after {} attempts: {last_error}",
            host_of(&hook.url),
            hook.attempts
        )),
    };
    recorder.record_later(Some(approval.session), event);
}

/// Scheme and host of a URL, for records: webhook URLs often carry tokens in the path.
fn host_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "<invalid url>".into(),
    }
}
