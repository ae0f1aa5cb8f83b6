//! The first run as a user makes it: `airlock demo` (real PostgreSQL from the
//! machine's binaries), the example agent `examples/agents/psycopg_agent.py`
//! (Python psycopg 3) working through it, a DBA approving its write with
//! `airlock approvals`, then `airlock sessions`, `airlock replay`, and
//! `airlock audit verify` once the demo has been asked to stop.
#![cfg(feature = "demo")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `airlock demo` and what its banner told the user.
struct Demo {
    child: Child,
    data_dir: PathBuf,
    pg_port: String,
    api: String,
    agent_token: String,
    dba_token: String,
}

impl Demo {
    fn start(dir: &Path) -> Demo {
        let data_dir = dir.join("airlock-demo");
        let log = std::fs::File::create(dir.join("demo.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(["demo", "--pg-listen", "127.0.0.1:0", "--api-listen"])
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // From here on a failed assertion still stops the demo (Drop).
        let mut demo = Demo {
            child,
            data_dir,
            pg_port: String::new(),
            api: String::new(),
            agent_token: String::new(),
            dba_token: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        // The banner's last line is the sessions command.
        while !banner
            .iter()
            .any(|l: &String| l.contains(" sessions --api "))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => banner.push(line),
                Err(_) => {
                    panic!(
                        "the demo printed no banner: {banner:?}\n{}",
                        std::fs::read_to_string(dir.join("demo.log")).unwrap_or_default()
                    );
                }
            }
        }
        let find = |marker: &str| -> String {
            let line = banner.iter().find(|l| l.contains(marker)).unwrap();
            let at = line.find(marker).unwrap() + marker.len();
            line[at..].split_whitespace().next().unwrap().to_string()
        };
        let pg = find("PostgreSQL listener");
        demo.pg_port = pg.rsplit(':').next().unwrap().to_string();
        demo.api = find("API");
        demo.agent_token = find("export AGENT_TOKEN=");
        demo.dba_token = find("export AIRLOCK_TOKEN=");
        demo
    }

    /// Runs an `airlock` command against the demo's API as the DBA.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(args)
            .args(["--api", &self.api])
            .env("AIRLOCK_TOKEN", &self.dba_token)
            .output()
            .unwrap()
    }

