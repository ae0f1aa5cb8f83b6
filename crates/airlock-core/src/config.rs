//! The gateway's configuration file (TOML).
//!
//! Core owns the common parts: the gateway's data directory and durability,
//! identity, grants, rules, masking, and the common keys of listeners and
//! targets (`name`, `protocol`, ...). Everything else in a listener or target
//! table belongs to the connector of that protocol, which deserializes it into
//! its own `#[serde(deny_unknown_fields)]` type.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::{Error, Result, identity, mask, policy};

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory, durability, public URL.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Trusted token issuers.
    #[serde(default)]
    pub identity: identity::IdentityConfig,
    /// The REST API and web UI listener.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Client-facing listeners, one per protocol endpoint.
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenerConfig>>,
    /// Targets by name.
    #[serde(default)]
    pub targets: BTreeMap<String, Spanned<TargetConfig>>,
    /// Which groups may use which targets.
    #[serde(default)]
    pub grants: Vec<Spanned<policy::GrantConfig>>,
    /// Operation rules.
    #[serde(default)]
    pub rules: Vec<Spanned<policy::RuleConfig>>,
    /// Rule packs and other policy options.
    #[serde(default)]
    pub policy: policy::PolicyOptions,
    /// Masking detectors, dictionaries, field rules and profiles.
    #[serde(default)]
    pub masking: mask::MaskConfig,
    /// Approval notifications.
    #[serde(default)]
    pub approvals: crate::approvals::ApprovalsConfig,
}

/// `[gateway]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the audit store, the signing keys and the local issuer's key live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// When a record counts as durable: `"os"` (written to the operating
    /// system: survives a gateway crash) or `"fsync"` (on disk: survives a
    /// machine crash; concurrent sessions share one fsync).
    #[serde(default)]
    pub durability: Durability,
    /// Sign an audit checkpoint after this many records (and at least every
    /// `checkpoint_interval_secs` while records arrive, and at shutdown).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Seconds between checkpoints while records arrive.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_secs: u64,
    /// The URL people use to reach the API (approval links point here).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Connection worker threads; 0 (the default) means one per CPU. Each
    /// connection stays on the worker that accepted it.
    #[serde(default)]
    pub workers: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            data_dir: default_data_dir(),
            durability: Durability::default(),
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval_secs: default_checkpoint_interval(),
            public_url: None,
            workers: 0,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("airlock-data")
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_interval() -> u64 {
    10
}

/// When an audit record counts as durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Written to the operating system before the action is forwarded.
    #[default]
    Os,
    /// Flushed to disk (fdatasync) before the action is forwarded.
    Fsync,
}

/// `[api]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on, e.g. "127.0.0.1:8080".
    pub listen: SocketAddr,
    /// Groups whose members may do everything in the API.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Groups whose members may list and decide approvals (a rule's
    /// `approvers` still decide who may approve its requests).
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Groups whose members may read sessions and verify the audit trail.
    #[serde(default)]
    pub auditors: Vec<String>,
    /// PEM certificate chain (leaf first): with `tls_key`, the API speaks
    /// HTTPS only. The bearer tokens it receives also log in to the
    /// listeners, so anywhere but loopback it should.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Connections served at once.
    #[serde(default = "default_api_connections")]
    pub max_connections: usize,
    /// Connections one address (an IPv6 /64) may hold; raise it when many
    /// people reach the API through one proxy.
    #[serde(default = "default_api_connections_per_address")]
    pub max_connections_per_address: usize,
}

fn default_api_connections() -> usize {
    512
}

fn default_api_connections_per_address() -> usize {
    64
}

impl ApiConfig {
    /// Whether the API speaks HTTPS (both TLS files given; a half setting
    /// is refused at start).
    pub fn has_tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// The URL scheme the API is reached with.
    pub fn scheme(&self) -> &'static str {
        if self.has_tls() { "https" } else { "http" }
    }
}

/// `[[listeners]]`: the common keys; the rest is the connector's.
#[derive(Debug, Deserialize)]
pub struct ListenerConfig {
    /// A name for logs and session records.
    pub name: String,
    /// The connector that serves it ("postgres", "ssh", "kube", "http").
    pub protocol: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Connector-specific keys.
    #[serde(flatten)]
    pub options: toml::Table,
}

/// `[targets.NAME]`: the common keys; the rest is the connector's.
#[derive(Debug, Deserialize)]
pub struct TargetConfig {
    /// The connector that reaches it.
    pub protocol: String,
    /// Shown to users in listings.
    #[serde(default)]
    pub description: Option<String>,
    /// Connector-specific keys.
    #[serde(flatten)]
    pub options: toml::Table,
}

/// The text of a configuration file, to turn byte spans into `file:line:column`.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file's path as given.
    pub path: PathBuf,
    /// Its contents.
    pub text: String,
}

impl Source {
    /// `path:line:column` for a byte offset.
    pub fn at(&self, span: Range<usize>) -> String {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(start, |nl| start - nl - 1) + 1;
        format!("{}:{line}:{column}", self.path.display())
    }
}

