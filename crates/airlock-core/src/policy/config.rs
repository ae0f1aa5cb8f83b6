//! What users write: `[[grants]]`, `[[rules]]` and `[policy]`.
//!
//! The `///` comments on these fields are the user documentation of the
//! policy format; `docs/policy.md` walks through them with examples.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::{Access, SqlKind};

/// `[[grants]]`: which identities may use which targets, and how.
///
/// A client reaches a target only if some grant covers it: the client is a
/// member of one of the grant's `groups` or is one of its `subjects`, and one
/// of the grant's `targets` patterns matches the target's name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// Groups whose members the grant covers (from the identity's groups
    /// claim). A grant needs `groups`, `subjects` or both; a client is covered
    /// when it is in any listed group *or* is any listed subject.
    #[serde(default, deserialize_with = "one_or_many")]
    pub groups: Vec<String>,
    /// Subjects (the token's `sub`) the grant covers, for grants to one
    /// person or one machine identity.
    #[serde(default, deserialize_with = "one_or_many")]
    pub subjects: Vec<String>,
    /// Target names or glob patterns (`"prod-db"`, `"staging-*"`). Every
    /// entry must match at least one configured target, so a typo is an error
    /// rather than a silently missing grant.
    #[serde(deserialize_with = "one_or_many")]
    pub targets: Vec<String>,
    /// `"full"` (the default): every operation that no rule denies or sends
    /// to review is allowed. `"rules"`: only operations an `allow` rule
    /// matches are allowed; everything else is denied (rule `default-deny`).
    /// When several grants cover the same client and target, the most
    /// permissive one applies.
    #[serde(default)]
    pub access: GrantAccess,
}

/// How much a grant allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantAccess {
    /// Everything no deny or review rule catches.
    #[default]
    Full,
    /// Only what an allow rule matches.
    Rules,
}

/// What a rule does when it matches. Evaluation is deny > review > allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse the operation with the rule's message.
    Deny,
    /// Hold the operation until one of the rule's approvers approves it.
    Review,
    /// Allow the operation (needed on targets granted with `access = "rules"`).
    Allow,
}

impl Action {
    /// The word used in configuration ("deny", "review", "allow").
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Review => "review",
            Action::Allow => "allow",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[rules]]`: a condition on operations and what to do when it holds.
///
/// Every condition present must hold (AND); a list means "any of these" (OR);
/// an absent or empty list places no condition. A rule may have at most one
/// operation section (`[rules.sql]`, `[rules.command]`, `[rules.kube]` or
/// `[rules.http]`); a rule without one matches every operation that its
/// identity, target and protocol conditions match.
///
/// Every list field also accepts a single string: `groups = "agents"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A unique name. It appears in audit records, in the message the user
    /// gets and in approval requests. A rule named like a rule of an enabled
    /// pack (`"sql-guardrails/opaque-sql"`) replaces that pack rule.
    #[serde(default)]
    pub name: Option<String>,
    /// `"deny"`, `"review"` or `"allow"`.
    #[serde(default)]
    pub action: Option<Action>,
    /// What the user is told when the rule denies an operation or holds it
    /// for review. Required for deny and review rules; say what was refused
    /// and what to do instead.
    #[serde(default)]
    pub message: Option<String>,
    /// `false` switches the rule off (default `true`). A disabled rule needs
    /// only its `name`, so `{ name = "ssh-guardrails/no-shutdown", enabled = false }`
    /// switches off one rule of a pack.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,

    /// The rule applies to members of any of these groups (or to `subjects`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub groups: Vec<String>,
    /// The rule applies to these subjects (or to members of `groups`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub subjects: Vec<String>,
    /// The rule never applies to members of these groups.
    #[serde(default, deserialize_with = "one_or_many")]
    pub except_groups: Vec<String>,
    /// The rule never applies to these subjects.
    #[serde(default, deserialize_with = "one_or_many")]
    pub except_subjects: Vec<String>,
    /// Target names or glob patterns the rule applies to (`"prod-*"`). A name
    /// without glob characters must be a configured target.
    #[serde(default, deserialize_with = "one_or_many")]
    pub targets: Vec<String>,
    /// Protocols the rule applies to (`"postgres"`, `"ssh"`, `"kube"`, `"http"`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub protocols: Vec<String>,

    /// Review rules: groups whose members may approve. Required for review
    /// rules, refused on others.
    #[serde(default, deserialize_with = "one_or_many")]
    pub approvers: Vec<String>,
    /// Review rules: seconds to wait for an approval before the operation is
    /// refused (default 900, 15 minutes).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Review rules: how many distinct approvers must approve (default 1).
    #[serde(default)]
    pub approvals_required: Option<u32>,
    /// Review rules: whether the requester may approve their own request when
    /// they are in an approver group (default `false`).
    #[serde(default)]
    pub self_approval: Option<bool>,
    /// Review rules: minutes for which an approval also covers the
    /// requester's further operations that this rule matches on the same
    /// target (default 0: the approval covers just this operation).
    #[serde(default)]
    pub grant_minutes: Option<u64>,

    /// Conditions on SQL statements.
    #[serde(default)]
    pub sql: Option<SqlMatch>,
    /// Conditions on command lines (SSH exec requests, lines typed into a
    /// shell, `kubectl exec` commands).
    #[serde(default)]
    pub command: Option<CommandMatch>,
    /// Conditions on Kubernetes API requests.
    #[serde(default)]
    pub kube: Option<KubeMatch>,
    /// Conditions on HTTP requests.
    #[serde(default)]
    pub http: Option<HttpMatch>,
}

