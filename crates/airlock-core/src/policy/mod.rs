//! Policy: who may use which target ([`GrantConfig`]) and what they may do
//! there ([`RuleConfig`]), with built-in rule packs for common guardrails
//! ([`packs`]).
//!
//! The configuration is compiled once into a [`Policy`]; [`Policy::decide`]
//! runs on every operation's path and does no parsing, allocation or glob
//! compilation unless it denies or holds an operation. Evaluation is:
//!
//! 1. no grant covers the client and target: deny (`default-deny`);
//! 2. a matching `deny` rule: [`Decision::Deny`] with the rule's message;
//! 3. else a matching `review` rule: [`Decision::Review`];
//! 4. else a matching `allow` rule, or a grant with `access = "full"`: allow;
//! 5. else deny (`default-deny`).
//!
//! The user guide is `docs/policy.md`.

mod compile;
mod config;
mod matcher;
mod packs;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use toml::Spanned;

pub use config::{
    Action, CommandMatch, GrantAccess, GrantConfig, HttpMatch, KubeMatch, PolicyOptions,
    RuleConfig, SqlMatch,
};
pub use packs::packs;

use crate::config::Source;
use crate::{Decision, Identity, Operation, Result};
use matcher::{Matcher, OP_KINDS, RegexSets, op_kind};

/// The rule name of a denial no rule made: no grant covers the client, or
/// the grant has `access = "rules"` and no allow rule matched.
pub const DEFAULT_DENY: &str = "default-deny";

/// Default seconds a review waits for approval (15 minutes).
pub const DEFAULT_REVIEW_TIMEOUT_SECS: u64 = 15 * 60;

/// A rule ready for evaluation. The approval workflow reads the review
/// settings from here (see [`Policy::rule`]).
#[derive(Debug)]
pub struct CompiledRule {
    /// The rule's unique name (pack rules are named `"<pack>/<rule>"`).
    pub name: String,
    /// What the rule does when it matches.
    pub action: Action,
    /// What the user is told (empty for allow rules without a message).
    pub message: String,
    /// Review rules: groups whose members may approve.
    pub approvers: Vec<String>,
    /// Review rules: seconds to wait for approval before refusing
    /// (default [`DEFAULT_REVIEW_TIMEOUT_SECS`]).
    pub timeout_secs: u64,
    /// Review rules: how many distinct approvers must approve (default 1).
    pub approvals_required: u32,
    /// Review rules: whether requesters may approve their own requests (default `false`).
    pub self_approval: bool,
    /// Review rules: minutes an approval also covers the requester's further
    /// operations this rule matches on the same target (default 0: just the
    /// one operation).
    pub grant_minutes: u64,
    /// Where the rule was defined, `file:line:column` (`<pack NAME>:line:column` for packs).
    pub origin: String,
    matcher: Matcher,
}

impl CompiledRule {
    fn decision(&self) -> Decision {
        match self.action {
            Action::Deny => Decision::Deny {
                rule: self.name.clone(),
                message: self.message.clone(),
            },
            Action::Review => Decision::Review {
                rule: self.name.clone(),
                approvers: self.approvers.clone(),
                message: self.message.clone(),
            },
            Action::Allow => Decision::Allow,
        }
    }
}

/// The compiled policy: grants and rules resolved per target, every pattern
/// compiled.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<CompiledRule>,
    by_name: HashMap<String, usize>,
    targets: HashMap<String, TargetPolicy>,
    regexes: RegexSets,
}

/// Everything that applies to one target, prepared at compile time.
#[derive(Debug, Default)]
struct TargetPolicy {
    grants: Vec<CompiledGrant>,
    /// Indices into `Policy::rules` per operation kind, denies first, then
    /// reviews, then allows, each in definition order.
    rules: [Vec<u32>; OP_KINDS],
    /// Where the allow rules start in each of `rules`; grants with full
    /// access never need to look at them.
    allow_from: [usize; OP_KINDS],
}

#[derive(Debug)]
struct CompiledGrant {
    groups: Vec<String>,
    subjects: Vec<String>,
    access: GrantAccess,
}