impl Config {
    /// Reads and parses a configuration file. Errors say where in the file.
    pub fn load(path: &Path) -> Result<(Config, Source)> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let source = Source {
            path: path.to_path_buf(),
            text,
        };
        let config = Config::parse(&source)?;
        Ok((config, source))
    }

    /// Parses configuration text. Errors say where in the text.
    pub fn parse(source: &Source) -> Result<Config> {
        let config: Config = toml::from_str(&source.text).map_err(|e| {
            let at = e
                .span()
                .map(|s| source.at(s))
                .unwrap_or_else(|| source.path.display().to_string());
            Error::Config(format!("{at}: {}", e.message().trim_end()))
        })?;
        for (name, target) in &config.targets {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(Error::Config(format!(
                    "{}: target name {name:?} must be non-empty and without spaces",
                    source.at(target.span())
                )));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for listener in &config.listeners {
            if !seen.insert(listener.get_ref().name.clone()) {
                return Err(Error::Config(format!(
                    "{}: a listener named {:?} is defined twice",
                    source.at(listener.span()),
                    listener.get_ref().name
                )));
            }
        }
        Ok(config)
    }
}

/// Deserializes connector-owned keys into the connector's own type, with an
/// error that names the place in the file and the table.
pub fn connector_options<T: serde::de::DeserializeOwned>(
    options: &toml::Table,
    what: &str,
    at: &str,
) -> Result<T> {
    T::deserialize(toml::Value::Table(options.clone()))
        .map_err(|e| Error::Config(format!("{at}: {what}: {}", e.message().trim_end())))
}

/// A secret the gateway holds (a target password, a webhook token). Written in
/// config as a reference, `{ env = "VAR" }` or `{ file = "path" }`, and
/// resolved when the config is loaded. Never printed: `Debug` shows where it
/// came from, not what it is.
#[derive(Clone)]
pub struct Secret {
    value: String,
    origin: String,
}

impl Secret {
    /// The secret's value. Use only to authenticate upstream.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where it came from ("env FOO", "file /run/secrets/x"), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A secret made in code (tests, the demo).
    pub fn from_value(value: impl Into<String>, origin: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
            origin: origin.into(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.origin)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reference {
            env: Option<String>,
            file: Option<PathBuf>,
        }
        // Untagged, so that a mistyped secret never echoes its value back in
        // the error (serde's "invalid type: string ..." would).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Reference(Reference),
            Other(serde::de::IgnoredAny),
        }
        use serde::de::Error as _;
        let Raw::Reference(r) = Raw::deserialize(d)? else {
            return Err(D::Error::custom(
                "secrets are written as { env = \"VAR\" } or { file = \"path\" }, never inline",
            ));
        };
        match (r.env, r.file) {
            (Some(var), None) => match std::env::var(&var) {
                Ok(value) if !value.is_empty() => Ok(Secret {
                    value,
                    origin: format!("env {var}"),
                }),
                _ => Err(D::Error::custom(format!(
                    "environment variable {var} is not set (or empty); export it before starting the gateway"
                ))),
            },
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(value) => Ok(Secret {
                    value: value.trim_end_matches(['\r', '\n']).to_string(),
                    origin: format!("file {}", path.display()),
                }),
                Err(e) => Err(D::Error::custom(format!(
                    "cannot read secret file {}: {e}",
                    path.display()
                ))),
            },
            _ => Err(D::Error::custom(
                "a secret needs exactly one of `env` or `file`",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source {
            path: "airlock.toml".into(),
            text: text.into(),
        }
    }

    #[test]
    fn unknown_key_is_reported_with_its_position() {
        let err = Config::parse(&src("[gateway]\ndata_dir = \"x\"\ndurabilty = \"os\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("airlock.toml:3:1"), "{err}");
        assert!(err.contains("durabilty"), "{err}");
    }

    #[test]
    fn listeners_and_targets_keep_connector_keys() {
        let cfg = Config::parse(&src(
            "[[listeners]]\nname = \"pg\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:1\"\ntls = false\n\n[targets.db]\nprotocol = \"postgres\"\nhost = \"h\"\n",
        ))
        .unwrap();
        assert_eq!(
            cfg.listeners[0].get_ref().options["tls"].as_bool(),
            Some(false)
        );
        assert_eq!(
            cfg.targets["db"].get_ref().options["host"].as_str(),
            Some("h")
        );
    }

    #[test]
    fn secrets_resolve_from_env_and_file_and_refuse_inline() {
        #[derive(Deserialize, Debug)]
        struct T {
            s: Secret,
        }
        // PATH is set in every test environment; setting a variable would need `unsafe`.
        let path = std::env::var("PATH").unwrap();
        let t: T = toml::from_str("s = { env = \"PATH\" }").unwrap();
        assert_eq!(t.s.expose(), path);
        assert_eq!(format!("{t:?}"), "T { s: Secret(env PATH) }");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let t: T = toml::from_str(&format!("s = {{ file = {:?} }}", file)).unwrap();
        assert_eq!(t.s.expose(), "s3cret");

        let err = toml::from_str::<T>("s = \"inline\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("never inline"), "{err}");
        let err = toml::from_str::<T>("s = { env = \"AIRLOCK_TEST_SECRET_UNSET\" }")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AIRLOCK_TEST_SECRET_UNSET is not set"),
            "{err}"
        );
    }
}
