//! # airlock-examples
//!
//! Examples for Airlock. [`line`] is a complete minimal connector for a
//! line-based command protocol: it shows everything a protocol plugin does
//! (authenticate, open a session, authorize each operation, forward, mask and
//! record) in under two hundred lines, and the end-to-end tests use it to
//! exercise the core pipeline without any particular wire protocol.
//! `src/bin/custom_connector.rs` runs a gateway with it registered.
//!
//! `agents/psycopg_agent.py` (not part of this crate) is an agent's executor
//! in Python: psycopg 3 through the gateway, refusals and approval notices
//! handled as PostgreSQL answers.

pub mod line;
