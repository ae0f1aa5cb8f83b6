//! The protocol-neutral model every connector speaks: who is asking
//! ([`Identity`]), what they ask for ([`Operation`]), what policy says
//! ([`Decision`]) and what happened ([`Event`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The token's `sub` claim (or the local issuer's subject).
    pub subject: String,
    /// Groups read from the configured claim; grants and rules match on them.
    pub groups: Vec<String>,
    /// The `iss` that vouched for this identity.
    pub issuer: String,
}

impl Identity {
    /// Whether the identity belongs to any of `groups`.
    pub fn in_any(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }
}

/// A session's id: a UUIDv7, so ids sort by start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl SessionId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        SessionId(Uuid::now_v7())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for SessionId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SessionId(Uuid::parse_str(s)?))
    }
}

/// Who a client address counts as for per-address limits: an IPv4
/// address itself, an IPv6 address by its /64 (one host, or one site,
/// usually holds a whole /64), an IPv4-mapped IPv6 address as its IPv4
/// address.
pub fn address_holder(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// Where a client connection came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The peer address of the client's TCP connection.
    pub addr: SocketAddr,
    /// The name of the listener that accepted it.
    pub listener: String,
    /// The user name the client gave at login (PostgreSQL's startup `user`,
    /// an SSH user name). Informational: who the caller is comes from the
    /// token. Absent until the connector has read it, and in records
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
}

/// Something a client asks a target to do, in protocol-neutral form.
///
/// Connectors build these; policy rules match on their fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operation {
    /// One SQL statement.
    Sql(SqlOperation),
    /// A command line: an SSH exec request, a line typed into a shell, a `kubectl exec` command.
    Command(CommandOperation),
    /// A Kubernetes API request.
    Kube(KubeOperation),
    /// An HTTP request.
    Http(HttpOperation),
}

impl Operation {
    /// A one-line human summary, used in timelines and approval requests.
    pub fn summary(&self) -> String {
        match self {
            Operation::Sql(op) => op.text.clone(),
            Operation::Command(op) => op.line.clone(),
            Operation::Kube(op) => {
                let mut s = format!("{} {}", op.verb, op.resource);
                if let Some(sub) = &op.subresource {
                    s.push('/');
                    s.push_str(sub);
                }
                if let Some(name) = &op.name {
                    s.push(' ');
                    s.push_str(name);
                }
                if let Some(ns) = &op.namespace {
                    s.push_str(" -n ");
                    s.push_str(ns);
                }
                s
            }
            Operation::Http(op) => format!("{} {}", op.method, op.path),
        }
    }

    /// The operation's kind as a short word ("sql", "command", "kube", "http").
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::Sql(_) => "sql",
            Operation::Command(_) => "command",
            Operation::Kube(_) => "kube",
            Operation::Http(_) => "http",
        }
    }
}

/// A classified SQL statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlOperation {
    /// The statement text as the client sent it (masked before it is stored).
    pub text: String,
    /// What the statement does. Data-modifying CTEs make the whole statement a write.
    pub kind: SqlKind,
    /// For `CREATE`/`ALTER`/`DROP`: the object type ("table", "index", "schema", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Tables the statement touches, with how.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableAccess>,
    /// For `UPDATE`/`DELETE`: whether the statement has a `WHERE` clause
    /// that can tell rows apart (one naming no column counts as none); for
    /// `MERGE`, whether its `ON` condition can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_where: Option<bool>,
}

/// The kind of a SQL statement. `Opaque` is anything the classifier could not
/// understand; policy must treat it as possibly anything, never as a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum SqlKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Create,
    Alter,
    Drop,
    Truncate,
    CopyIn,
    CopyOut,
    Grant,
    Revoke,
    Call,
    Set,
    Show,
    Transaction,
    Prepare,
    Execute,
    Deallocate,
    Explain,
    Listen,
    Notify,
    Vacuum,
    Lock,
    Other,
    Opaque,
}

impl SqlKind {
    /// The name records and policies use (serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            SqlKind::Select => "select",
            SqlKind::Insert => "insert",
            SqlKind::Update => "update",
            SqlKind::Delete => "delete",
            SqlKind::Merge => "merge",
            SqlKind::Create => "create",
            SqlKind::Alter => "alter",
            SqlKind::Drop => "drop",
            SqlKind::Truncate => "truncate",
            SqlKind::CopyIn => "copy_in",
            SqlKind::CopyOut => "copy_out",
            SqlKind::Grant => "grant",
            SqlKind::Revoke => "revoke",
            SqlKind::Call => "call",
            SqlKind::Set => "set",
            SqlKind::Show => "show",
            SqlKind::Transaction => "transaction",
            SqlKind::Prepare => "prepare",
            SqlKind::Execute => "execute",
            SqlKind::Deallocate => "deallocate",
            SqlKind::Explain => "explain",
            SqlKind::Listen => "listen",
            SqlKind::Notify => "notify",
            SqlKind::Vacuum => "vacuum",
            SqlKind::Lock => "lock",
            SqlKind::Other => "other",
            SqlKind::Opaque => "opaque",
        }
    }

    /// Whether statements of this kind can change data or schema.
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            SqlKind::Select
                | SqlKind::Show
                | SqlKind::Explain
                | SqlKind::CopyOut
                | SqlKind::Transaction
                | SqlKind::Set
                | SqlKind::Listen
                | SqlKind::Deallocate
        )
    }
}

