//! `airlock demo`: the whole gateway in one command. Starts a throwaway
//! PostgreSQL from the machine's binaries, seeds it with a small shop schema
//! full of PII, writes a starter configuration next to the data, starts the
//! gateway with a Postgres listener and the API, prints tokens and a ready
//! `psql` command, and runs until Ctrl-C (or SIGTERM).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_testkit::postgres::{APP_USER, TestPostgres};
use anyhow::Context;

/// Where the demo listens and keeps its data.
#[derive(Debug)]
pub struct DemoOptions {
    /// The Postgres listener.
    pub pg_listen: SocketAddr,
    /// The API listener.
    pub api_listen: SocketAddr,
    /// The gateway's data directory.
    pub data_dir: PathBuf,
}

const FIRST: [&str; 10] = [
    "Ada", "Grace", "Alan", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Radia", "Edsger",
];
const LAST: [&str; 8] = [
    "Lovelace", "Hopper", "Turing", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie",
];
/// Test card numbers (they pass the Luhn check, as real ones do).
const CARDS: [&str; 4] = [
    "4111 1111 1111 1111",
    "5555 5555 5555 4444",
    "3782 822463 10005",
    "6011 1111 1111 1117",
];

fn seed_sql() -> String {
    let mut sql = String::from(
        "CREATE TABLE customers (
            id serial PRIMARY KEY,
            name text NOT NULL,
            email text NOT NULL,
            phone text,
            card_number text,
            ssn text,
            created_at timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE orders (
            id serial PRIMARY KEY,
            customer_id int NOT NULL REFERENCES customers(id),
            amount numeric(10,2) NOT NULL,
            status text NOT NULL DEFAULT 'new'
         );
         INSERT INTO customers (name, email, phone, card_number, ssn) VALUES ",
    );
    let mut rows = Vec::new();
    for i in 0..40usize {
        let (first, last) = (FIRST[i % FIRST.len()], LAST[(i * 3) % LAST.len()]);
        rows.push(format!(
            "('{first} {last}', '{}.{}{i}@example.com', '+1 415 555 {:04}', '{}', '{:03}-{:02}-{:04}')",
            first.to_lowercase(),
            last.to_lowercase(),
            1000 + i * 37,
            CARDS[i % CARDS.len()],
            100 + i * 7,
            10 + i,
            1000 + i * 131
        ));
    }
    sql.push_str(&rows.join(",\n"));
    sql.push_str(";\nINSERT INTO orders (customer_id, amount, status) SELECT 1 + (g % 40), (g * 13.37)::numeric(10,2), CASE WHEN g % 3 = 0 THEN 'shipped' ELSE 'new' END FROM generate_series(1, 120) g;");
    // The gateway logs in as the app role: it owns the shop.
    sql.push_str(&format!(
        "\nALTER TABLE customers OWNER TO {APP_USER}; ALTER TABLE orders OWNER TO {APP_USER};"
    ));
    sql
}

fn config(opts: &DemoOptions, pg: &TestPostgres, password_file: &Path) -> String {
    format!(
        r#"# Written by `airlock demo`. A starting point for your own airlock.toml.

[gateway]
data_dir = "{data}"

[identity.local]
enabled = true

[api]
listen = "{api}"
admins = ["admin"]
approvers = ["dba"]
auditors = ["dba", "audit"]

[[listeners]]
name = "pg"
protocol = "postgres"
listen = "{pg_listen}"
# Tokens travel as the password: allowed in clear text only because this
# listener is on loopback. Configure tls_cert/tls_key for anything else.
allow_cleartext_without_tls = true

[targets.demo]
protocol = "postgres"
description = "the demo shop database"
host = "127.0.0.1"
port = {port}
database = "app"
user = "{user}"
password = {{ file = "{pw}" }}
sslmode = "disable"

[[grants]]
groups = ["agents", "dba"]
targets = ["demo"]

[policy]
# DROP/TRUNCATE denied, UPDATE/DELETE without WHERE denied, opaque SQL refused.
packs = ["sql-guardrails"]

[[rules]]
name = "orders-writes-need-approval"
action = "review"
approvers = ["dba"]
message = "writes to orders need a DBA's approval"
timeout_secs = 600
[rules.sql]
kinds = ["insert", "update", "delete", "merge"]
tables = ["orders", "public.orders"]

# Rules on tables see the names a statement uses. A view, function, trigger
# or rule an agent creates could write orders under another name, and a
# rename would move the table out from under the rule above: so the agents'
# schema changes wait for a DBA too.
[[rules]]
name = "agents-schema-changes-need-approval"
action = "review"
approvers = ["dba"]
message = "schema changes by agents need a DBA's approval"
timeout_secs = 600
groups = ["agents"]
[rules.sql]
kinds = ["create", "alter", "drop", "grant", "revoke"]

[[masking.fields]]
name = "ssn"
style = "redact"
"#,
        data = opts.data_dir.display(),
        api = opts.api_listen,
        pg_listen = opts.pg_listen,
        port = pg.port(),
        user = APP_USER,
        pw = password_file.display(),
    )
}

