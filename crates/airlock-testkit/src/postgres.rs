//! A throwaway PostgreSQL server for tests, started from the machine's
//! binaries (`initdb`, `pg_ctl`, `postgres`).
//!
//! Each [`TestPostgres`] is its own cluster in a temporary directory,
//! listening on 127.0.0.1 on a free port, with SCRAM-SHA-256 password
//! authentication for every connection and every statement logged to a file
//! ([`TestPostgres::log`]), so tests can prove what did and did not reach the
//! server. Dropping it stops the server and removes the directory.
//!
//! PostgreSQL refuses to run as root; when the tests run as root the server
//! runs as the `postgres` OS user (created if missing).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let pg = airlock_testkit::postgres::TestPostgres::start().await?;
//! assert_eq!(pg.psql("select 1").await?, "1");
//! assert!(pg.log().contains("statement: select 1"));
//! # Ok(())
//! # }
//! ```

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use tempfile::TempDir;
use tokio::process::Command;

/// The OS user the server runs as when the tests run as root.
const SERVER_OS_USER: &str = "postgres";
/// The cluster's superuser (initdb `-U`).
const SUPERUSER: &str = "postgres";
/// The database that always exists.
const DATABASE: &str = "postgres";
/// Attempts at finding a free port before giving up.
const START_ATTEMPTS: usize = 8;
/// How long `pg_ctl` waits for the server to start or stop.
const PG_CTL_WAIT_SECS: &str = "60";
/// How long to wait for the server to accept connections after `pg_ctl`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Serialises creating the `postgres` OS user between tests of one process.
static USER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running throwaway PostgreSQL server. Stopped (immediately) and deleted on drop.
#[derive(Debug)]
pub struct TestPostgres {
    dir: TempDir,
    data: PathBuf,
    log_path: PathBuf,
    bin: PathBuf,
    psql: PathBuf,
    run_as: Option<RunAs>,
    port: u16,
    password: String,
}

/// How to run server programs as another OS user.
#[derive(Debug, Clone)]
enum RunAs {
    /// `runuser -u USER -- program args...`
    Runuser(PathBuf, String),
    /// `su USER -s /bin/sh -c 'program args...'`
    Su(String),
}

