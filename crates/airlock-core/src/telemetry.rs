//! Process-wide counters, exposed in Prometheus text format by the API's
//! `/metrics`. They are counted in one place, where records become durable
//! (the recorder), so a metric never disagrees with the audit trail.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::{Decision, Event};

macro_rules! counters {
    ($($field:ident: $name:literal, $help:literal;)*) => {
        /// The gateway's counters.
        #[derive(Debug)]
        pub struct Metrics {
            $(#[doc = $help] pub $field: AtomicU64,)*
        }

        impl Metrics {
            const fn new() -> Self {
                Metrics { $($field: AtomicU64::new(0),)* }
            }

            /// The counters in Prometheus text exposition format.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP {} {}", $name, $help);
                    let _ = writeln!(out, "# TYPE {} counter", $name);
                    let _ = writeln!(out, "{} {}", $name, self.$field.load(Relaxed));
                )*
                out
            }
        }
    };
}

counters! {
    records: "airlock_audit_records_total", "Audit records made durable.";
    batches: "airlock_audit_batches_total", "Batches written (group commits).";
    append_failures: "airlock_audit_append_failures_total", "Records refused because the store could not write them.";
    sessions: "airlock_sessions_started_total", "Sessions started.";
    access_denied: "airlock_access_denied_total", "Connections refused before a session (bad token, no grant).";
    refused_full: "airlock_connections_refused_full_total", "Client connections refused because their listener already served max_connections.";
    allowed: "airlock_operations_allowed_total", "Operations allowed by policy.";
    denied: "airlock_operations_denied_total", "Operations denied by policy.";
    reviewed: "airlock_operations_reviewed_total", "Operations sent to review.";
    approvals: "airlock_approval_steps_total", "Approval steps recorded (requested, approved, denied, expired, executed, notified).";
}

/// The process's counters.
pub static METRICS: Metrics = Metrics::new();

/// The counter a record adds to besides `records`, if any. Taken before a
/// batch is handed to the store and applied once it is durable.
pub(crate) fn counter(event: &Event) -> Option<&'static AtomicU64> {
    let m = &METRICS;
    match event {
        Event::SessionStart { .. } => Some(&m.sessions),
        Event::AccessDenied { .. } => Some(&m.access_denied),
        Event::Operation { decision, .. } => Some(match decision {
            Decision::Allow => &m.allowed,
            Decision::Deny { .. } => &m.denied,
            Decision::Review { .. } => &m.reviewed,
        }),
        Event::Approval { .. } => Some(&m.approvals),
        _ => None,
    }
}

/// Counts a durable batch whose records' counters were taken with [`counter`].
pub(crate) fn count_batch(counters: &[Option<&'static AtomicU64>]) {
    let m = &METRICS;
    m.batches.fetch_add(1, Relaxed);
    m.records.fetch_add(counters.len() as u64, Relaxed);
    for c in counters.iter().flatten() {
        c.fetch_add(1, Relaxed);
    }
}