/// Runs the demo until Ctrl-C.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    airlock_core::create_private_dir(&opts.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            opts.data_dir.display()
        )
    })?;
    eprintln!("starting a throwaway PostgreSQL from this machine's binaries...");
    let pg = TestPostgres::start()
        .await
        .context("cannot start PostgreSQL (needs initdb/postgres from PostgreSQL 15+ on PATH or in /usr/lib/postgresql)")?;
    pg.psql(&seed_sql())
        .await
        .context("cannot seed the demo database")?;
    // Over TCP only the gateway's role, with its password (which only the
    // data directory's owner can read): the test server's other logins
    // (one without a password) would let any local user read the PII
    // around the gateway.
    pg.set_hba(&format!(
        "local all all trust\nhost app {APP_USER} 127.0.0.1/32 scram-sha-256\n"
    ))
    .await
    .context("cannot restrict the demo database's logins")?;
    let password_file = pg.password_file(&opts.data_dir)?;
    let config_path = opts.data_dir.join("demo.toml");
    std::fs::write(&config_path, config(&opts, &pg, &password_file))?;
    let (config, source) = crate::load_config(Some(&config_path))?;
    let runtime = crate::Runtime::start(&config, &source, &crate::registry()).await?;

    let issuer = airlock_core::identity::LocalIssuer::load_or_create(
        &opts.data_dir,
        &config.identity.local,
    )?;
    let day = Duration::from_secs(24 * 3600);
    let agent = issuer.mint("agent-1", &["agents".to_string()], day)?;
    let dba = issuer.mint("dana", &["dba".to_string()], day)?;
    let pg_addr = runtime
        .address("pg")
        .context("the demo's postgres listener")?;
    let api = runtime.api.context("the demo's API listener")?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "airlock".into());
    println!(
        r#"
Airlock demo is running (Ctrl-C to stop).
  PostgreSQL listener  {pg_addr}  (target "demo": a shop with customers and orders)
  API                  http://{api}
  configuration        {config}

Connect as an AI agent (token for agent-1, group agents):
  export AGENT_TOKEN={agent}
  PGPASSWORD=$AGENT_TOKEN psql "host={host} port={port} dbname=demo user=agent-1 sslmode=disable"

Try:  SELECT name, email, card_number, ssn FROM customers LIMIT 3;   -- masked
      DROP TABLE customers;                                          -- blocked
      UPDATE orders SET status = 'refunded' WHERE id = 7;            -- waits for approval

Approve as a DBA (token for dana, group dba):
  export AIRLOCK_TOKEN={dba}
  {exe} approvals list --api http://{api}
  {exe} approvals approve <ID> --api http://{api}
  {exe} sessions --api http://{api}
"#,
        config = config_path.display(),
        host = pg_addr.ip(),
        port = pg_addr.port(),
    );
    crate::shutdown_signal().await;
    eprintln!("stopping: sealing the audit chain");
    runtime.shutdown().await?;
    drop(pg);
    Ok(())
}