fn enabled_by_default() -> bool {
    true
}

/// `[rules.sql]`: conditions on one SQL statement.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlMatch {
    /// Statement kinds: select, insert, update, delete, merge, create, alter,
    /// drop, truncate, copy_in, copy_out, grant, revoke, call, set, show,
    /// transaction, prepare, execute, deallocate, explain, listen, notify,
    /// vacuum, lock, other, opaque (a statement the classifier could not
    /// understand, such as a `DO` block).
    #[serde(default, deserialize_with = "one_or_many")]
    pub kinds: Vec<SqlKind>,
    /// For `CREATE`/`ALTER`/`DROP`: object types ("table", "schema",
    /// "database", "index", ...), compared case-insensitively.
    #[serde(default, deserialize_with = "one_or_many")]
    pub objects: Vec<String>,
    /// Tables the statement touches, as glob patterns compared
    /// case-insensitively. A pattern without a dot matches the table in any
    /// schema (`"orders"` matches `orders` and `public.orders`); a pattern with
    /// a dot matches the schema-qualified name as written (`"audit.*"`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub tables: Vec<String>,
    /// `"read"` or `"write"`: only table accesses of this kind count. With
    /// `tables`, a listed table must be accessed this way; alone, any table
    /// accessed this way matches. In allow rules `tables` and `access` must
    /// hold for every table the statement touches (and it must touch one;
    /// with `"write"`, reading a table the statement writes counts as
    /// writing it); in deny and review rules one table is enough.
    #[serde(default)]
    pub access: Option<Access>,
    /// For `UPDATE`/`DELETE`/`MERGE`: `false` matches statements without a
    /// `WHERE` clause (a MERGE: an `ON` condition) that names a column of
    /// the table it writes, `true` statements with one. Other statements never match a rule that
    /// sets this.
    #[serde(default)]
    pub has_where: Option<bool>,
    /// Regular expressions searched in the statement text (any may match).
    /// Use `(?i)` for case-insensitive matching.
    #[serde(default, deserialize_with = "one_or_many")]
    pub text: Vec<String>,
}

/// `[rules.command]`: conditions on a command line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMatch {
    /// Regular expressions searched in the command line (any may match).
    /// They are not anchored: write `^` to match at the start.
    #[serde(default, deserialize_with = "one_or_many")]
    pub line: Vec<String>,
    /// `true` matches only lines typed into an interactive shell, `false`
    /// only exec requests.
    #[serde(default)]
    pub interactive: Option<bool>,
}

/// `[rules.kube]`: conditions on a Kubernetes API request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeMatch {
    /// Verbs: get, list, watch, create, update, patch, delete, deletecollection.
    #[serde(default, deserialize_with = "one_or_many")]
    pub verbs: Vec<String>,
    /// Resources, plural, lower case ("pods", "namespaces", "nodes").
    #[serde(default, deserialize_with = "one_or_many")]
    pub resources: Vec<String>,
    /// Subresources ("exec", "attach", "portforward", "log", "status").
    #[serde(default, deserialize_with = "one_or_many")]
    pub subresources: Vec<String>,
    /// Namespaces, as glob patterns. Cluster-scoped requests have no
    /// namespace and never match a rule that sets this.
    #[serde(default, deserialize_with = "one_or_many")]
    pub namespaces: Vec<String>,
    /// Object names, as glob patterns.
    #[serde(default, deserialize_with = "one_or_many")]
    pub names: Vec<String>,
    /// API groups ("apps", "rbac.authorization.k8s.io"); `""` or `"core"` is
    /// the core group.
    #[serde(default, deserialize_with = "one_or_many")]
    pub api_groups: Vec<String>,
}

/// `[rules.http]`: conditions on an HTTP request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    /// Methods ("GET", "DELETE"), compared case-insensitively.
    #[serde(default, deserialize_with = "one_or_many")]
    pub methods: Vec<String>,
    /// Path glob patterns: `*` stays within one path segment, `**` crosses
    /// segments (`"/admin/**"`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub paths: Vec<String>,
    /// Regular expressions searched in the path (any may match).
    #[serde(default, deserialize_with = "one_or_many")]
    pub path_regex: Vec<String>,
}

/// `[policy]`: options of the policy as a whole.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOptions {
    /// Built-in rule packs to enable: "sql-guardrails", "ssh-guardrails",
    /// "kube-guardrails". Pack rules apply to every client and target.
    #[serde(default)]
    pub packs: Vec<String>,
}

/// Accepts `"x"` as well as `["x", "y"]`, so single values read naturally.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OneOrMany<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
            T::deserialize(de::value::StrDeserializer::<E>::new(s)).map(|one| vec![one])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }
    }

    d.deserialize_any(OneOrMany(PhantomData))
}
