//! Policy decision speed: `Policy::decide` runs on every statement, command
//! and API request, so this measures decisions per second for a realistic
//! policy (all three rule packs plus 20 user rules) on a mix of SQL, command,
//! Kubernetes and HTTP operations, allowed and refused.
//!
//! Run: `cargo bench -p airlock-benches --bench policy`.

// A benchmark is test code: a broken fixture should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use airlock_core::config::{Config, Source};
use airlock_core::policy::Policy;
use airlock_core::{
    Access, CommandOperation, Decision, HttpOperation, Identity, KubeOperation, Operation, SqlKind,
    SqlOperation, TableAccess,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const CONFIG: &str = r#"
[targets.prod-db]
protocol = "postgres"
[targets.staging-db]
protocol = "postgres"
[targets.analytics]
protocol = "postgres"
[targets.web-1]
protocol = "ssh"
[targets.web-2]
protocol = "ssh"
[targets.prod-cluster]
protocol = "kube"
[targets.billing-api]
protocol = "http"

[policy]
packs = ["sql-guardrails", "ssh-guardrails", "kube-guardrails"]

[[grants]]
groups = ["agents"]
targets = ["prod-*", "staging-*", "web-*", "billing-api"]

[[grants]]
groups = ["analysts"]
targets = ["analytics", "prod-db"]
access = "rules"

[[grants]]
groups = ["dba", "sre"]
targets = ["*"]

[[rules]]
name = "analysts-read"
action = "allow"
groups = ["analysts"]
[rules.sql]
kinds = ["select", "show", "explain", "set", "transaction"]

[[rules]]
name = "orders-writes-need-approval"
action = "review"
approvers = ["dba"]
message = "writes to orders need a DBA's approval"
targets = ["prod-*"]
except_groups = ["dba"]
[rules.sql]
tables = ["orders", "order_items"]
access = "write"

[[rules]]
name = "no-salaries"
action = "deny"
message = "salaries are off limits"
except_groups = ["hr"]
[rules.sql]
tables = ["hr.salar*", "payroll.*"]

[[rules]]
name = "no-ddl-for-agents"
action = "deny"
message = "schema changes go through migrations"
groups = ["agents"]
[rules.sql]
kinds = ["create", "alter", "drop"]

[[rules]]
name = "no-grants-for-agents"
action = "deny"
message = "agents may not change privileges"
groups = ["agents"]
[rules.sql]
kinds = ["grant", "revoke"]

[[rules]]
name = "no-pg-sleep"
action = "deny"
message = "pg_sleep holds connections"
[rules.sql]
text = '(?i)\bpg_sleep\s*\('

[[rules]]
name = "copy-out-needs-review"
action = "review"
approvers = ["dba"]
message = "bulk exports need a DBA's approval"
targets = ["prod-db"]
[rules.sql]
kinds = ["copy_out"]

[[rules]]
name = "no-vacuum-full"
action = "deny"
message = "VACUUM FULL locks tables; ask a DBA"
[rules.sql]
kinds = ["vacuum"]
text = '(?i)\bfull\b'

[[rules]]
name = "no-locks"
action = "deny"
message = "explicit locks are not allowed"
groups = ["agents"]
[rules.sql]
kinds = ["lock"]

[[rules]]
name = "package-installs-need-review"
action = "review"
approvers = ["sre"]
message = "package installs need an SRE"
[rules.command]
line = ['^\s*(sudo\s+)?apt(-get)?\s+(install|remove|purge)\b', '^\s*(sudo\s+)?yum\s+(install|remove)\b']

[[rules]]
name = "no-sudo-for-agents"
action = "deny"
message = "agents may not use sudo"
groups = ["agents"]
[rules.command]
line = '(^|[;&|]\s*)sudo\b'

[[rules]]
name = "no-service-restarts"
action = "review"
approvers = ["sre"]
message = "restarting services needs an SRE"
[rules.command]
line = 'systemctl\s+(restart|stop)\b'

[[rules]]
name = "no-secret-files"
action = "deny"
message = "secret files are off limits"
[rules.command]
line = '/etc/(shadow|gshadow)|\.ssh/id_'

[[rules]]
name = "no-prod-secrets"
action = "deny"
message = "secrets in prod namespaces are off limits"
except_groups = ["sre"]
[rules.kube]
resources = ["secrets"]
namespaces = ["prod-*", "payments"]

[[rules]]
name = "deploy-changes-need-review"
action = "review"
approvers = ["sre"]
message = "deployment changes need an SRE"
[rules.kube]
verbs = ["create", "update", "patch", "delete"]
api_groups = ["apps"]
resources = ["deployments", "statefulsets", "daemonsets"]

[[rules]]
name = "no-exec-in-payments"
action = "deny"
message = "no shells in payments pods"
[rules.kube]
resources = ["pods"]
subresources = ["exec", "attach"]
namespaces = ["payments"]

[[rules]]
name = "no-rbac-changes"
action = "deny"
message = "RBAC is managed by GitOps"
[rules.kube]
verbs = ["create", "update", "patch", "delete"]
api_groups = ["rbac.authorization.k8s.io"]

[[rules]]
name = "no-billing-admin"
action = "deny"
message = "the billing admin API is off limits"
[rules.http]
paths = ["/admin/**"]

[[rules]]
name = "refunds-need-review"
action = "review"
approvers = ["finance"]
message = "refunds need finance approval"
[rules.http]
methods = ["POST"]
path_regex = '^/v1/charges/[^/]+/refund$'

[[rules]]
name = "no-deletes-on-billing"
action = "deny"
message = "the billing API is append-only"
[rules.http]
methods = ["DELETE"]
"#;

fn build_policy() -> Policy {
    let source = Source {
        path: "bench.toml".into(),
        text: CONFIG.into(),
    };
    let config = Config::parse(&source).unwrap();
    let targets: BTreeMap<String, String> = config
        .targets
        .iter()
        .map(|(n, t)| (n.clone(), t.get_ref().protocol.clone()))
        .collect();
    Policy::compile(
        &config.grants,
        &config.rules,
        &config.policy,
        &targets,
        &source,
    )
    .unwrap()
}

fn sql(kind: SqlKind, text: &str, tables: &[(&str, Access)], has_where: Option<bool>) -> Operation {
    Operation::Sql(SqlOperation {
        text: text.into(),
        kind,
        object: None,
        tables: tables
            .iter()
            .map(|(name, access)| TableAccess {
                name: name.to_string(),
                access: *access,
            })
            .collect(),
        has_where,
    })
}

fn command(line: &str) -> Operation {
    Operation::Command(CommandOperation {
        line: line.into(),
        interactive: true,
    })
}

fn kube(verb: &str, group: &str, resource: &str, sub: Option<&str>, ns: Option<&str>) -> Operation {
    Operation::Kube(KubeOperation {
        verb: verb.into(),
        api_group: group.into(),
        resource: resource.into(),
        subresource: sub.map(Into::into),
        namespace: ns.map(Into::into),
        name: Some("x".into()),
    })
}

/// `(target, protocol, operation)`: what agents typically send, mostly allowed.
fn mix() -> Vec<(&'static str, &'static str, Operation)> {
    use Access::{Read, Write};
    vec![
        (
            "prod-db",
            "postgres",
            sql(
                SqlKind::Select,
                "SELECT id, email FROM users WHERE id = $1",
                &[("users", Read)],
                None,
            ),
        ),
        (
            "prod-db",
            "postgres",
            sql(
                SqlKind::Select,
                "SELECT o.id FROM orders o JOIN order_items i ON i.order_id = o.id",
                &[("orders", Read), ("order_items", Read)],
                None,
            ),
        ),
        (
            "prod-db",
            "postgres",
            sql(
                SqlKind::Insert,
                "INSERT INTO events (kind) VALUES ($1)",
                &[("events", Write)],
                None,
            ),
        ),
        (
            "prod-db",
            "postgres",
            sql(
                SqlKind::Update,
                "UPDATE orders SET status = 'shipped' WHERE id = 7",
                &[("orders", Write)],
                Some(true),
            ),
        ),
        (
            "prod-db",
            "postgres",
            sql(
                SqlKind::Delete,
                "DELETE FROM sessions",
                &[("sessions", Write)],
                Some(false),
            ),
        ),
        (
            "staging-db",
            "postgres",
            sql(
                SqlKind::Select,
                "SELECT count(*) FROM public.users",
                &[("public.users", Read)],
                None,
            ),
        ),
        (
            "staging-db",
            "postgres",
            sql(SqlKind::Transaction, "BEGIN", &[], None),
        ),
        ("web-1", "ssh", command("ls -la /var/log/nginx")),
        (
            "web-1",
            "ssh",
            command("tail -n 100 /var/log/nginx/error.log | grep upstream"),
        ),
        ("web-2", "ssh", command("rm -rf /")),
        ("web-2", "ssh", command("sudo systemctl restart nginx")),
        (
            "prod-cluster",
            "kube",
            kube("get", "", "pods", None, Some("default")),
        ),
        (
            "prod-cluster",
            "kube",
            kube("list", "apps", "deployments", None, Some("web")),
        ),
        (
            "prod-cluster",
            "kube",
            kube("get", "", "pods", Some("log"), Some("web")),
        ),
        (
            "prod-cluster",
            "kube",
            kube("delete", "", "namespaces", None, None),
        ),
        (
            "billing-api",
            "http",
            Operation::Http(HttpOperation {
                method: "GET".into(),
                path: "/v1/charges/ch_123".into(),
                query: None,
            }),
        ),
    ]
}

fn agent() -> Identity {
    Identity {
        subject: "agent-7".into(),
        groups: vec!["agents".into(), "team-web".into()],
        issuer: "https://issuer.example".into(),
    }
}

fn bench_policy(c: &mut Criterion) {
    let policy = build_policy();
    let who = agent();
    let mix = mix();
    let allowed = mix
        .iter()
        .filter(|(t, p, op)| policy.decide(&who, t, p, op) == Decision::Allow)
        .count();
    eprintln!(
        "policy bench: {} rules, mix of {} operations ({allowed} allowed)",
        policy.rules().count(),
        mix.len()
    );

    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));

    let mut i = 0;
    group.bench_function("decide/mix", |b| {
        b.iter(|| {
            let (target, protocol, op) = &mix[i % mix.len()];
            i += 1;
            black_box(policy.decide(black_box(&who), target, protocol, black_box(op)))
        })
    });

    let select = &mix[0];
    group.bench_function("decide/sql_select_allowed", |b| {
        b.iter(|| black_box(policy.decide(&who, select.0, select.1, black_box(&select.2))))
    });
    let delete = &mix[4];
    group.bench_function("decide/sql_delete_denied", |b| {
        b.iter(|| black_box(policy.decide(&who, delete.0, delete.1, black_box(&delete.2))))
    });
    let ls = &mix[8];
    group.bench_function("decide/command_allowed", |b| {
        b.iter(|| black_box(policy.decide(&who, ls.0, ls.1, black_box(&ls.2))))
    });
    let get = &mix[11];
    group.bench_function("decide/kube_allowed", |b| {
        b.iter(|| black_box(policy.decide(&who, get.0, get.1, black_box(&get.2))))
    });
    group.bench_function("check_access", |b| {
        b.iter(|| black_box(policy.check_access(black_box(&who), "prod-db")))
    });
    group.finish();

    c.bench_function("policy/parse_and_compile", |b| {
        b.iter(|| black_box(build_policy()))
    });
}

criterion_group!(benches, bench_policy);
criterion_main!(benches);