impl TestPostgres {
    /// Creates a cluster in a temporary directory and starts it on a free
    /// port of 127.0.0.1. Safe to call from many tests at once.
    pub async fn start() -> Result<TestPostgres> {
        let bin = server_bin_dir()?;
        let psql = client_tool("psql", &bin)?;
        let run_as = if running_as_root() {
            Some(prepare_os_user().await?)
        } else {
            None
        };

        let dir = temp_dir(run_as.is_some())?;
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        let sockets = root.join("sock");
        let log_path = root.join("postgres.log");
        let pwfile = root.join("pwfile");
        std::fs::create_dir(&sockets).context("creating the socket directory")?;

        let password = random_password()?;
        std::fs::write(&pwfile, format!("{password}\n")).context("writing the password file")?;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))?;
        if run_as.is_some() {
            let (uid, gid) = os_user_ids(SERVER_OS_USER).await?;
            for path in [&root, &sockets, &pwfile] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("giving {} to the postgres user", path.display()))?;
            }
        }

        let mut pg = TestPostgres {
            dir,
            data,
            log_path,
            bin,
            psql,
            run_as,
            port: 0,
            password,
        };

        let initdb = pg.bin.join("initdb");
        let out = pg
            .server_command(&initdb)
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", SUPERUSER, "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .await
            .with_context(|| format!("running {}", initdb.display()))?;
        check(&out, "initdb")?;
        std::fs::remove_file(&pwfile).ok();

        let conf = format!(
            "\n# airlock-testkit\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             password_encryption = 'scram-sha-256'\n\
             log_destination = 'stderr'\n\
             logging_collector = off\n\
             log_statement = 'all'\n\
             log_connections = on\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = '16MB'\n\
             max_connections = 100\n",
            sockets.display()
        );
        append(&pg.data.join("postgresql.conf"), &conf)?;

        pg.start_on_free_port().await?;
        pg.wait_ready().await?;
        Ok(pg)
    }

    /// Starts the server, retrying on another port when the chosen one was
    /// taken between choosing it and binding it (parallel tests).
    async fn start_on_free_port(&mut self) -> Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let log_before = self.log().len();
            let out = self
                .server_command(&pg_ctl)
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log_path)
                .args(["-w", "-t", PG_CTL_WAIT_SECS])
                .arg("-o")
                .arg(format!("-p {port}"))
                .arg("start")
                .output()
                .await
                .with_context(|| format!("running {}", pg_ctl.display()))?;
            if out.status.success() {
                self.port = port;
                return Ok(());
            }
            let new_log = self.log().get(log_before..).unwrap_or_default().to_string();
            if new_log.contains("Address already in use") || new_log.contains("could not bind") {
                continue;
            }
            bail!(
                "pg_ctl start failed: {}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                tail(&new_log, 40)
            );
        }
        bail!(
            "could not start PostgreSQL on a free port after {START_ATTEMPTS} attempts\n--- server log ---\n{}",
            tail(&self.log(), 40)
        )
    }

    /// Waits until the server accepts TCP connections (bounded).
    async fn wait_ready(&self) -> Result<()> {
        let pg_isready = client_tool("pg_isready", &self.bin)?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let status = Command::new(&pg_isready)
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", SUPERUSER, "-d", DATABASE, "-t", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .with_context(|| format!("running {}", pg_isready.display()))?;
            if status.success() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "PostgreSQL on port {} did not accept connections within {READY_TIMEOUT:?}\n--- server log ---\n{}",
                    self.port,
                    tail(&self.log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host to connect to: always `127.0.0.1`.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The superuser's name (`postgres`).
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password (random per server).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The database that always exists (`postgres`).
    pub fn database(&self) -> &str {
        DATABASE
    }

    /// A connection URL for the superuser.
    pub fn url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log file (statements are logged as `LOG:  statement: ...`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The server log so far: connections and every statement it received.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Runs `sql` with the real `psql` client as the superuser over TCP
    /// (SCRAM) and returns its unaligned, tuples-only output without the
    /// trailing newline. Fails on any SQL error.
    pub async fn psql(&self, sql: &str) -> Result<String> {
        self.psql_as(SUPERUSER, &self.password, DATABASE, sql).await
    }

    /// Runs `sql` with `psql` as `user` with `password` on `database`.
    pub async fn psql_as(
        &self,
        user: &str,
        password: &str,
        database: &str,
        sql: &str,
    ) -> Result<String> {
        let out = Command::new(&self.psql)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", user, "-d", database, "-c", sql])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PGPASSWORD", password)
            .env("PGPASSFILE", "/dev/null")
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", self.psql.display()))?;
        if !out.status.success() {
            bail!(
                "psql as {user:?} on database {database:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut stdout = String::from_utf8(out.stdout).context("psql printed non-UTF-8")?;
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// Creates a login role with a (SCRAM-hashed) password.
    pub async fn create_user(&self, name: &str, password: &str) -> Result<()> {
        self.psql(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            ident(name),
            literal(password)
        ))
        .await
        .map(drop)
    }

    /// Creates a database owned by `owner`.
    pub async fn create_database(&self, name: &str, owner: &str) -> Result<()> {
        self.psql(&format!(
            "CREATE DATABASE {} OWNER {}",
            ident(name),
            ident(owner)
        ))
        .await
        .map(drop)
    }

    /// A command that runs a server program, as the `postgres` OS user when needed.
    fn server_command(&self, program: &Path) -> Command {
        Command::from(self.std_server_command(program))
    }

    fn std_server_command(&self, program: &Path) -> StdCommand {
        let mut cmd = match &self.run_as {
            None => StdCommand::new(program),
            Some(RunAs::Runuser(runuser, user)) => {
                let mut cmd = StdCommand::new(runuser);
                cmd.args(["-u", user, "--"]).arg(program);
                cmd
            }
            Some(RunAs::Su(user)) => {
                // su hands the words after `USER --` to the shell as $0, $1,
                // ...: no quoting of paths or arguments needed.
                let mut cmd = StdCommand::new("su");
                cmd.args(["-s", "/bin/sh", "-c", "exec \"$0\" \"$@\"", user, "--"])
                    .arg(program);
                cmd
            }
        };
        // The server must not pick up the caller's cluster settings, and its
        // working directory must be one it can enter.
        cmd.env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Stops the server now (`pg_ctl stop -m immediate`), synchronously.
    fn stop_now(&self) {
        let _ = self
            .std_server_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.port != 0 {
            self.stop_now();
        }
        // The TempDir field removes the directory after this.
    }
}

/// A SQL identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn check(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The last `lines` lines of a log, for error messages.
fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A port that was free a moment ago. Another process may take it before
/// the server binds it; the caller retries then.
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free TCP port")?;
    Ok(listener.local_addr()?.port())
}

fn random_password() -> Result<String> {
    let mut bytes = [0u8; 18];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the system random number generator failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    match std::fs::metadata("/proc/self") {
        Ok(meta) => meta.uid() == 0,
        Err(_) => StdCommand::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false),
    }
}

/// Makes sure the `postgres` OS user exists and says how to run as it.
async fn prepare_os_user() -> Result<RunAs> {
    let _guard = USER_LOCK.lock().await;
    if os_user_ids(SERVER_OS_USER).await.is_err() {
        let out = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/bin/sh", SERVER_OS_USER])
            .output()
            .await
            .context("running useradd to create the postgres OS user")?;
        // Another test process may have created it meanwhile: check again.
        if os_user_ids(SERVER_OS_USER).await.is_err() {
            check(&out, "useradd postgres")?;
        }
    }
    Ok(
        match find_program("runuser", &["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) {
            Some(runuser) => RunAs::Runuser(runuser, SERVER_OS_USER.to_string()),
            None => RunAs::Su(SERVER_OS_USER.to_string()),
        },
    )
}

async fn os_user_ids(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &'static str| async move {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .await
            .context("running id")?;
        check(&out, &format!("id {flag} {user}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .with_context(|| format!("id {flag} {user} printed no number"))
    };
    Ok((id("-u").await?, id("-g").await?))
}

/// A temporary directory the server's OS user can reach: when it is not the
/// current user, every ancestor must be searchable by others.
fn temp_dir(other_user: bool) -> Result<TempDir> {
    let base = std::env::temp_dir();
    let reachable = |dir: &Path| {
        dir.ancestors().all(|a| {
            std::fs::metadata(a)
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(false)
        })
    };
    let base = if !other_user || reachable(&base) {
        base
    } else {
        PathBuf::from("/tmp")
    };
    tempfile::Builder::new()
        .prefix("airlock-pg-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temporary directory in {}", base.display()))
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: from PATH,
/// /usr/local/bin or /usr/lib/postgresql/*/bin (newest first). Symlinks are
/// resolved so the programs find their share directory.
fn server_bin_dir() -> Result<PathBuf> {
    for dir in search_dirs() {
        let initdb = dir.join("initdb");
        if initdb.is_file() && dir.join("pg_ctl").is_file() && dir.join("postgres").is_file() {
            let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            let real_dir = real.parent().map(Path::to_path_buf).unwrap_or(dir);
            if ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|p| real_dir.join(p).is_file())
            {
                return Ok(real_dir);
            }
        }
    }
    bail!(
        "PostgreSQL server programs (initdb, pg_ctl, postgres) were not found on PATH, in /usr/local/bin or in /usr/lib/postgresql/*/bin; install the PostgreSQL server package"
    )
}

/// A client program (`psql`, `pg_isready`): next to the server programs, or on the search path.
fn client_tool(name: &str, bin: &Path) -> Result<PathBuf> {
    let candidate = bin.join(name);
    if candidate.is_file() {
        return Ok(candidate);
    }
    search_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!("the PostgreSQL client program {name} was not found; install the PostgreSQL client package")
        })
}

fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/local/bin"));
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    dirs
}

fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    search_dirs()
        .into_iter()
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
