//! Turning configuration into a [`Policy`], with validation whose errors name
//! the place in the file and say what to change.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use globset::GlobSet;
use serde::Deserialize;
use toml::Spanned;

use super::config::{Action, GrantConfig, PolicyOptions, RuleConfig};
use super::matcher::{
    CommandMatcher, HttpMatcher, KubeMatcher, Matcher, OP_KINDS, OpMatcher, RegexPools, RegexSets,
    SqlMatcher, Who, glob, glob_set,
};
use super::{
    CompiledGrant, CompiledRule, DEFAULT_REVIEW_TIMEOUT_SECS, Policy, TargetPolicy, packs,
};
use crate::config::Source;
use crate::{Error, Result};

/// The longest a review may wait for its decision: a year.
const MAX_REVIEW_TIMEOUT_SECS: u64 = 365 * 24 * 3600;
/// The longest a grant may last: a year.
const MAX_GRANT_MINUTES: u64 = 365 * 24 * 60;

/// A pack's file: only `[[rules]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackFile {
    rules: Vec<Spanned<RuleConfig>>,
}

/// An enabled pack: its name, its text as a source for positions, its rules.
type LoadedPack = (&'static str, Source, Vec<Spanned<RuleConfig>>);

/// A rule compiled, with its target patterns still to be resolved.
struct Pending {
    rule: CompiledRule,
    targets: Option<GlobSet>,
}

pub(super) fn compile(
    grants: &[Spanned<GrantConfig>],
    rules: &[Spanned<RuleConfig>],
    options: &PolicyOptions,
    targets: &BTreeMap<String, String>,
    source: &Source,
) -> Result<Policy> {
    let enabled = load_packs(options, source)?;

    let mut pending = Vec::new();
    let mut pools = RegexPools::default();
    let mut names = HashSet::new();
    let mut overridden = HashSet::new();
    for spanned in rules {
        let rule = spanned.get_ref();
        let at = source.at(spanned.span());
        let name = rule_name(rule, &at)?;
        if !names.insert(name.to_string()) {
            return Err(Error::Config(format!(
                "{at}: there is already a rule named {name:?}; rule names must be unique (they appear in audit records and messages)"
            )));
        }
        if let Some((pack, _)) = name.split_once('/')
            && packs().iter().any(|(p, _)| *p == pack)
        {
            let Some((_, _, pack_rules)) = enabled.iter().find(|(p, _, _)| *p == pack) else {
                return Err(Error::Config(format!(
                    "{at}: rule {name:?} replaces a rule of pack {pack:?}, which is not enabled; add it to [policy] packs or rename the rule"
                )));
            };
            if !pack_rules
                .iter()
                .any(|r| r.get_ref().name.as_deref() == Some(name))
            {
                let known: Vec<&str> = pack_rules
                    .iter()
                    .filter_map(|r| r.get_ref().name.as_deref())
                    .collect();
                return Err(Error::Config(format!(
                    "{at}: pack {pack:?} has no rule named {name:?}; its rules are: {}",
                    known.join(", ")
                )));
            }
            overridden.insert(name.to_string());
        }
        if rule.enabled {
            pending.push(compile_rule(spanned, source, targets, &mut pools)?);
        }
    }
    for (_, pack_source, pack_rules) in &enabled {
        for spanned in pack_rules {
            let rule = spanned.get_ref();
            let name = rule_name(rule, &pack_source.at(spanned.span()))?;
            if overridden.contains(name) || !rule.enabled {
                continue;
            }
            if !names.insert(name.to_string()) {
                return Err(Error::Config(format!(
                    "{}: there is already a rule named {name:?}",
                    pack_source.at(spanned.span())
                )));
            }
            pending.push(compile_rule(spanned, pack_source, targets, &mut pools)?);
        }
    }

    let compiled_grants = grants
        .iter()
        .map(|g| compile_grant(g, source, targets))
        .collect::<Result<Vec<_>>>()?;

    let mut per_target = HashMap::with_capacity(targets.len());
    for name in targets.keys() {
        let mut tp = TargetPolicy::default();
        for (grant, patterns) in &compiled_grants {
            if patterns.is_match(name) {
                tp.grants.push(CompiledGrant {
                    groups: grant.groups.clone(),
                    subjects: grant.subjects.clone(),
                    access: grant.access,
                });
            }
        }
        for kind in 0..OP_KINDS {
            let mut list: Vec<u32> = Vec::new();
            for (i, p) in pending.iter().enumerate() {
                if p.rule.matcher.op.fits_kind(kind)
                    && p.targets.as_ref().is_none_or(|g| g.is_match(name))
                {
                    list.push(u32::try_from(i).map_err(|_| {
                        Error::Config("too many rules (more than 4 billion)".into())
                    })?);
                }
            }
            // Stable: within one action, definition order is kept.
            list.sort_by_key(|&i| pending[i as usize].rule.action);
            tp.allow_from[kind] = list
                .iter()
                .position(|&i| pending[i as usize].rule.action == Action::Allow)
                .unwrap_or(list.len());
            tp.rules[kind] = list;
        }
        per_target.insert(name.clone(), tp);
    }

    let rules: Vec<CompiledRule> = pending.into_iter().map(|p| p.rule).collect();
    let by_name = rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect();
    let regexes = RegexSets::compile(&pools).map_err(Error::Config)?;
    Ok(Policy {
        rules,
        by_name,
        targets: per_target,
        regexes,
    })
}

/// Parses the enabled packs: `(name, source, rules)` in the order listed.
fn load_packs(options: &PolicyOptions, source: &Source) -> Result<Vec<LoadedPack>> {
    let mut loaded: Vec<LoadedPack> = Vec::new();
    for wanted in &options.packs {
        let Some((name, text)) = packs().iter().find(|(name, _)| name == wanted) else {
            let available: Vec<&str> = packs().iter().map(|(n, _)| *n).collect();
            return Err(Error::Config(format!(
                "{}: [policy] packs: there is no rule pack named {wanted:?}; the packs are: {}",
                locate(source, wanted),
                available.join(", ")
            )));
        };
        if loaded.iter().any(|(n, _, _)| n == name) {
            continue;
        }
        let pack_source = Source {
            path: format!("<pack {name}>").into(),
            text: (*text).to_string(),
        };
        let file: PackFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| pack_source.at(s))
                .unwrap_or_else(|| pack_source.path.display().to_string());
            Error::Config(format!("{at}: {}", e.message().trim_end()))
        })?;
        loaded.push((name, pack_source, file.rules));
    }
    Ok(loaded)
}

