//! The `airlock` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use airlock::client::ApiClient;
use airlock_api::views::{ApprovalView, DecideBody, RecordView, SessionDetail, SessionView};
use airlock_core::SessionId;
use airlock_core::store::{SessionFilter, Store};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Airlock: a Layer 7 access gateway for AI agents and people.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Configuration file. Without it, ./airlock.toml if present, else the embedded default.
    #[arg(long, short, global = true, env = "AIRLOCK_CONFIG")]
    config: Option<PathBuf>,
    /// Override `gateway.data_dir` from the configuration.
    #[arg(long, global = true, env = "AIRLOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// A running gateway's API (for `approvals`, and `sessions`/`replay` instead of the local store).
    #[arg(long, global = true, env = "AIRLOCK_API")]
    api: Option<String>,
    /// A CA certificate (PEM) to trust for an https:// API instead of the
    /// system's roots: the API's own certificate, if it is self-signed.
    #[arg(long, global = true, env = "AIRLOCK_API_CA")]
    api_ca: Option<PathBuf>,
    /// Access token for the API.
    #[arg(long, global = true, env = "AIRLOCK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `airlock=debug`.
    #[arg(long, global = true, env = "AIRLOCK_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway until Ctrl-C (or SIGTERM).
    Serve,
    /// Run a complete demo: a throwaway PostgreSQL with PII behind the gateway, the API, tokens and a psql command.
    #[cfg(feature = "demo")]
    Demo {
        /// Where the Postgres listener listens.
        #[arg(long, default_value = "127.0.0.1:15432")]
        pg_listen: std::net::SocketAddr,
        /// Where the API listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        api_listen: std::net::SocketAddr,
    },
    /// Check the configuration and explain every problem with its place in the file.
    CheckConfig,
    /// Mint an access token from the local issuer (for people and machine identities).
    Token {
        /// The identity's subject (user or agent name).
        #[arg(long)]
        sub: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime, e.g. 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// List recorded sessions, newest first.
    Sessions {
        /// Only this user (token subject).
        #[arg(long)]
        user: Option<String>,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
        /// Only this protocol.
        #[arg(long)]
        protocol: Option<String>,
        /// Only sessions started since: a duration ago (`2h`) or an RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        since: Option<OffsetDateTime>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replay a session as a timeline.
    Replay {
        /// The session id (from `airlock sessions`).
        session: SessionId,
        /// Print the records as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Mask standard input to standard output with the streaming masker (try a profile on real data, scrub logs).
    Mask {
        /// Pick the profile a session on this target would get.
        #[arg(long, default_value = "*")]
        target: String,
        /// ...by an identity with these comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// ...and this subject.
        #[arg(long, default_value = "airlock-mask")]
        subject: String,
        /// Print counts per detector to standard error.
        #[arg(long)]
        report: bool,
    },
    /// Audit trail commands.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Just-in-time approvals, through a running gateway's API.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ApprovalsCommand {
    /// List approval requests, newest first.
    List {
        /// Only this status: pending, approved, denied, expired, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one request.
    Show {
        /// The approval id.
        id: String,
    },
    /// Approve a request.
    Approve {
        /// The approval id.
        id: String,
        /// An optional note.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a request; the reason reaches the requester.
    Deny {
        /// The approval id.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Prove the audit chain is intact; exits 1 and names the first bad record if not.
    Verify {
        /// The checkpoint signing public key (hex) to trust; defaults to the data directory's key.
        #[arg(long)]
        public_key: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_since(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is neither a duration like 2h nor an RFC 3339 time"))?;
    Ok(OffsetDateTime::now_utc() - d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("airlock: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn config_path(cli: &Cli) -> Option<PathBuf> {
    cli.config.clone().or_else(|| {
        let local = PathBuf::from("airlock.toml");
        local.exists().then_some(local)
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (mut config, source) = airlock::load_config(config_path(&cli).as_deref())?;
    if let Some(dir) = &cli.data_dir {
        config.gateway.data_dir = dir.clone();
    }
    let data_dir = config.gateway.data_dir.clone();
    match cli.command {
        Command::Serve => serve(&config, &source).await,
        #[cfg(feature = "demo")]
        Command::Demo {
            pg_listen,
            api_listen,
        } => {
            let data_dir = cli
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("airlock-demo"));
            airlock::demo::run(airlock::demo::DemoOptions {
                pg_listen,
                api_listen,
                data_dir,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let checked = airlock::check(&config, &source, &airlock::registry())?;
            println!(
                "{}: OK ({} listeners, {} targets, connectors compiled in: {})",
                source.path.display(),
                checked.built.listeners.len(),
                checked.built.targets.len(),
                airlock::registry().protocols().join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { sub, groups, ttl } => {
            airlock_core::identity::install_crypto_provider();
            if !config.identity.local.enabled {
                bail!(
                    "the local issuer is disabled ([identity.local] enabled = false); use your identity provider's tokens"
                );
            }
            let issuer = airlock_core::identity::LocalIssuer::load_or_create(
                &data_dir,
                &config.identity.local,
            )?;
            println!("{}", issuer.mint(&sub, &groups, ttl)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions {
            user,
            target,
            protocol,
            since,
            limit,
            json,
        } => {
            let sessions: Vec<SessionView> = if let Some(api) = &cli.api {
                let client = ApiClient::new(api, cli.token.clone(), cli.api_ca.as_deref())?;
                let mut query = vec![format!("limit={limit}")];
                for (k, v) in [("user", user), ("target", target), ("protocol", protocol)] {
                    if let Some(v) = v {
                        query.push(format!("{k}={}", encode(&v)));
                    }
                }
                if let Some(t) = since {
                    query.push(format!("since={}", encode(&fmt_time(t))));
                }
                client
                    .get(&format!("/api/v1/sessions?{}", query.join("&")))
                    .await?
            } else {
                let store = open_store(&data_dir)?;
                let filter = SessionFilter {
                    user,
                    target,
                    protocol,
                    since,
                    until: None,
                    limit,
                };
                store
                    .sessions(&filter)
                    .await?
                    .iter()
                    .map(SessionView::from)
                    .collect()
            };
            print_sessions(&sessions, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { session, json } => {
            let detail: SessionDetail = if let Some(api) = &cli.api {
                let client = ApiClient::new(api, cli.token.clone(), cli.api_ca.as_deref())?;
                // Page by page: the API returns at most 10000 records at once.
                let path = format!("/api/v1/sessions/{session}");
                let mut detail: SessionDetail = client.get(&path).await?;
                while let Some(after) = detail.next_after.take() {
                    let next: SessionDetail = client.get(&format!("{path}?after={after}")).await?;
                    detail.events.extend(next.events);
                    detail.next_after = next.next_after;
                }
                detail
            } else {
                let store = open_store(&data_dir)?;
                let Some(summary) = store.session(session).await? else {
                    bail!(
                        "no session {session} in {} (list them with `airlock sessions`)",
                        data_dir.display()
                    );
                };
                let records = store.session_records(session, 0, 0).await?;
                SessionDetail {
                    session: SessionView::from(&summary),
                    events: records.iter().map(RecordView::from).collect(),
                    next_after: None,
                }
            };
            print_replay(&detail, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mask {
            target,
            groups,
            subject,
            report,
        } => {
            let key = airlock_core::mask::load_or_create_key(&data_dir)?;
            let checked = airlock::check(&config, &source, &airlock::registry())?;
            let held = checked
                .built
                .held_secrets
                .iter()
                .map(|s| s.expose().to_string())
                .collect();
            let engine = airlock_core::mask::MaskEngine::new(&config.masking, held, key)?;
            let identity = airlock_core::Identity {
                subject,
                groups,
                issuer: "cli".into(),
            };
            let masker = engine.masker(&target, &identity);
            let counts = airlock_core::mask::mask_stream(
                &masker,
                std::io::stdin().lock(),
                std::io::stdout().lock(),
            )?;
            if report {
                let total: u64 = counts.values().sum();
                eprintln!("masked {total} values with profile {:?}", masker.profile());
                for (detector, n) in &counts {
                    eprintln!("  {detector:<24} {n}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approvals { command } => {
            let api = cli
                .api
                .clone()
                .unwrap_or_else(|| airlock::public_url(&config));
            let client = ApiClient::new(&api, cli.token.clone(), cli.api_ca.as_deref())?;
            approvals(&client, command).await
        }
        Command::Audit {
            command: AuditCommand::Verify { public_key, json },
        } => {
            let store = open_store(&data_dir)?;
            let key = match public_key {
                Some(hex) => airlock_core::audit::decode_public_key(&hex)?,
                None => airlock_core::audit::public_key_in(&data_dir)?,
            };
            let report = airlock_core::audit::verify(&store, &key).await?;
            if json {
                // With the torn end, so that a monitor reading only the
                // JSON sees what the exit status says.
                let mut value = serde_json::to_value(&report)?;
                value["torn_end"] = match store.torn_end() {
                    Some(t) => serde_json::json!({
                        "segment": t.segment,
                        "offset": t.offset,
                        "bytes": t.bytes,
                    }),
                    None => serde_json::Value::Null,
                };
                println!("{value}");
            }
            // Left in place: it may be an altered last record.
            let torn = store.torn_end().map(|t| {
                format!(
                    "the last {} bytes of audit log segment {} (from byte {}) hold no whole record: the torn end of a write a crash interrupted (never acknowledged; the gateway cuts it when it starts), or an altered last record; keep a copy of the segment if no crash explains it",
                    t.bytes, t.segment, t.offset
                )
            });
            match (&torn, &report.problem) {
                (Some(torn), None) => {
                    eprintln!("audit chain NOT fully verified: {torn}");
                    return Ok(ExitCode::FAILURE);
                }
                (Some(torn), Some(_)) => eprintln!("also: {torn}"),
                _ => {}
            }
            match &report.problem {
                None => {
                    if !json {
                        println!(
                            "audit chain OK: {} records, {} signed checkpoints, last record {}",
                            report.records, report.checkpoints, report.last_seq
                        );
                        if report.sealed_through < report.last_seq {
                            // What the signatures cannot vouch for.
                            let head = report.head.map(|h| h.to_string()).unwrap_or_default();
                            println!(
                                "records {} to {} come after the last signed checkpoint: a cut of them shows only against a copy kept outside the gateway (the last record's hash is {head})",
                                report.sealed_through + 1,
                                report.last_seq
                            );
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(problem) => {
                    eprintln!(
                        "audit chain BROKEN at record {}: {problem} ({} records verified before it)",
                        problem.seq(),
                        report.records
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn approvals(client: &ApiClient, command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        ApprovalsCommand::List { status, json } => {
            let path = match status {
                Some(s) => format!("/api/v1/approvals?status={}", encode(&s)),
                None => "/api/v1/approvals".to_string(),
            };
            let list: Vec<ApprovalView> = client.get(&path).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                writeln!(
                    out,
                    "{:<36}  {:<9}  {:<14}  {:<12}  {:<24}  {:<6}  OPERATION",
                    "APPROVAL", "STATUS", "REQUESTER", "TARGET", "RULE", "GRANT"
                )?;
                for a in &list {
                    writeln!(out, "{}", approval_row(a))?;
                }
            }
        }
        ApprovalsCommand::Show { id } => {
            let a: ApprovalView = client
                .get(&format!("/api/v1/approvals/{}", encode(&id)))
                .await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&a)?)?;
        }
        ApprovalsCommand::Approve { id, reason } => {
            let a: ApprovalView = client
                .post(
                    &format!("/api/v1/approvals/{}/approve", encode(&id)),
                    &DecideBody { reason },
                )
                .await?;
            writeln!(
                out,
                "approval {} is {} ({} of {} approvals)",
                a.id,
                a.status,
                a.votes.iter().filter(|v| v.approve).count(),
                a.approvals_required
            )?;
        }
        ApprovalsCommand::Deny { id, reason } => {
            let a: ApprovalView = client
                .post(
                    &format!("/api/v1/approvals/{}/deny", encode(&id)),
                    &DecideBody {
                        reason: Some(reason),
                    },
                )
                .await?;
            writeln!(out, "approval {} is {}", a.id, a.status)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The store, for the commands that read it. A torn end is left in place
/// for `audit verify` to report (the gateway cuts it when it starts).
fn open_store(data_dir: &Path) -> anyhow::Result<airlock_store::SledStore> {
    if !data_dir.join("store").exists() {
        bail!(
            "no audit store in {} (start the gateway first, or pass --data-dir / --config)",
            data_dir.display()
        );
    }
    airlock_store::SledStore::open_to_read(data_dir).with_context(|| {
        format!(
            "cannot open the audit store in {} (a running gateway holds it; stop it or query its API)",
            data_dir.display()
        )
    })
}

async fn serve(
    config: &airlock_core::config::Config,
    source: &airlock_core::config::Source,
) -> anyhow::Result<ExitCode> {
    let runtime = airlock::Runtime::start(config, source, &airlock::registry()).await?;
    tracing::info!(
        config = %source.path.display(),
        data_dir = %config.gateway.data_dir.display(),
        listeners = runtime.addresses.len(),
        "airlock is running; press Ctrl-C to stop"
    );
    airlock::shutdown_signal().await;
    tracing::info!("shutting down: sealing the audit chain");
    runtime.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn print_sessions(sessions: &[SessionView], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for s in sessions {
            writeln!(out, "{}", serde_json::to_string(s)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<36}  {:<19}  {:<16}  {:<16}  {:<8}  {:>5}  {:>6}  ENDED",
        "SESSION", "STARTED", "USER", "TARGET", "PROTOCOL", "OPS", "DENIED"
    )?;
    for s in sessions {
        writeln!(
            out,
            "{:<36}  {:<19}  {:<16}  {:<16}  {:<8}  {:>5}  {:>6}  {}",
            s.id,
            s.started.get(..19).unwrap_or(&s.started),
            s.user,
            s.target,
            s.protocol,
            s.operations,
            s.denied,
            match (&s.ended, &s.end_reason) {
                (None, _) => "-".to_string(),
                (Some(_), reason) => reason.clone().unwrap_or_default(),
            }
        )?;
    }
    Ok(())
}

fn print_replay(detail: &SessionDetail, json: bool) -> anyhow::Result<()> {
    use airlock_core::Event;
    let mut out = std::io::stdout().lock();
    if json {
        for r in &detail.events {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(());
    }
    let s = &detail.session;
    writeln!(
        out,
        "session {} — {} on {} ({}) from {}, started {}",
        s.id, s.user, s.target, s.protocol, s.client, s.started
    )?;
    let started = OffsetDateTime::parse(&s.started, &Rfc3339).ok();
    for r in &detail.events {
        let offset = match (started, OffsetDateTime::parse(&r.time, &Rfc3339).ok()) {
            (Some(a), Some(b)) => (b - a).as_seconds_f64(),
            _ => 0.0,
        };
        let lines = match serde_json::from_value::<Event>(r.event.clone()) {
            Ok(event) => replay_lines(&event),
            Err(_) => vec![format!("{:<9} {}", r.kind, r.event)],
        };
        for line in lines {
            writeln!(out, "{offset:>+9.3}s  #{:<6} {line}", r.seq)?;
        }
    }
    Ok(())
}

/// Recorded text on one line of a replay: line breaks, tabs, backslashes
/// and other control characters escaped (quotes, which SQL is full of, as
/// they are).
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || invisible(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// Characters that change how the text around them is shown without
/// showing themselves: bidirectional overrides and isolates (which can make
/// `id > 0` read as `0 < di`), zero-width characters, line and paragraph
/// separators. Text that came from a client is printed with them escaped.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// One request in `airlock approvals list`: its operation on one line with
/// anything that could redraw the terminal escaped (the text is the
/// requester's), and how long approving it lets similar operations through.
fn approval_row(a: &ApprovalView) -> String {
    let grant = match a.grant_secs {
        0 => "-".to_string(),
        s => format!("{}m", s / 60),
    };
    format!(
        "{:<36}  {:<9}  {:<14}  {:<12}  {:<24}  {:<6}  {}",
        a.id,
        a.status,
        one_line(&a.requester),
        one_line(&a.target),
        a.rule,
        grant,
        one_line(&a.summary)
    )
}

/// How one record reads in a replay: one line, or for a result that carries
/// the rows and masking counts of its statement, one line for each.
fn replay_lines(event: &airlock_core::Event) -> Vec<String> {
    use airlock_core::{Decision, Event};
    let masked_line = |counts: &airlock_core::MaskCounts| {
        format!(
            "masked    {}",
            counts
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    let line = match event {
        Event::SessionStart {
            identity, client, ..
        } => match &client.login {
            Some(login) => format!(
                "start     groups: {}, logged in as {login:?}",
                identity.groups.join(",")
            ),
            None => format!("start     groups: {}", identity.groups.join(",")),
        },
        Event::Operation {
            operation,
            decision,
        } => {
            let verdict = match decision {
                Decision::Allow => "ALLOW".to_string(),
                Decision::Deny { rule, .. } => format!("DENY ({rule})"),
                Decision::Review { rule, .. } => format!("REVIEW ({rule})"),
            };
            format!(
                "{:<9} {verdict:<24} {}",
                operation.kind(),
                operation.summary()
            )
        }
        Event::Input { data } => format!("input     {}", one_line(data)),
        Event::Output { data } => format!("output    {}", one_line(data)),
        Event::Result {
            rows,
            error,
            duration_us,
            output,
            masked,
        } => {
            let mut lines = Vec::new();
            if let Some(data) = output {
                lines.push(format!("output    {}", one_line(data)));
            }
            if !masked.is_empty() {
                lines.push(masked_line(masked));
            }
            lines.push(match error {
                Some(e) => format!("result    error after {duration_us}µs: {e}"),
                None => format!(
                    "result    {} rows in {duration_us}µs",
                    rows.map_or("?".into(), |r| r.to_string())
                ),
            });
            return lines;
        }
        Event::Masked { counts } => masked_line(counts),
        Event::Approval {
            id,
            status,
            by,
            reason,
        } => format!(
            "approval  {id} {status}{}{}",
            by.as_ref().map_or(String::new(), |b| format!(" by {b}")),
            reason.as_ref().map_or(String::new(), |r| format!(": {r}"))
        ),
        Event::Cancel { client } => format!("cancel    requested from {}", client.addr),
        Event::Error { side, message } => format!("error     ({side:?}) {message}"),
        Event::SessionEnd { reason } => format!("end       {reason}"),
        other => format!(
            "{:<9} {}",
            other.type_name(),
            serde_json::to_string(other).unwrap_or_default()
        ),
    };
    vec![line]
}

#[cfg(test)]
mod tests {
    use super::{approval_row, replay_lines};
    use airlock_api::views::ApprovalView;
    use airlock_core::{Event, MaskCounts};

    /// A requester's statement cannot redraw the approver's terminal: a
    /// cursor move, a carriage return or a right-to-left override that would
    /// make `id > 0` show as something else is printed escaped, and the row
    /// says how long an approval lets similar operations through.
    #[test]
    fn an_approval_row_shows_the_operation_as_sent() {
        let view = |summary: &str, grant_secs: u64| ApprovalView {
            id: "a1".into(),
            status: "pending".into(),
            requester: "agent-1".into(),
            requester_groups: vec![],
            target: "demo".into(),
            protocol: "postgres".into(),
            session: "s".into(),
            summary: summary.into(),
            operation: serde_json::Value::Null,
            rule: "r".into(),
            approvers: vec![],
            approvals_required: 1,
            votes: vec![],
            created: String::new(),
            expires: String::new(),
            grant_secs,
            self_approval: false,
            grant_until: None,
            executed: false,
        };
        let row = approval_row(&view(
            "DELETE FROM t WHERE id > 0 -- \u{1b}[9D= 5\r\u{202E}x",
            3600,
        ));
        assert!(
            row.ends_with("60m     DELETE FROM t WHERE id > 0 -- \\u{1b}[9D= 5\\r\\u{202e}x"),
            "{row}"
        );
        assert!(!row.contains(['\u{1b}', '\r', '\u{202E}']), "{row}");
        // The control: plain text as it is, no grant.
        let row = approval_row(&view("DELETE FROM t WHERE id = 5", 0));
        assert!(
            row.ends_with("  -       DELETE FROM t WHERE id = 5"),
            "{row}"
        );
    }

    #[test]
    fn a_result_replays_as_its_rows_masking_and_outcome() {
        let masked = MaskCounts::from([("email".to_string(), 2)]);
        let result = Event::Result {
            rows: Some(2),
            error: None,
            duration_us: 812,
            output: Some("email\n<EMAIL>\n<EMAIL>".into()),
            masked,
        };
        assert_eq!(
            replay_lines(&result),
            [
                "output    email\\n<EMAIL>\\n<EMAIL>",
                "masked    email=2",
                "result    2 rows in 812µs",
            ]
        );
        let failed = Event::Result {
            rows: None,
            error: Some("division by zero".into()),
            duration_us: 90,
            output: None,
            masked: MaskCounts::new(),
        };
        assert_eq!(
            replay_lines(&failed),
            ["result    error after 90µs: division by zero"]
        );
    }

    #[test]
    fn recorded_text_replays_on_one_line_with_its_quotes_as_they_are() {
        let input = Event::Input {
            data: "startup settings: application_name = 'o''brien'\n1\t\\x\u{7}".into(),
        };
        assert_eq!(
            replay_lines(&input),
            ["input     startup settings: application_name = 'o''brien'\\n1\\t\\\\x\\u{7}"]
        );
    }

    #[test]
    fn a_cancel_request_replays_with_where_it_came_from() {
        let client = airlock_core::ClientInfo {
            addr: "127.0.0.1:50123".parse().unwrap(),
            listener: "pg".into(),
            login: None,
        };
        assert_eq!(
            replay_lines(&Event::Cancel { client }),
            ["cancel    requested from 127.0.0.1:50123"]
        );
    }
}