impl TargetPolicy {
    /// The most permissive access any grant gives `identity`, if any does.
    fn access(&self, identity: &Identity) -> Option<GrantAccess> {
        let mut best = None;
        for grant in &self.grants {
            if grant.subjects.contains(&identity.subject) || identity.in_any(&grant.groups) {
                if grant.access == GrantAccess::Full {
                    return Some(GrantAccess::Full);
                }
                best = Some(grant.access);
            }
        }
        best
    }
}

impl Policy {
    /// Compiles grants, rules and the enabled packs against the configured
    /// targets (`target name -> protocol`). Errors name the place in
    /// `source` (or in the pack) and say what to change.
    pub fn compile(
        grants: &[Spanned<GrantConfig>],
        rules: &[Spanned<RuleConfig>],
        options: &PolicyOptions,
        targets: &BTreeMap<String, String>,
        source: &Source,
    ) -> Result<Policy> {
        compile::compile(grants, rules, options, targets, source)
    }

    /// Whether `identity` may use `target`: `Err` carries the message for the
    /// user (which target, that no grant covers them, what to do).
    pub fn check_access(
        &self,
        identity: &Identity,
        target: &str,
    ) -> std::result::Result<(), String> {
        let Some(t) = self.targets.get(target) else {
            return Err(unknown_target(target));
        };
        match t.access(identity) {
            Some(_) => Ok(()),
            None => Err(no_grant(identity, target)),
        }
    }

    /// Decides one operation of `identity` on `target` over `protocol`.
    pub fn decide(
        &self,
        identity: &Identity,
        target: &str,
        protocol: &str,
        op: &Operation,
    ) -> Decision {
        let Some(t) = self.targets.get(target) else {
            return default_deny(unknown_target(target));
        };
        // Fail closed even if a connector forgot to check access first.
        let Some(access) = t.access(identity) else {
            return default_deny(no_grant(identity, target));
        };
        let kind = op_kind(op);
        let candidates = &t.rules[kind];
        let candidates = match access {
            GrantAccess::Full => &candidates[..t.allow_from[kind]],
            GrantAccess::Rules => &candidates[..],
        };
        let mut scan = self.regexes.scan(op);
        // Candidates are ordered deny, review, allow: the first match wins.
        for &i in candidates {
            let rule = &self.rules[i as usize];
            if rule.matcher.matches(identity, protocol, op, &mut scan) {
                return rule.decision();
            }
        }
        match access {
            GrantAccess::Full => Decision::Allow,
            GrantAccess::Rules => default_deny(format!(
                "target {target:?} allows only operations that an allow rule permits, and no allow rule matches this {}; ask an administrator for an allow rule if you need it",
                kind_noun(op)
            )),
        }
    }

    /// The compiled rule named `name` (pack rules: `"<pack>/<rule>"`).
    pub fn rule(&self, name: &str) -> Option<&CompiledRule> {
        self.by_name.get(name).map(|&i| &self.rules[i])
    }

    /// All compiled rules: the configuration's in order, then the packs'.
    pub fn rules(&self) -> impl Iterator<Item = &CompiledRule> {
        self.rules.iter()
    }
}

fn default_deny(message: String) -> Decision {
    Decision::Deny {
        rule: DEFAULT_DENY.to_string(),
        message,
    }
}

fn unknown_target(target: &str) -> String {
    format!("there is no target named {target:?} (ask an administrator which targets you may use)")
}

fn no_grant(identity: &Identity, target: &str) -> String {
    let groups = if identity.groups.is_empty() {
        "no groups".to_string()
    } else {
        format!("groups {}", identity.groups.join(", "))
    };
    format!(
        "no grant gives {:?} ({groups}) access to target {target:?}; ask an administrator to grant one of your groups access to {target:?}",
        identity.subject
    )
}

fn kind_noun(op: &Operation) -> &'static str {
    match op {
        Operation::Sql(_) => "SQL statement",
        Operation::Command(_) => "command",
        Operation::Kube(_) => "Kubernetes request",
        Operation::Http(_) => "HTTP request",
    }
}