/// A table a statement touches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableAccess {
    /// The table name as written, lower-cased, schema-qualified when the statement qualified it.
    pub name: String,
    /// Whether the statement reads or writes it.
    pub access: Access,
}

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// The statement reads the table.
    Read,
    /// The statement writes the table.
    Write,
}

/// A command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOperation {
    /// The command line as typed or requested.
    pub line: String,
    /// Whether it was typed into an interactive shell (as opposed to an exec request).
    #[serde(default)]
    pub interactive: bool,
}

/// A Kubernetes API request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeOperation {
    /// The Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group ("" for the core group).
    #[serde(default)]
    pub api_group: String,
    /// Resource, plural ("pods", "namespaces").
    pub resource: String,
    /// Subresource ("exec", "log", "status").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    /// Namespace, for namespaced requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Object name, when the request names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An HTTP request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpOperation {
    /// Method, upper case.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string, if any (masked before it is stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// What policy says about an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Forward it.
    Allow,
    /// Refuse it; `message` is for the user.
    Deny {
        /// The rule that denied (or "default-deny").
        rule: String,
        /// What the user is told.
        message: String,
    },
    /// Hold it until a person in one of `approvers` approves.
    Review {
        /// The rule that asked for review.
        rule: String,
        /// Groups whose members may approve.
        approvers: Vec<String>,
        /// What the user is told while waiting.
        message: String,
    },
}

impl Decision {
    /// Whether the operation may be forwarded now.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// A count per masking detector ("email" -> 3). Never holds the values.
pub type MaskCounts = BTreeMap<String, u64>;

/// Something that happened in a session or in the gateway. Every event becomes
/// one record of the audit chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A session began.
    SessionStart {
        /// Who.
        identity: Identity,
        /// Which target.
        target: String,
        /// Which protocol ("postgres", "ssh", ...).
        protocol: String,
        /// From where.
        client: ClientInfo,
    },
    /// A client was refused before a session could start (bad token, no grant).
    AccessDenied {
        /// The subject, when the credential was good enough to name one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// The target asked for.
        target: String,
        /// Which protocol.
        protocol: String,
        /// From where.
        client: ClientInfo,
        /// Why (the same message the client got).
        reason: String,
    },
    /// An operation and policy's decision on it. Recorded before it is forwarded.
    Operation {
        /// The operation, masked.
        operation: Operation,
        /// The decision.
        decision: Decision,
    },
    /// Bytes the client sent that are not operations in themselves (terminal keystrokes, COPY data).
    Input {
        /// The data, masked, as text.
        data: String,
    },
    /// Bytes or values the target sent back, masked.
    Output {
        /// The data, masked, as text.
        data: String,
    },
    /// How an operation ended.
    Result {
        /// Rows returned or affected, when the protocol says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<u64>,
        /// The target's error, if the operation failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Time from forwarding to completion, in microseconds.
        duration_us: u64,
        /// What the operation returned (its first rows), masked. Carried
        /// here rather than in a separate `Output` record so a statement
        /// costs two records, not three.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        /// Values masked in what it returned, per detector.
        #[serde(default, skip_serializing_if = "MaskCounts::is_empty")]
        masked: MaskCounts,
    },
    /// Values were masked in this session.
    Masked {
        /// How many per detector.
        counts: MaskCounts,
    },
    /// A step of a just-in-time approval.
    Approval {
        /// The approval's id.
        id: String,
        /// requested, approved, denied, expired, cancelled, executed (in
        /// the session that ran the operation), granted (an operation a
        /// grant let through, in its session), or vote_void (a vote
        /// recorded just before the approval changed under it, which did
        /// not count).
        status: String,
        /// Who acted, if anyone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// A reason given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The client asked to stop what the session is running (PostgreSQL's
    /// `CancelRequest`, which arrives on a connection of its own and names
    /// the session by its cancel key). Recorded before the gateway acts on it.
    Cancel {
        /// Where the request came from.
        client: ClientInfo,
    },
    /// Something failed in the session.
    Error {
        /// Which side failed.
        side: crate::Side,
        /// The message.
        message: String,
    },
    /// The session ended.
    SessionEnd {
        /// Why: "client closed", "upstream closed", an error.
        reason: String,
    },
}

impl Event {
    /// The event's type name as stored ("session_start", "operation", ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::SessionStart { .. } => "session_start",
            Event::AccessDenied { .. } => "access_denied",
            Event::Operation { .. } => "operation",
            Event::Input { .. } => "input",
            Event::Output { .. } => "output",
            Event::Result { .. } => "result",
            Event::Masked { .. } => "masked",
            Event::Approval { .. } => "approval",
            Event::Cancel { .. } => "cancel",
            Event::Error { .. } => "error",
            Event::SessionEnd { .. } => "session_end",
        }
    }
}

/// The wall-clock time now, in UTC.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}