/// The position of a quoted value in the file, for options that carry no span.
fn locate(source: &Source, value: &str) -> String {
    [format!("\"{value}\""), format!("'{value}'")]
        .iter()
        .find_map(|quoted| source.text.find(quoted.as_str()))
        .map(|start| source.at(start..start))
        .unwrap_or_else(|| source.path.display().to_string())
}

fn rule_name<'a>(rule: &'a RuleConfig, at: &str) -> Result<&'a str> {
    match rule.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(Error::Config(format!(
            "{at}: a rule has no name; give every rule a unique name = \"...\" (it appears in audit records and in the message the user gets)"
        ))),
    }
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

fn compile_rule(
    spanned: &Spanned<RuleConfig>,
    source: &Source,
    targets: &BTreeMap<String, String>,
    pools: &mut RegexPools,
) -> Result<Pending> {
    let rule = spanned.get_ref();
    let at = source.at(spanned.span());
    let name = rule_name(rule, &at)?;
    let fail = |what: String| Error::Config(format!("{at}: rule {name:?}: {what}"));

    let Some(action) = rule.action else {
        return Err(fail(
            "no action; set action = \"deny\", \"review\" or \"allow\"".into(),
        ));
    };
    let message = rule.message.clone().unwrap_or_default();
    if action != Action::Allow && message.trim().is_empty() {
        return Err(fail(format!(
            "{action} rules need a message = \"...\" telling the user what was refused and what to do instead"
        )));
    }
    if action == Action::Review {
        if rule.approvers.is_empty() || rule.approvers.iter().any(|a| a.trim().is_empty()) {
            return Err(fail(
                "review rules need approvers: list the groups whose members may approve, e.g. approvers = [\"dba\"]".into(),
            ));
        }
        if rule.approvals_required == Some(0) {
            return Err(fail(
                "approvals_required must be at least 1 (use an allow rule for operations that need no approval)".into(),
            ));
        }
        if rule.timeout_secs == Some(0) {
            return Err(fail("timeout_secs must be at least 1".into()));
        }
        // Beyond a year an approval's deadline is no deadline, and far
        // beyond it the time arithmetic overflows.
        if rule
            .timeout_secs
            .is_some_and(|t| t > MAX_REVIEW_TIMEOUT_SECS)
        {
            return Err(fail(format!(
                "timeout_secs must be at most {MAX_REVIEW_TIMEOUT_SECS} (one year)"
            )));
        }
        if rule.grant_minutes.is_some_and(|m| m > MAX_GRANT_MINUTES) {
            return Err(fail(format!(
                "grant_minutes must be at most {MAX_GRANT_MINUTES} (one year)"
            )));
        }
    } else {
        let review_only = [
            ("approvers", !rule.approvers.is_empty()),
            ("timeout_secs", rule.timeout_secs.is_some()),
            ("approvals_required", rule.approvals_required.is_some()),
            ("self_approval", rule.self_approval.is_some()),
            ("grant_minutes", rule.grant_minutes.is_some()),
        ];
        if let Some((field, _)) = review_only.iter().find(|(_, set)| *set) {
            return Err(fail(format!(
                "{field} only applies to review rules, and this rule's action is \"{action}\""
            )));
        }
    }

    let sections = [
        rule.sql.is_some(),
        rule.command.is_some(),
        rule.kube.is_some(),
        rule.http.is_some(),
    ];
    let op = if sections.iter().filter(|s| **s).count() > 1 {
        return Err(fail(
            "a rule can match one kind of operation ([rules.sql], [rules.command], [rules.kube] or [rules.http]); split it into several rules".into(),
        ));
    } else if let Some(m) = &rule.sql {
        OpMatcher::Sql(SqlMatcher::compile(m, pools, action == Action::Allow).map_err(fail)?)
    } else if let Some(m) = &rule.command {
        OpMatcher::Command(CommandMatcher::compile(m, pools).map_err(fail)?)
    } else if let Some(m) = &rule.kube {
        OpMatcher::Kube(KubeMatcher::compile(m).map_err(fail)?)
    } else if let Some(m) = &rule.http {
        OpMatcher::Http(HttpMatcher::compile(m, pools).map_err(fail)?)
    } else {
        OpMatcher::Any
    };

    for pattern in &rule.targets {
        if !is_glob(pattern) && !targets.contains_key(pattern) {
            return Err(fail(format!(
                "targets: there is no target named {pattern:?}{}",
                known_targets(targets)
            )));
        }
    }
    let target_globs =
        glob_set(&rule.targets, false, false).map_err(|e| fail(format!("targets: {e}")))?;
    if let Some(globs) = &target_globs
        && !targets.keys().any(|t| globs.is_match(t))
    {
        tracing::warn!(rule = name, at = %at, "the rule's target patterns match no configured target");
    }
    let used: BTreeSet<&str> = targets.values().map(String::as_str).collect();
    for protocol in &rule.protocols {
        if !used.contains(protocol.as_str()) {
            tracing::warn!(rule = name, at = %at, protocol = %protocol, "no configured target uses this protocol");
        }
    }

    Ok(Pending {
        rule: CompiledRule {
            name: name.to_string(),
            action,
            message,
            approvers: rule.approvers.clone(),
            timeout_secs: rule.timeout_secs.unwrap_or(DEFAULT_REVIEW_TIMEOUT_SECS),
            approvals_required: rule.approvals_required.unwrap_or(1),
            self_approval: rule.self_approval.unwrap_or(false),
            grant_minutes: rule.grant_minutes.unwrap_or(0),
            origin: at.clone(),
            matcher: Matcher {
                who: Who {
                    groups: rule.groups.clone(),
                    subjects: rule.subjects.clone(),
                    except_groups: rule.except_groups.clone(),
                    except_subjects: rule.except_subjects.clone(),
                },
                protocols: rule.protocols.clone(),
                op,
            },
        },
        targets: target_globs,
    })
}