    /// Starts `psql` against the demo's listener as `user` with `token`.
    fn psql(&self, user: &str, token: &str, sql: &str) -> Client {
        let dsn = format!(
            "host=127.0.0.1 port={} dbname=demo user={user} sslmode=disable",
            self.pg_port
        );
        Client(
            Command::new("psql")
                .args(["-X", "-tA", "-v", "ON_ERROR_STOP=1", &dsn, "-c", sql])
                .env("PGPASSWORD", token)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// The pending approval request for a statement containing `statement`,
    /// which `client` waits for; fails if the client ends first.
    fn pending(&self, statement: &str, client: &mut Client) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let list = self.cli(&["approvals", "list", "--status", "pending"]);
            assert!(list.status.success(), "{}", text(&list));
            let list = String::from_utf8_lossy(&list.stdout).to_string();
            if let Some(row) = list.lines().skip(1).find(|l| l.contains(statement)) {
                return row.to_string();
            }
            if client.0.try_wait().unwrap().is_some() {
                let out = client.output();
                panic!(
                    "the client ended before asking for approval of {statement:?}: {}",
                    text(&out)
                );
            }
            assert!(
                Instant::now() < deadline,
                "no approval request for {statement:?} appeared"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` (`INT` is Ctrl-C); true if the demo exited cleanly.
    fn stop(&mut self, signal: &str) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Ctrl-C first so the demo stops its PostgreSQL; a kill would leave
        // that server running.
        if self.child.try_wait().ok().flatten().is_none() && !self.stop("INT") {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client's process (the example agent, `psql`), killed if the test
/// fails first.
struct Client(Child);

impl Client {
    /// Waits for the client and collects what it printed (a few lines: the
    /// pipes cannot fill up while the other is read).
    fn output(&mut self) -> Output {
        use std::io::Read;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(p) = self.0.stdout.as_mut() {
            p.read_to_end(&mut stdout).unwrap();
        }
        if let Some(p) = self.0.stderr.as_mut() {
            p.read_to_end(&mut stderr).unwrap();
        }
        Output {
            status: self.0.wait().unwrap(),
            stdout,
            stderr,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_example_agent_works_through_the_demo_and_the_tour_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(dir.path());

    // The data directory (records, keys, the database password) is its
    // owner's alone, and the database behind the demo takes no login over
    // TCP but the gateway's: nobody on the machine goes around Airlock.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&demo.data_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "data directory mode {mode:o}");
    let segments: Vec<_> = std::fs::read_dir(demo.data_dir.join("log"))
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.path().extension().is_some_and(|e| e == "log"))
        .collect();
    assert!(!segments.is_empty());
    for segment in segments {
        let mode = segment.metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "log segment mode {mode:o}");
    }
    let toml = std::fs::read_to_string(demo.data_dir.join("demo.toml")).unwrap();
    let db_port = toml
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .unwrap()
        .trim()
        .to_string();
    let direct = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &db_port,
            "-U",
            "trust_app",
            "-d",
            "app",
        ])
        .args(["-XAtw", "-c", "SELECT count(*) FROM customers"])
        .output()
        .unwrap();
    assert!(
        !direct.status.success()
            && String::from_utf8_lossy(&direct.stderr).contains("no pg_hba.conf entry"),
        "{direct:?}"
    );

    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agents/psycopg_agent.py");
    let dsn = format!(
        "host=127.0.0.1 port={} dbname=demo user=agent-1 sslmode=disable",
        demo.pg_port
    );
    let mut agent = Client(
        Command::new("python3")
            .arg(&script)
            .args(["--dsn", &dsn, "--approval-timeout", "60"])
            .env("AGENT_TOKEN", &demo.agent_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    // The agent's refund waits for a DBA, who approves it from the CLI.
    let pending = demo.pending("UPDATE orders SET status", &mut agent);
    assert!(pending.contains("agent-1"), "{pending}");
    let id = pending.split_whitespace().next().unwrap();
    let approved = demo.cli(&["approvals", "approve", id]);
    assert!(
        text(&approved).contains("is approved"),
        "{}",
        text(&approved)
    );

    let out = agent.output();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    // Masked on the way out: placeholders, never the seeded emails or cards.
    assert!(
        said.contains("(1, 'Ada Lovelace', '<EMAIL>', '<CARD>')"),
        "{said}"
    );
    assert!(
        !said.contains("@example.com") && !said.contains("4111"),
        "{said}"
    );
    // Reads run; the unbounded delete and the drop are refused with the
    // rule's reason while the session goes on; the write with a WHERE
    // clause runs once approved.
    assert!(said.contains("  (80,)"), "{said}");
    assert!(
        said.contains("refused: denied by rule sql-guardrails/no-unbounded-write"),
        "{said}"
    );
    assert!(
        said.contains("refused: denied by rule sql-guardrails/no-drop"),
        "{said}"
    );
    assert!(
        said.contains(&format!("waiting for approval {id}")),
        "the agent is told what it waits for: {said}"
    );
    assert!(said.contains("  UPDATE 1"), "{said}");
    assert!(said.contains("  (7, 'refunded')"), "{said}");

    // The tour's commands see the same session.
    let sessions = demo.cli(&["sessions", "--user", "agent-1"]);
    let sessions = text(&sessions);
    let row = sessions
        .lines()
        .find(|l| l.contains("agent-1"))
        .unwrap_or_else(|| panic!("{sessions}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[6], "2", "two statements denied: {row}");
    let replay = demo.cli(&["replay", fields[0]]);
    let replay = text(&replay);
    assert!(
        replay.contains("DENY (sql-guardrails/no-drop)") && replay.contains("<EMAIL>"),
        "{replay}"
    );
    assert!(!replay.contains("@example.com"), "{replay}");

    // A view is a second name for orders that the orders rule would not
    // see: the agent's CREATE VIEW waits for a DBA, who refuses it, and the
    // view never exists. The same statement from the DBA runs at once.
    let view = "CREATE VIEW orders_view AS SELECT * FROM orders";
    let mut psql = demo.psql("agent-1", &demo.agent_token, view);
    let pending = demo.pending("CREATE VIEW orders_view", &mut psql);
    assert!(
        pending.contains("agents-schema-changes-need-approval"),
        "{pending}"
    );
    let id = pending.split_whitespace().next().unwrap();
    let denied = demo.cli(&["approvals", "deny", id, "--reason", "no views"]);
    assert!(denied.status.success(), "{}", text(&denied));
    let out = psql.output();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no views"), "{}", text(&out));
    let exists = "SELECT count(*) FROM pg_views WHERE viewname = 'orders_view'";
    let out = demo.psql("dana", &demo.dba_token, exists).output();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\n",
        "{}",
        text(&out)
    );
    let out = demo.psql("dana", &demo.dba_token, view).output();
    assert!(
        out.status.success() && text(&out).contains("CREATE VIEW"),
        "{}",
        text(&out)
    );
    let out = demo.psql("dana", &demo.dba_token, exists).output();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n",
        "{}",
        text(&out)
    );

    // As a service manager or `timeout` stops it; Ctrl-C takes the same
    // path. Either way the chain is sealed and PostgreSQL stopped.
    assert!(
        demo.stop("TERM"),
        "the demo did not stop cleanly on SIGTERM"
    );
    let config = std::fs::read_to_string(demo.data_dir.join("demo.toml")).unwrap();
    let port = config
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .unwrap();
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
        "the demo's PostgreSQL on port {port} outlived the demo"
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&demo.data_dir)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && text(&verify).contains("audit chain OK"),
        "{}",
        text(&verify)
    );
}
