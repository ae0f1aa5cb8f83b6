//! A throwaway PostgreSQL server started from the machine's binaries: a
//! temporary directory, a free loopback port, password (SCRAM/md5)
//! authentication over TCP, every statement logged. Used by the end-to-end
//! tests and by `airlock demo`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

/// The gateway's login role on the throwaway server (SCRAM password).
pub const APP_USER: &str = "airlock_app";
/// A role with an md5-hashed password.
pub const MD5_USER: &str = "md5_app";
/// A role the server trusts without a password.
pub const TRUST_USER: &str = "trust_app";

/// A PostgreSQL server in a temporary directory, stopped on drop. Logs every
/// statement (`log_statement = all`) so tests can prove what reached it.
#[derive(Debug)]
pub struct TestPostgres {
    dir: tempfile::TempDir,
    port: u16,
    password: String,
    md5_password: String,
    pid: u32,
}

fn pg_bin(name: &str) -> PathBuf {
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        versions.sort();
        if let Some(dir) = versions.last() {
            let p = dir.join("bin").join(name);
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from(name)
}

/// The uid/gid to run the server as: PostgreSQL refuses to run as root.
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    let out = std::process::Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        return Ok(None);
    }
    let uid = std::process::Command::new("id")
        .args(["-u", "postgres"])
        .output()?;
    let gid = std::process::Command::new("id")
        .args(["-g", "postgres"])
        .output()?;
    if !uid.status.success() {
        bail!("running as root needs a `postgres` system user to run the test server");
    }
    Ok(Some((
        String::from_utf8_lossy(&uid.stdout).trim().parse()?,
        String::from_utf8_lossy(&gid.stdout).trim().parse()?,
    )))
}

fn random_password() -> String {
    // Time and address entropy is enough for a throwaway server's password;
    // what matters is that it is unique and recognisable in captured bytes.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let stack = &nanos as *const u128 as usize;
    format!("pw{:x}{:x}Zq", nanos, stack.rotate_left(17))
}

impl TestPostgres {
    /// Initializes and starts a server on a free loopback port, with database
    /// `app` owned by [`APP_USER`] (SCRAM), plus [`MD5_USER`] and [`TRUST_USER`].
    pub async fn start() -> anyhow::Result<TestPostgres> {
        Self::launch(None).await
    }

    /// Like [`TestPostgres::start`], with TLS (`ssl = on`) from a PEM
    /// certificate and key; clients may still connect without it.
    pub async fn start_with_tls(cert_pem: &str, key_pem: &str) -> anyhow::Result<TestPostgres> {
        Self::launch(Some((cert_pem, key_pem))).await
    }

    async fn launch(tls: Option<(&str, &str)>) -> anyhow::Result<TestPostgres> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let owner = server_user()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
        }
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        let mut initdb = tokio::process::Command::new(pg_bin("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().await.context("run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\nhost all {TRUST_USER} 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 md5\n"
            ),
        )?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let mut tls_args = Vec::new();
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (data.join("server.crt"), data.join("server.key"));
            std::fs::write(&cert_path, cert)?;
            std::fs::write(&key_path, key)?;
            // PostgreSQL refuses a key that others can read.
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&cert_path, Some(uid), Some(gid))?;
                std::os::unix::fs::chown(&key_path, Some(uid), Some(gid))?;
            }
            tls_args = vec!["-c".to_string(), "ssl=on".to_string()];
        }
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path().join("server.log"), Some(uid), Some(gid))?;
        }
        let mut postgres = tokio::process::Command::new(pg_bin("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", "log_statement=all"])
            .args(["-c", "log_line_prefix=%m [%p] %u@%d "])
            .args(["-c", "fsync=off"])
            .args(["-c", "max_connections=60"])
            .args(&tls_args)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(false);
        if let Some((uid, gid)) = owner {
            postgres.uid(uid).gid(gid);
        }
        let child = postgres.spawn().context("start postgres")?;
        let pid = child.id().context("postgres pid")?;
        let pg = TestPostgres {
            dir,
            port,
            password: random_password(),
            md5_password: random_password(),
            pid,
        };
        let mut ready = false;
        for _ in 0..200 {
            if pg.psql_in("postgres", "SELECT 1").await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !ready {
            bail!("postgres did not start:\n{}", pg.log());
        }
        pg.psql_in(
            "postgres",
            &format!(
                "CREATE ROLE {APP_USER} LOGIN PASSWORD '{}';
                 SET password_encryption = 'md5';
                 CREATE ROLE {MD5_USER} LOGIN PASSWORD '{}';
                 CREATE ROLE {TRUST_USER} LOGIN;",
                pg.password, pg.md5_password
            ),
        )
        .await?;
        pg.psql_in("postgres", &format!("CREATE DATABASE app OWNER {APP_USER}"))
            .await?;
        pg.psql_in(
            "app",
            &format!(
                "GRANT ALL ON SCHEMA public TO {MD5_USER}, {TRUST_USER};
                 ALTER DEFAULT PRIVILEGES FOR ROLE {APP_USER} IN SCHEMA public GRANT ALL ON TABLES TO {MD5_USER}, {TRUST_USER};"
            ),
        )
        .await?;
        Ok(pg)
    }

    /// Replaces the server's `pg_hba.conf` with `hba` and waits until the
    /// server has loaded it (new connections use it).
    pub async fn set_hba(&self, hba: &str) -> anyhow::Result<()> {
        let loaded = "SELECT pg_conf_load_time()";
        let before = self.psql_in("postgres", loaded).await?;
        std::fs::write(self.dir.path().join("data").join("pg_hba.conf"), hba)?;
        self.psql_in("postgres", "SELECT pg_reload_conf()").await?;
        // A new session reports when the postmaster last loaded its files.
        for _ in 0..200 {
            if self.psql_in("postgres", loaded).await? != before {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("the server did not reload pg_hba.conf:\n{}", self.log())
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of [`APP_USER`] (the gateway's credential).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The password of [`MD5_USER`].
    pub fn md5_password(&self) -> &str {
        &self.md5_password
    }

    /// Runs SQL as the superuser in database `app` (over the Unix socket,
    /// not through the gateway) and returns psql's unaligned output.
    pub async fn psql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql_in("app", sql).await
    }

    async fn psql_in(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = tokio::process::Command::new("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .await
            .context("run psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// The server's log so far (every statement it received).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Writes the gateway's credential for [`APP_USER`] to a file in `dir`
    /// and returns its path (for `password = { file = ... }`).
    pub fn password_file(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("app-password");
        std::fs::write(&path, &self.password)?;
        Ok(path)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown, no checkpoint; the directory goes away.
        let _ = std::process::Command::new("kill")
            .args(["-QUIT", &self.pid.to_string()])
            .status();
        for _ in 0..100 {
            let alive = std::process::Command::new("kill")
                .args(["-0", &self.pid.to_string()])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
