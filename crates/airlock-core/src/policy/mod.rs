//! Policy (placeholder; being built).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::config::Source;
use crate::{Decision, Identity, Operation, Result};

/// `[[grants]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {}

/// `[[rules]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {}

/// `[policy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOptions {
    /// Packs.
    #[serde(default)]
    pub packs: Vec<String>,
}

/// The compiled policy.
#[derive(Debug)]
pub struct Policy {}

impl Policy {
    /// Compiles grants and rules.
    pub fn compile(
        _grants: &[Spanned<GrantConfig>],
        _rules: &[Spanned<RuleConfig>],
        _options: &PolicyOptions,
        _targets: &BTreeMap<String, String>,
        _source: &Source,
    ) -> Result<Policy> {
        Ok(Policy {})
    }
    /// Whether `identity` may use `target`: `Err(message)` if not.
    pub fn check_access(
        &self,
        _identity: &Identity,
        _target: &str,
    ) -> std::result::Result<(), String> {
        Err("not built".into())
    }
    /// Review settings of a rule (placeholder).
    pub fn review_settings(&self, _rule: &str) -> crate::approvals::ReviewSettings {
        crate::approvals::ReviewSettings::default()
    }
    /// Decides one operation.
    pub fn decide(
        &self,
        _identity: &Identity,
        _target: &str,
        _protocol: &str,
        _op: &Operation,
    ) -> Decision {
        Decision::Deny {
            rule: "default-deny".into(),
            message: "not built".into(),
        }
    }
}