fn known_targets(targets: &BTreeMap<String, String>) -> String {
    if targets.is_empty() {
        " (no targets are configured)".to_string()
    } else {
        let names: Vec<&str> = targets.keys().map(String::as_str).collect();
        format!(" (the targets are: {})", names.join(", "))
    }
}

fn compile_grant<'a>(
    spanned: &'a Spanned<GrantConfig>,
    source: &Source,
    targets: &BTreeMap<String, String>,
) -> Result<(&'a GrantConfig, GlobSet)> {
    let grant = spanned.get_ref();
    let at = source.at(spanned.span());
    let fail = |what: String| Error::Config(format!("{at}: grant: {what}"));
    if grant.groups.is_empty() && grant.subjects.is_empty() {
        return Err(fail(
            "it names nobody; list groups = [\"...\"] and/or subjects = [\"...\"]".into(),
        ));
    }
    if grant.targets.is_empty() {
        return Err(fail(
            "it names no targets; list targets = [\"...\"] (names or glob patterns)".into(),
        ));
    }
    let mut builder = globset::GlobSetBuilder::new();
    for pattern in &grant.targets {
        let g = glob(pattern, false, false).map_err(|e| fail(format!("targets: {e}")))?;
        let single = g.compile_matcher();
        if !targets.keys().any(|t| single.is_match(t)) {
            let what = if is_glob(pattern) {
                format!("the pattern {pattern:?} matches no target")
            } else {
                format!("there is no target named {pattern:?}")
            };
            return Err(fail(format!("targets: {what}{}", known_targets(targets))));
        }
        builder.add(g);
    }
    let set = builder
        .build()
        .map_err(|e| fail(format!("targets: invalid glob patterns: {e}")))?;
    Ok((grant, set))
}
