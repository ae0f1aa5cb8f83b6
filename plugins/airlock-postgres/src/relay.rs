//! The session relay: two halves running side by side on one task.
//!
//! The *client half* reads the client's messages, judges every statement
//! (simple `Query`, `Parse`, fast-path calls), records it durably, then
//! forwards it. For every message that gets an answer it first tells the
//! server half what to expect ([`Pending`]), in order, before writing to the
//! server. A refused statement is not forwarded: its place in that queue
//! holds the gateway's own error instead.
//!
//! The *server half* is the only writer to the client. It reads the server's
//! messages, matches them to the queue (so results, errors and the gateway's
//! own refusals reach the client in the order the client asked), masks
//! values, and records outputs and results. After an error in the extended
//! protocol it drops what the server will skip until `Sync`, exactly as the
//! server does, and the `ReadyForQuery` that follows carries the server's
//! real transaction status.

use std::borrow::Cow;
use std::collections::VecDeque;

// The relay's maps are looked up on every statement (portal, statement,
// columns): foldhash instead of SipHash, as the classifier's caches. Seeded
// per map, and a client can only crowd its own session's maps.
use foldhash::{HashMap, HashMapExt, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Instant;

use airlock_core::mask::FieldPlan;
use airlock_core::{
    Decision, Error, Event, MaskCounts, Operation, Result, Session, SqlKind, SqlOperation,
};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use pgwire::messages::data::{ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{Bind, Parse};
use pgwire::messages::response::{ErrorResponse, NoticeResponse, NotificationResponse};
use pgwire::messages::startup::ParameterStatus;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};

use crate::classify::{Classified, Classifier, Lineage};
use crate::frame::{self, Frame, FrameReader, Peer, Severity, sqlstate};
use crate::rows::{self, Column};
use crate::upstream::UpstreamStream;
use airlock_core::ClientStream;

/// A Parse the server must fail (a syntax error at "airlock"), sent in
/// place of a refused statement so that the refusal does to the server's
/// state what an error there would: a pipeline's earlier statements roll
/// back at Sync, and a transaction block is aborted. The name keeps the
/// client's unnamed statement untouched; a failed Parse creates nothing.
/// The text is what the server's log shows.
const ROLLBACK_PARSE: &[u8] =
    b"airlock_refused\0airlock refused a statement here, which fails the transaction as an error would\0\0\0";

/// COPY data is recorded (durably, before it is forwarded) in chunks of about this size.
const COPY_RECORD_CHUNK: usize = 64 * 1024;

/// What the relay needs besides the two connections.
pub(crate) struct Context<'a> {
    pub(crate) session: &'a Session,
    pub(crate) classifier: &'a Classifier,
    /// Result rows recorded per statement.
    pub(crate) record_rows: usize,
    /// Stops a statement waiting for approval when the client cancels.
    pub(crate) cancel: Arc<crate::cancel::Local>,
    /// The target's column names, for masking rules.
    pub(crate) catalog: Option<Arc<crate::catalog::Catalog>>,
}

/// The two connections.
pub(crate) struct Wires {
    pub(crate) client_read: FrameReader<ReadHalf<ClientStream>>,
    pub(crate) client_write: BufWriter<WriteHalf<ClientStream>>,
    pub(crate) server_read: FrameReader<ReadHalf<UpstreamStream>>,
    pub(crate) server_write: BufWriter<WriteHalf<UpstreamStream>>,
    /// The server's transaction status at the start.
    pub(crate) status: u8,
}

/// Relays until either side ends; returns why the session ended.
pub(crate) async fn run(cx: &Context<'_>, wires: Wires) -> Result<String> {
    let actions = Arc::new(Actions::default());
    let param_types = Arc::new(Mutex::new(HashMap::new()));
    let outcomes = Arc::new(Outcomes::default());
    let columns: ColumnsCache = Arc::new(Mutex::new(HashMap::new()));
    let mut client = ClientHalf {
        cx,
        reader: wires.client_read,
        server: wires.server_write,
        actions: actions.clone(),
        skipping: false,
        prepared: Prepared::default(),
        cursors: Lineages::default(),
        statements: HashMap::new(),
        portals: Portals::new(),
        seq: 0,
        portal_epoch: 0,
        param_types: param_types.clone(),
        outcomes: outcomes.clone(),
        columns: columns.clone(),
        generation: 0,
        copy: Vec::new(),
        copy_bytes: 0,
        copy_record: rows::CopyInRecord::default(),
        settings_changed: false,
        copy_ends: 0,
        copy_armed: false,
        ignored_syncs: false,
        acts: 0,
        acts_at_sync: 0,
        failable: 0,
        failable_at_sync: 0,
        copy_in_until: None,
        copy_in_by_query: false,
    };
    let mut server = ServerHalf {
        cx,
        reader: wires.server_read,
        client: wires.client_write,
        actions,
        inbox: VecDeque::new(),
        queue: VecDeque::new(),
        status: wires.status,
        skipping: false,
        copied_in: false,
        portals: HashMap::new(),
        param_types,
        outcomes,
        columns,
        last_description: None,
    };
    tokio::select! {
        r = client.run() => r,
        r = server.run() => r,
    }
}

/// What the server half expects next, one entry per client message that
/// gets an answer, in order.
enum Pending {
    /// A simple query: answers until ReadyForQuery.
    Query(QueryTrack),
    /// A Parse; the statement's generation when the client half waits to
    /// learn whether the server made it (see [`Outcomes`]).
    Parse(Option<u64>),
    /// A Bind; an id when the client half waits to learn whether it took
    /// effect ([`Outcomes`]).
    Bind(Option<u64>),
    /// Describe of a statement (ParameterDescription, then RowDescription or
    /// NoData), with its Parse generation when the gateway saw the Parse.
    DescribeStatement(Option<u64>),
    /// Describe of a portal. `hidden`: the gateway asked to learn the
    /// columns it must mask, the client did not; the answer is not forwarded.
    DescribePortal {
        name: Bytes,
        hidden: bool,
        /// Where the answer is remembered for later portals of the same
        /// statement and result formats.
        key: Option<ColumnsKey>,
        /// What the portal's computed columns are made of.
        lineage: Option<Arc<Lineage>>,
    },
    Execute {
        portal: Bytes,
        track: Track,
    },
    /// Close of a statement, or of the named portal; an id when the client
    /// half waits to learn whether it took effect ([`Outcomes`]).
    Close {
        portal: Option<Bytes>,
        watch: Option<u64>,
    },
    /// A Sync, and how many COPY inputs the client had ended (CopyDone or
    /// CopyFail) before it. The server ignores a Sync that arrives while it
    /// is in copy-in mode, so a driver running `COPY FROM STDIN` through
    /// the extended protocol (Execute, Sync, the data, CopyDone, Sync) gets
    /// one ReadyForQuery for two Syncs.
    Sync {
        copy_ends: u64,
        seq: u64,
    },
    /// A fast-path function call: answers until ReadyForQuery.
    FunctionCall(Track),
    /// A refused message: the gateway's error; the rest until Sync is
    /// skipped (the client half drops it; after a simple query the gateway
    /// sends the Sync itself).
    Refused(Bytes),
    /// The gateway's failing Parse ([`ROLLBACK_PARSE`]): its error is not
    /// the client's (the client gets the `Refused` error queued after it).
    Rollback,
}

impl Pending {
    /// The id under which the client half waits for this message's outcome.
    fn watch(&self) -> Option<u64> {
        match self {
            Pending::Parse(watch) | Pending::Bind(watch) | Pending::Close { watch, .. } => *watch,
            _ => None,
        }
    }
}

/// Messages from the client half to the server half.
enum Action {
    Expect(Pending),
    /// A notice for the client now (approval waits).
    Notice(Bytes),
    /// A fatal error for the client; the session ends once it is written.
    Fatal(Bytes, String),
}

/// What the client half tells the server half, in order.
///
/// Both halves run in one task. Most messages announce an answer the server
/// will send, and the server half reads the queue before it matches that
/// answer, so they need no wake-up (a wake-up of the running task costs a
/// whole extra poll of the connection). Only what the server half must act
/// on without a server answer (a refusal, a notice, a fatal error) wakes it.
/// The server half checks for that on every turn of its loop, so it is a
/// flag and a waker slot rather than a `Notify` (whose waiter list costs a
/// lock to join and another to leave, twice per statement).
#[derive(Default)]
struct Actions {
    queue: Mutex<VecDeque<Action>>,
    /// Whether `queue` holds anything: the server half looks on every
    /// message it reads (every row), and most of the time nothing is there.
    queued: AtomicBool,
    /// Set after queuing an action the server half must act on by itself.
    attention: AtomicBool,
    /// The server half's waker while it waits.
    waker: AtomicWaker,
    /// The place ([`ClientHalf::seq`]) of the latest Sync or Query the server
    /// answered out of any transaction: the portals of every message before
    /// it are gone on the server.
    idle_through: AtomicU64,
    /// The place of the latest Sync or query the server answered with a
    /// ReadyForQuery.
    ready_through: AtomicU64,
}

impl Actions {
    fn send(&self, action: Action) {
        let wake = match &action {
            Action::Expect(Pending::Refused(_)) => true,
            Action::Expect(_) => false,
            Action::Notice(_) | Action::Fatal(..) => true,
        };
        {
            let mut q = self.queue();
            q.push_back(action);
            self.queued.store(true, Ordering::Release);
        }
        if wake {
            self.nudge();
        }
    }

    /// Has the server half look at its queue now, without a server answer
    /// to wake it (one that only moves messages the server skipped).
    fn nudge(&self) {
        self.attention.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Completes once an action needs the server half's attention (at once
    /// if one came since it last looked).
    async fn attention(&self) {
        std::future::poll_fn(|cx| {
            if self.attention.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // An action queued between the check and the registration woke
            // nobody: look again.
            if self.attention.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Moves everything queued into `into` (both keep their allocations).
    fn take(&self, into: &mut VecDeque<Action>) {
        if !self.queued.load(Ordering::Acquire) {
            return;
        }
        let mut q = self.queue();
        std::mem::swap(&mut *q, into);
        self.queued.store(false, Ordering::Release);
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Action>> {
        // Plain data; no invariant spans a panic.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What is known about one statement's execution, for its record.
struct Track {
    started: Instant,
    columns: Option<Arc<Vec<Column>>>,
    rows: Vec<String>,
    /// Rows returned so far.
    count: u64,
    counts: MaskCounts,
    /// Set while a COPY OUT streams.
    copy_out: Option<CopyOut>,
    /// What an execution's statement returns (for a COPY OUT's columns).
    lineage: Option<Arc<Lineage>>,
    error: Option<String>,
}

impl Track {
    fn new() -> Track {
        Track {
            started: Instant::now(),
            columns: None,
            rows: Vec::new(),
            count: 0,
            counts: MaskCounts::new(),
            copy_out: None,
            lineage: None,
            error: None,
        }
    }
}

/// How COPY OUT data is masked.
enum CopyOut {
    /// One text or CSV row per message.
    Text,
    /// One text or CSV row per message, masked field by field by the
    /// columns' rules.
    Fields(rows::CopyFields),
    /// One text or CSV row per message that cannot be split into fields:
    /// masked whole by this plan.
    Withheld(FieldPlan),
    /// The binary format, parsed across messages.
    Binary(rows::BinaryCopy),
}

struct QueryTrack {
    current: Track,
    /// The query's statements, and which of them the server runs now
    /// (for what their computed columns are made of).
    statements: Arc<[Classified]>,
    at: usize,
    /// For a query that runs statements by name (`EXECUTE`, `FETCH`): what
    /// each of its statements returns (empty for any other query).
    runs: Vec<Option<Arc<Lineage>>>,
    /// The query's place among the client's messages ([`ClientHalf::seq`]).
    seq: u64,
}

// ---------------------------------------------------------------------------
// Client half

/// A statement prepared with Parse.
struct Statement {
    /// The text, masked, for records (shared with its portals, which record
    /// the statement they were bound to, whatever the name means later).
    text: Arc<str>,
    /// Parameter types given in Parse.
    types: Vec<u32>,
    /// Unique per Parse in this session: a statement name may be parsed
    /// again with other text, and its columns must not be taken for the
    /// new statement's.
    generation: u64,
    /// Its columns' key in the [`ColumnsCache`]: the generation, and a new
    /// one from the same counter each time SQL may have replaced the
    /// statement. Columns learned before that are not taken for it; the
    /// next execution describes it afresh, and the ones after take that.
    columns_id: u64,
    /// Operations under review: each execution waits for its own approval.
    review: Option<Arc<[SqlOperation]>>,
    /// What the server holds under this name if this Parse is not made
    /// there, while that is unknown and matters: kept when it, or one
    /// before it, is under review.
    previous: Option<Box<Statement>>,
    /// SQL `PREPARE`, `DEALLOCATE` or `DISCARD` may have replaced it on the
    /// server since: its text is no longer taken for what runs (a Bind of
    /// the name is judged as what SQL prepared; its records name it), and
    /// its columns were given a new `columns_id`.
    sql_changed: bool,
    /// Running it may prepare or deallocate statements: SQL `PREPARE`,
    /// `DEALLOCATE`, `DISCARD`, or something the classifier could not see
    /// into (a `DO` block, say).
    changes_names: bool,
    /// Running it may change what the server's prepared statements return
    /// ([`changes_columns`]).
    changes_columns: bool,
    /// It begins or ends a transaction ([`ends_settings`]).
    ends_settings: bool,
    /// Running it may start a COPY FROM STDIN (or it is opaque).
    copies_in: bool,
    /// A statement that runs another by name — SQL `EXECUTE name`, or
    /// `FETCH` from a portal: what the name stands for is known only when
    /// it runs (a later Parse, `PREPARE` or Bind may give it another
    /// statement), so each portal of it is judged at its Execute.
    executes: Option<Arc<[Classified]>>,
    /// What its computed result columns are made of.
    lineage: Option<Arc<Lineage>>,
}

impl Statement {
    /// This statement and the ones the server may hold instead of it, while
    /// that is unknown.
    fn chain(&self) -> impl Iterator<Item = &Statement> {
        std::iter::successors(Some(self), |s| s.previous.as_deref())
    }

    /// What this statement, or one the server may hold instead of it,
    /// runs by name ([`Statement::executes`]).
    fn runs_by_name(&self) -> Option<Arc<[Classified]>> {
        if self.previous.is_none() {
            return self.executes.clone();
        }
        let all: Vec<Classified> = self
            .chain()
            .filter_map(|s| s.executes.as_deref())
            .flatten()
            .cloned()
            .collect();
        (!all.is_empty()).then(|| Arc::from(all))
    }
}

/// Parameter types the server described, by statement (Parse generation,
/// not name: a pipelined Describe of a statement may be answered after the
/// client parsed another under the same name).
type ParamTypes = Arc<Mutex<HashMap<u64, Vec<u32>>>>;

/// Whether watched messages took effect on the server (by an id from the
/// Parse generation counter): filled by the server half, read by the
/// client half.
///
/// A Parse, Bind or Close can fail on the server, or be skipped after an
/// earlier error, and then the server keeps the statement or portal it had
/// under that name. When that one still waits for a judgement (review at
/// each execution, an `EXECUTE` judged when it runs), the gateway must know
/// which of the two the server will run, so those messages are watched.
#[derive(Default)]
struct Outcomes {
    made: Mutex<HashMap<u64, bool>>,
    answered: tokio::sync::Notify,
}

impl Outcomes {
    fn set(&self, generation: u64, made: bool) {
        if let Ok(mut m) = self.made.lock() {
            m.insert(generation, made);
        }
        self.answered.notify_waiters();
    }

    /// The outcome of a Parse, once known (and then forgotten).
    fn take(&self, generation: u64) -> Option<bool> {
        self.made.lock().ok()?.remove(&generation)
    }
}

/// A statement (by [`Statement::columns_id`]) and the result formats of a Bind.
type ColumnsKey = (u64, Vec<i16>);

/// Result columns learned from the server, per statement and result formats
/// (`None`: no rows), so every Execute of a prepared statement does not need
/// a hidden Describe. Filled by the server half, read by the client half.
type ColumnsCache = Arc<Mutex<HashMap<ColumnsKey, Option<Arc<Vec<Column>>>>>>;

/// Parses of one name whose outcome is unknown, each keeping the one
/// before, before a Parse waits for the server's answers.
const MAX_UNSETTLED_PARSES: usize = 32;

/// Beyond this many entries the cache starts over (entries of statements
/// parsed again are dropped as they go, but a pipelined re-Parse can race
/// the answer that fills them).
const COLUMNS_CACHE_MAX: usize = 1024;

/// What a portal no Bind here made returns: a cursor's rows when SQL
/// declared one of that name, else anything.
fn unknown_portal(cursor: Option<Arc<Lineage>>) -> Option<Arc<Lineage>> {
    cursor.or_else(|| Some(Arc::new(Lineage::anything())))
}

/// Remembers a statement's columns for its later portals.
fn remember(cache: &ColumnsCache, key: Option<ColumnsKey>, columns: Option<Arc<Vec<Column>>>) {
    let (Some(key), Ok(mut cache)) = (key, cache.lock()) else {
        return;
    };
    if cache.len() >= COLUMNS_CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, columns);
}

/// A portal made with Bind.
struct Portal {
    statement: Bytes,
    /// The cache key of its columns, when its statement was parsed here.
    key: Option<ColumnsKey>,
    /// The parameters, rendered and masked, for records.
    params: String,
    /// Whether the client described it (so the server half learns its columns).
    described: bool,
    /// Its Bind's place among the client's messages ([`ClientHalf::seq`]).
    seq: u64,
    /// [`ClientHalf::portal_epoch`] at its Bind or its own last Execute.
    epoch: u64,
    /// Its statement's text, as bound (`None`: not parsed here).
    text: Option<Arc<str>>,
    /// What its computed result columns are made of.
    lineage: Option<Arc<Lineage>>,
    /// Running it may prepare or deallocate statements
    /// ([`Statement::changes_names`]; true for a statement not parsed here).
    changes_names: bool,
    /// ([`Statement::changes_columns`]; true for a statement not parsed here).
    changes_columns: bool,
    /// ([`Statement::ends_settings`]; true for a statement not parsed here).
    ends_settings: bool,
    /// Running it may start a COPY FROM STDIN ([`Statement::copies_in`];
    /// true for a statement not parsed here).
    copies_in: bool,
    /// Its statement's operations under review, until an execution of the
    /// portal is approved (a suspended portal's later executions continue
    /// that one).
    review: Option<Arc<[SqlOperation]>>,
    /// Its statement runs another by name ([`Statement::executes`]):
    /// judged at its Execute, where the server looks the name up. When
    /// that runs another statement, its judgement takes the place of
    /// `review`; otherwise `review` holds as for any portal.
    executes: Option<Executes>,
    /// With `review` or `executes`: the parameters exactly as bound (formats, values and
    /// result formats), so the approval is for these values and not for
    /// any others that look the same masked.
    exact_parameters: Bytes,
    /// Its columns, when they came from the cache rather than a Describe:
    /// the server half never learns them under the portal's name, so every
    /// Execute of the portal (a suspended one is executed again) carries them.
    columns: Option<Option<Arc<Vec<Column>>>>,
}

/// A portal whose statement runs another by name ([`Statement::executes`]).
struct Executes {
    classified: Arc<[Classified]>,
    /// The place ([`ClientHalf::acts`]) of its Bind. The server describes the portal's columns at its Bind and
    /// looks the name up when it runs, so it runs only as the very next
    /// message that acts: anything in between (a Parse, Close, Bind, query
    /// or other execution) may give the name another statement, whose rows
    /// would be masked by the columns described.
    at: u64,
    /// Its judgement at an Execute allowed it.
    judged: bool,
}

impl Portal {
    /// Whether the portal still waits for a judgement that a Bind or
    /// Close of its name the server skips must not lose: one under review,
    /// or one that runs another statement by name and has not been judged.
    /// (A judged one has run: its Execute came right after its Bind, and
    /// only an error could have made the server skip it, after which the
    /// portal is gone with its (sub)transaction.) Not once its transaction
    /// has ended (the server has dropped it).
    fn awaits_judgement(&self, idle_through: u64) -> bool {
        self.seq > idle_through
            && (self.review.is_some() || self.executes.as_ref().is_some_and(|x| !x.judged))
    }
}

/// The client's portals. The server drops every portal when a transaction
/// ends; the gateway learns that from a ReadyForQuery out of any
/// transaction and prunes its map as it grows, so a client binding
/// portals it never closes cannot grow the gateway's memory (each holds its
/// rendered parameters).
struct Portals {
    map: HashMap<Bytes, Portal>,
    /// The size at which the next Bind prunes.
    prune_at: usize,
}

/// Portals kept before the first pruning.
const PORTALS_PRUNE_MIN: usize = 64;

impl Portals {
    fn new() -> Portals {
        Portals {
            map: HashMap::new(),
            prune_at: PORTALS_PRUNE_MIN,
        }
    }

    /// Adds a portal; first, when the map has grown, drops those bound
    /// before `idle_through` (their transaction has ended).
    fn bind(&mut self, name: Bytes, portal: Portal, idle_through: u64) {
        if self.map.len() >= self.prune_at {
            self.map.retain(|_, p| p.seq > idle_through);
            self.prune_at = (self.map.len() * 2).max(PORTALS_PRUNE_MIN);
        }
        self.map.insert(name, portal);
    }
}

/// What each prepared statement name may stand for on the server.
///
/// The gateway learns of a `PREPARE` or Parse when it judges it, not when
/// the server has made it; the server may refuse it (the name exists, the
/// transaction is aborted) and keep the statement it had. So a name keeps
/// every statement prepared under it in this session, and `EXECUTE` is
/// judged as each of them: the strictest decides. A `DEALLOCATE` or Close
/// forgets nothing: it may fail or be skipped, and a later `PREPARE` of the
/// name be refused, leaving the server with the statement it had. Within
/// one query, where a later statement runs only if the earlier ones did,
/// a `DEALLOCATE` does count ([`ClientHalf::resolve_execute`]).
#[derive(Default)]
struct Prepared {
    by_name: HashMap<String, Vec<SqlOperation>>,
    /// What running each name returns ([`Lineage`]), for `EXECUTE`.
    lineages: Lineages,
    /// The bytes of statement text kept in `by_name`.
    bytes: usize,
    /// Names made with SQL `PREPARE` in this session, never forgotten: a
    /// Bind naming one runs a statement no Parse of this session judged, so
    /// it is judged itself. Once there are too many, every Bind of a named
    /// statement is.
    sql_names: HashSet<String>,
    too_many_sql_names: bool,
    /// Names one of whose statements may prepare or deallocate names when
    /// run: Parse takes any statement (`DEALLOCATE v`, `PREPARE v AS …`),
    /// and SQL `EXECUTE` runs it. Beyond [`PREPARED_NAMES_MAX`] every
    /// name counts as one.
    changing: HashSet<String>,
    too_many_changing: bool,
}

/// Statements kept per prepared name before the name stands for "anything"
/// (opaque): a client re-preparing one name over and over cannot grow the
/// gateway's memory.
const PREPARED_CANDIDATES_MAX: usize = 16;
/// SQL-prepared names remembered before every named Bind is judged.
const SQL_PREPARED_NAMES_MAX: usize = 4096;
/// Names remembered; an `EXECUTE` of a name prepared after that is judged
/// as opaque (as any unknown name is).
const PREPARED_NAMES_MAX: usize = 4096;
/// Statement text remembered for `EXECUTE`; beyond it a new statement is
/// kept as an opaque placeholder, so a client preparing and closing large
/// statements cannot grow the gateway's memory.
const PREPARED_BYTES_MAX: usize = 16 << 20;

/// What the rows a name returns are made of, by name: SQL-prepared and
/// Parse-prepared statements (for `EXECUTE`), cursors (for `FETCH`).
///
/// A name keeps every lineage it was given (a later one may not have
/// taken effect), and names beyond [`PREPARED_NAMES_MAX`] share one entry
/// that holds all of theirs: a client cannot push a name out of sight by
/// making many others.
#[derive(Default)]
struct Lineages {
    by_name: HashMap<String, Arc<Lineage>>,
    overflow: Option<Arc<Lineage>>,
}

impl Lineages {
    fn add(&mut self, name: &str, lineage: Option<Arc<Lineage>>) {
        let Some(lineage) = lineage else {
            return;
        };
        let slot = if self.by_name.contains_key(name) || self.by_name.len() < PREPARED_NAMES_MAX {
            self.by_name.entry(name.to_owned()).or_default()
        } else {
            self.overflow.get_or_insert_default()
        };
        if slot.is_empty() {
            *slot = lineage;
        } else if **slot != *lineage {
            *slot = Lineage::of_any([Some(&*slot), Some(&lineage)].into_iter()).unwrap_or(lineage);
        }
    }

    fn get(&self, name: &str) -> Option<Arc<Lineage>> {
        Lineage::of_any([self.by_name.get(name), self.overflow.as_ref()].into_iter())
    }
}

impl Prepared {
    /// Notes that a statement under `name` may prepare or deallocate names.
    fn add_changing(&mut self, name: &str) {
        if self.changing.len() < PREPARED_NAMES_MAX {
            self.changing.insert(name.to_string());
        } else if !self.changing.contains(name) {
            self.too_many_changing = true;
        }
    }

    /// Whether SQL `EXECUTE name` may prepare or deallocate names.
    fn changes_names(&self, name: &str) -> bool {
        self.too_many_changing || self.changing.contains(name)
    }

    fn add(&mut self, name: String, mut op: SqlOperation) {
        if !self.by_name.contains_key(&name) && self.by_name.len() >= PREPARED_NAMES_MAX {
            return;
        }
        if self.bytes + op.text.len() > PREPARED_BYTES_MAX {
            op = opaque(
                "-- a statement prepared once the gateway's memory for prepared statements was full",
            );
        }
        if op.kind == SqlKind::Opaque {
            self.add_changing(&name);
        }
        let ops = self.by_name.entry(name).or_default();
        if ops.contains(&op) {
            return;
        }
        self.bytes += op.text.len();
        ops.push(op);
        if ops.len() > PREPARED_CANDIDATES_MAX {
            let text = format!("-- one of {} statements prepared under one name", ops.len());
            *ops = vec![opaque(&text)];
        }
    }

    fn add_sql(&mut self, name: String, op: SqlOperation) {
        if self.sql_names.len() < SQL_PREPARED_NAMES_MAX {
            self.sql_names.insert(name.clone());
        } else if !self.sql_names.contains(&name) {
            self.too_many_sql_names = true;
        }
        self.add(name, op);
    }

    /// Whether a Bind of this statement must be judged: its name was
    /// prepared with SQL, or no Parse of this session made it.
    fn bind_needs_judging(&self, name: &[u8], parsed: bool) -> bool {
        // (The unnamed statement too, when no Parse here made it: the
        // server has none then, or one the gateway lost track of.)
        !parsed
            || (!name.is_empty()
                && (self.too_many_sql_names
                    || (!self.sql_names.is_empty()
                        && self
                            .sql_names
                            .contains(String::from_utf8_lossy(name).as_ref()))))
    }
}

struct ClientHalf<'a> {
    cx: &'a Context<'a>,
    reader: FrameReader<ReadHalf<ClientStream>>,
    server: BufWriter<WriteHalf<UpstreamStream>>,
    actions: Arc<Actions>,
    /// After the gateway refused an extended-protocol message: drop
    /// everything until Sync, as the server would after an error.
    skipping: bool,
    /// Prepared statements by name, as SQL `EXECUTE` names them (SQL
    /// `PREPARE` and named Parse share one namespace), for judging `EXECUTE`.
    prepared: Prepared,
    /// What SQL cursors return (`DECLARE`), for `FETCH`.
    cursors: Lineages,
    statements: HashMap<Bytes, Statement>,
    portals: Portals,
    /// Counts the client's Binds, Syncs and Queries: their place in the
    /// conversation, for telling which portals a finished transaction took.
    seq: u64,
    /// Counts what can make, replace or drop a portal behind the gateway's
    /// back: queries (`DECLARE`, `CLOSE`, `COMMIT`), executions of other
    /// portals, function calls. A portal's columns are taken as known only
    /// while it is unchanged since the portal's Bind (or its own last
    /// execution); otherwise its execution is described afresh.
    portal_epoch: u64,
    /// Parameter types the server described, by statement name.
    param_types: ParamTypes,
    outcomes: Arc<Outcomes>,
    columns: ColumnsCache,
    /// The last Parse's generation (also the last [`Statement::columns_id`]).
    generation: u64,
    /// CopyData held until its record is durable.
    copy: Vec<Frame>,
    copy_bytes: usize,
    /// What of the current COPY's data is not yet recorded.
    copy_record: rows::CopyInRecord,
    /// A statement that changes settings ran since a transaction last began
    /// or ended: the next transaction statement may undo it.
    settings_changed: bool,
    /// CopyDone and CopyFail messages forwarded so far that could end a COPY.
    copy_ends: u64,
    /// An Execute or a query went to the server since the last counted
    /// CopyDone or CopyFail.
    copy_armed: bool,
    /// A Sync went to the server while a COPY FROM STDIN may have been
    /// running, which the server then ignored, and no Sync has gone since
    /// the COPY ended: the answers to what follows come behind a Sync the
    /// server half still expects, so the gateway cannot wait for one
    /// ([`ClientHalf::outcome`]).
    ignored_syncs: bool,
    /// Counts the client's messages that act (all but Describe, Flush and
    /// Sync): [`Executes::at`].
    acts: u64,
    /// `acts` at the latest Sync the server cannot have ignored.
    acts_at_sync: u64,
    /// Counts the client's messages that can fail on the server (all but
    /// Flush and Sync; a Describe of a name that does not exist fails):
    /// after a failure the server skips what follows until Sync.
    failable: u64,
    /// `failable` at the latest Sync the server cannot have ignored.
    failable_at_sync: u64,
    /// Something that may start a COPY FROM STDIN went to the server
    /// since the latest CopyDone or CopyFail: the place ([`Self::seq`]) of
    /// the query, or of the Sync after the Execute, whose ReadyForQuery
    /// shows it did not (or that it ended); until then a Sync may be one
    /// the server ignores (in copy-in mode).
    copy_in_until: Option<u64>,
    /// `copy_in_until` is a query's.
    copy_in_by_query: bool,
}

/// How judging a message ended.
enum Verdict {
    /// Forward it; apply these changes to the prepared-statement map. The
    /// last list holds operations whose review waits for their execution
    /// (see [`ClientHalf::decide`]).
    Allow(Vec<SqlOperation>, Vec<PreparedChange>, Vec<SqlOperation>),
    /// Refuse it with this error.
    Refuse(Bytes),
    /// The client left while the statement waited for approval.
    Gone,
}

enum PreparedChange {
    Add(String, SqlOperation, Option<Arc<Lineage>>),
    Remove(String),
    Clear,
}

impl ClientHalf<'_> {
    async fn run(&mut self) -> Result<String> {
        let end = self.relay().await;
        let _ = self.server.flush().await;
        match end {
            Ok(reason) => Ok(reason),
            Err(e) => {
                let code = match &e {
                    e if frame::is_too_large(e) => sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    Error::Client(_) => sqlstate::PROTOCOL_VIOLATION,
                    _ => sqlstate::INTERNAL_ERROR,
                };
                let reason = e.to_string();
                let fatal = frame::error_response(Severity::Fatal, code, &reason, None);
                self.actions.send(Action::Fatal(fatal, reason));
                // The server half writes the error and ends the session.
                std::future::pending().await
            }
        }
    }

    async fn relay(&mut self) -> Result<String> {
        loop {
            if !self.reader.has_frame() {
                self.flush_copy(false).await?;
                self.flush_server().await?;
            }
            let Some(frame) = self.reader.next().await? else {
                return Ok("client closed the connection".into());
            };
            // Flush goes through too: the answers before the refusal may sit
            // in the server's buffer, and a client that flushes and waits
            // before its Sync would otherwise wait forever (PostgreSQL
            // flushes them with its own error).
            if self.skipping && !matches!(frame.tag, b'S' | b'X' | b'H') {
                continue;
            }
            if let Some(error) = bad_name(&frame) {
                self.refuse(error, true).await?;
                continue;
            }
            if !matches!(frame.tag, b'D' | b'H' | b'S') {
                self.acts += 1;
            }
            if !matches!(frame.tag, b'H' | b'S') {
                self.failable += 1;
            }
            if matches!(frame.tag, b'Q' | b'E') {
                // A new statement: a COPY the client left without CopyDone
                // or CopyFail (which the server ends with an error) is
                // recorded to its end, and its data goes first.
                self.flush_copy(true).await?;
            }
            match frame.tag {
                b'Q' => self.query(frame).await?,
                b'P' => self.parse(frame).await?,
                b'B' => self.bind(frame).await?,
                b'D' => self.describe(frame).await?,
                b'E' => self.execute(frame).await?,
                b'C' => self.close(frame).await?,
                b'S' => {
                    if self.copy_in_possible() {
                        self.ignored_syncs = true;
                    } else {
                        // Answered: the server half drops the ignored
                        // Syncs before it at its ReadyForQuery.
                        self.ignored_syncs = false;
                        self.acts_at_sync = self.acts;
                        self.failable_at_sync = self.failable;
                    }
                    self.skipping = false;
                    self.seq += 1;
                    // A Sync ends a failed pipeline (whose Binds the server
                    // skipped) and perhaps a transaction (whose portals the
                    // server dropped).
                    self.portal_epoch += 1;
                    let (copy_ends, seq) = (self.copy_ends, self.seq);
                    self.forward(&frame, Some(Pending::Sync { copy_ends, seq }))
                        .await?;
                }
                b'd' => {
                    self.copy_bytes += frame.bytes.len();
                    self.copy.push(frame);
                    if self.copy_bytes >= COPY_RECORD_CHUNK {
                        self.flush_copy(false).await?;
                    }
                }
                b'c' | b'f' => {
                    self.flush_copy(true).await?;
                    // Only an Execute or a query can have started a COPY:
                    // a CopyDone without one (which the server ignores)
                    // does not count as the end of one.
                    // (A query may run another COPY after this one: its
                    // own ReadyForQuery ends them all.)
                    if !self.copy_in_by_query {
                        self.copy_in_until = None;
                    }
                    if std::mem::take(&mut self.copy_armed) {
                        self.copy_ends += 1;
                    }
                    self.forward(&frame, None).await?;
                }
                b'F' => self.function_call(frame).await?,
                b'X' => {
                    self.forward(&frame, None).await?;
                    return Ok("client closed the session".into());
                }
                // Flush.
                b'H' => self.forward(&frame, None).await?,
                // Nothing else is sent within a session. Forwarding an
                // unknown message would let the server act on something
                // the gateway never judged (a message of a later protocol
                // version, say), so the gateway ends the session as
                // PostgreSQL itself does.
                other => {
                    return Err(Error::Client(format!(
                        "invalid frontend message type {other} ({:?}): Airlock forwards only the messages of protocol 3.0",
                        char::from(other)
                    )));
                }
            }
        }
    }

    fn expect(&self, pending: Pending) {
        // The server half lives as long as this half; a send error means
        // the session is ending anyway.
        self.actions.send(Action::Expect(pending));
    }

    async fn write_server(&mut self, bytes: &[u8]) -> Result<()> {
        self.server
            .write_all(bytes)
            .await
            .map_err(|e| Error::Upstream(format!("writing to the server failed: {e}")))
    }

    async fn flush_server(&mut self) -> Result<()> {
        self.server
            .flush()
            .await
            .map_err(|e| Error::Upstream(format!("writing to the server failed: {e}")))
    }

    /// Tells the server half what to expect, then forwards the frame.
    async fn forward(&mut self, frame: &Frame, pending: Option<Pending>) -> Result<()> {
        if let Some(p) = pending {
            self.expect(p);
        }
        self.write_server(&frame.bytes).await
    }

    /// Forwards a message and, when it is watched ([`Pending::watch`]),
    /// waits for its answer: whether it took effect on the server (an
    /// unwatched one is taken to).
    async fn forward_watched(&mut self, frame: &Frame, pending: Pending) -> Result<bool> {
        let watch = pending.watch();
        self.forward(frame, Some(pending)).await?;
        match watch {
            Some(id) => self.outcome(id).await,
            None => Ok(true),
        }
    }

    /// Refuses the current message as if it had failed on the server: the
    /// server is made to fail in its place ([`ROLLBACK_PARSE`]), so what an
    /// error there does happens (a pipeline is all or nothing and rolls
    /// back at Sync; a transaction block is aborted, and its COMMIT rolls
    /// back), and the client gets the refusal instead of that error. In the
    /// extended protocol the messages up to Sync are then dropped, as the
    /// server drops them after an error; a simple query gets the gateway's
    /// own Sync, whose ReadyForQuery carries the server's real status.
    async fn refuse(&mut self, error: Bytes, extended: bool) -> Result<()> {
        // The server skips what the pipeline sends until Sync.
        self.portal_epoch += 1;
        self.expect(Pending::Rollback);
        self.write_server(&frame::raw(b'P', ROLLBACK_PARSE)).await?;
        self.expect(Pending::Refused(error));
        if extended {
            self.skipping = true;
        } else {
            self.seq += 1;
            let (copy_ends, seq) = (self.copy_ends, self.seq);
            self.expect(Pending::Sync { copy_ends, seq });
            self.write_server(&frame::raw(b'S', &[])).await?;
        }
        Ok(())
    }

    async fn query(&mut self, frame: Frame) -> Result<()> {
        let Some(text) = frame::query_text(&frame)? else {
            return self.refuse(not_utf8(), false).await;
        };
        let classified = self.cx.classifier.classify(text);
        let statements = Arc::clone(&classified);
        let opaque = self.changes_names(&classified);
        let columns_changed = changes_columns(&classified);
        let ends = ends_settings(&classified);
        let copies_in = copies_in(&classified);
        match self.judge(classified, false, false).await? {
            Verdict::Allow(_, changes, _) => {
                self.apply(changes);
                if opaque {
                    self.any_sql_changed();
                } else if columns_changed || (ends && self.settings_changed) {
                    for s in self.statements.values_mut() {
                        mark_columns_changed(s, &mut self.generation);
                    }
                }
                if columns_changed || ends {
                    // (A SET after the COMMIT of the same query string
                    // outlives it only until the next transaction ends.)
                    self.settings_changed = columns_changed;
                }
                for c in statements.iter() {
                    if let Some(name) = &c.declare {
                        self.cursors.add(name, c.lineage.clone());
                    }
                }
                let runs = if statements
                    .iter()
                    .any(|c| c.execute.is_some() || c.fetch.is_some())
                {
                    statements.iter().map(|c| self.lineage_of_run(c)).collect()
                } else {
                    Vec::new()
                };
                self.seq += 1;
                self.portal_epoch += 1;
                self.copy_armed = true;
                if copies_in {
                    self.copy_in_until = Some(self.seq);
                    self.copy_in_by_query = true;
                }
                let track = QueryTrack {
                    current: Track::new(),
                    seq: self.seq,
                    statements,
                    at: 0,
                    runs,
                };
                self.forward(&frame, Some(Pending::Query(track))).await
            }
            Verdict::Refuse(error) => self.refuse(error, false).await,
            Verdict::Gone => Err(Error::Client(
                "the client left while waiting for approval".into(),
            )),
        }
    }

    async fn parse(&mut self, frame: Frame) -> Result<()> {
        if !frame::parse_text_is_utf8(frame.body()) {
            return self.refuse(not_utf8(), true).await;
        }
        let parse: Parse = frame.decode(Peer::Client)?;
        let name = cstr_at(frame.body());
        let classified = self.cx.classifier.classify(&parse.query);
        let changes_names = self.changes_names(&classified);
        let changes_columns = changes_columns(&classified);
        let ends_settings = ends_settings(&classified);
        let executes = classified
            .iter()
            .any(|c| c.execute.is_some() || c.fetch.is_some())
            .then(|| Arc::clone(&classified));
        let copies_in = copies_in(&classified);
        let lineage = match &*classified {
            [one] => one.lineage.clone(),
            _ => None,
        };
        let classified_all = Arc::clone(&classified);
        // A named statement's operation is kept for SQL EXECUTE.
        // A statement under review is prepared now and waits at each
        // execution, where the approver sees its parameters.
        match self.judge(classified, !name.is_empty(), true).await? {
            Verdict::Allow(ops, changes, review) => {
                let review = (!review.is_empty()).then(|| Arc::from(review));
                self.apply(changes);
                let mut counts = MaskCounts::new();
                let text = self
                    .cx
                    .session
                    .masker()
                    .mask_str(None, &parse.query, &mut counts)
                    .into_owned();
                for c in classified_all.iter() {
                    if let Some(cursor) = &c.declare {
                        self.cursors.add(cursor, c.lineage.clone());
                    }
                }
                if !name.is_empty() {
                    // SQL EXECUTE can run statements prepared with Parse.
                    let name = String::from_utf8_lossy(&name).into_owned();
                    self.prepared.lineages.add(&name, lineage.clone());
                    if changes_names {
                        self.prepared.add_changing(&name);
                    }
                    if executes.is_some() {
                        // SQL `EXECUTE` of it runs whatever the inner name
                        // stands for then, which this entry cannot follow:
                        // it is judged as opaque.
                        self.prepared.add(
                            name,
                            opaque(&format!(
                                "-- {}\n-- (prepared by Parse; it runs another prepared statement, known only when it runs)",
                                parse.query
                            )),
                        );
                    } else if ops.is_empty() {
                        self.prepared.add(name, opaque(&parse.query));
                    } else {
                        for op in ops {
                            self.prepared.add(name.clone(), op);
                        }
                    }
                }
                self.generation += 1;
                if self.unsettled(&name) {
                    self.settle(&name, false).await?;
                }
                // Kept while the server may still hold it (a Parse of a name
                // it holds fails): what it does when run must still count,
                // its review, what it runs, and whether it changes names,
                // columns or settings (else its run would leave columns
                // cached that no longer hold).
                let previous = match self.statements.remove(&name) {
                    Some(old)
                        if old.review.is_some()
                            || old.executes.is_some()
                            || old.copies_in
                            || old.changes_names
                            || old.changes_columns
                            || old.ends_settings
                            || old.previous.is_some() =>
                    {
                        Some(Box::new(old))
                    }
                    Some(old) => {
                        self.forget(&old);
                        None
                    }
                    None => None,
                };
                let watched = previous.is_some().then_some(self.generation);
                self.statements.insert(
                    name,
                    Statement {
                        text: Arc::from(text),
                        types: parse.type_oids,
                        generation: self.generation,
                        columns_id: self.generation,
                        review,
                        previous,
                        sql_changed: false,
                        changes_names,
                        changes_columns,
                        ends_settings,
                        copies_in,
                        executes,
                        lineage,
                    },
                );
                self.forward(&frame, Some(Pending::Parse(watched))).await
            }
            Verdict::Refuse(error) => self.refuse(error, true).await,
            Verdict::Gone => Err(Error::Client(
                "the client left while waiting for approval".into(),
            )),
        }
    }

    async fn bind(&mut self, frame: Frame) -> Result<()> {
        let bind: Bind = frame.decode(Peer::Client)?;
        let portal = cstr_at(frame.body());
        let statement = cstr_at(&frame.body()[portal.len() + 1..]);
        // After the two names: what the approval of an execution is for.
        let names_end = 5 + portal.len() + 1 + statement.len() + 1;
        let exact_parameters = || frame.bytes.slice(names_end.min(frame.bytes.len())..);
        if self.unsettled(&statement) {
            // Which statement the server holds matters for a review; for
            // one that runs another by name the portal is judged at its
            // Execute as any of them could run (no wait: a driver's
            // server-side cursor sends each FETCH with a Parse of the
            // unnamed statement).
            let review = self
                .statements
                .get(&statement)
                .is_some_and(|s| s.chain().any(|s| s.review.is_some()));
            self.settle(&statement, review).await?;
        }
        // One lookup of the statement for everything the portal needs.
        let (
            types,
            key,
            review,
            (text, lineage),
            changes_names,
            (changes_columns, ends_settings),
            copies_in,
            executes,
        ) = match self.statements.get(&statement) {
            Some(s) => (
                self.param_types
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&s.generation).cloned())
                    .unwrap_or_else(|| s.types.clone()),
                // (Not for one that runs another by name: its columns
                // are those of whatever that name stands for.)
                s.chain()
                    .all(|s| s.executes.is_none())
                    .then(|| (s.columns_id, bind.result_column_format_codes.clone())),
                s.review.clone(),
                // Not what SQL may have put under the name since its Parse.
                (
                    (!s.sql_changed).then(|| Arc::clone(&s.text)),
                    match (s.sql_changed, &s.previous) {
                        // (What one that runs another by name returns is
                        // worked out below.)
                        (true, _) if s.chain().any(|s| s.executes.is_some()) => None,
                        // What SQL prepared, or any Parse kept before.
                        (true, _) => {
                            let sql = self
                                .prepared
                                .lineages
                                .get(&String::from_utf8_lossy(&statement));
                            let chain: Vec<Option<&Arc<Lineage>>> =
                                s.chain().map(|s| s.lineage.as_ref()).collect();
                            Lineage::of_any(chain.into_iter().chain([sql.as_ref()]))
                        }
                        (false, None) => s.lineage.clone(),
                        // The server may hold any of them.
                        (false, Some(_)) => Lineage::of_any(s.chain().map(|s| s.lineage.as_ref())),
                    },
                ),
                // What SQL can put under a name (`PREPARE` takes only
                // SELECT, INSERT, UPDATE, DELETE, MERGE and VALUES) does
                // not itself prepare or deallocate, so running it is not
                // taken as changing names. (A function or trigger of the
                // database's own can, through its own `EXECUTE`, as it can
                // from any statement: a known limit, docs/postgres.md.)
                s.chain().any(|s| s.changes_names),
                (
                    s.chain().any(|s| s.changes_columns),
                    s.chain().any(|s| s.ends_settings),
                ),
                s.chain().any(|s| s.copies_in),
                s.runs_by_name(),
            ),
            // A statement SQL prepared returns what SQL prepared; a name
            // neither made, anything.
            None => (
                Vec::new(),
                None,
                None,
                (
                    None,
                    self.prepared
                        .lineages
                        .get(&String::from_utf8_lossy(&statement))
                        .or_else(|| Some(Arc::new(Lineage::anything()))),
                ),
                true,
                (true, true),
                true,
                None,
            ),
        };
        // A statement that runs another by name returns what that runs.
        let lineage = match (lineage, &executes) {
            (None, Some(runs)) => self.lineage_of_runs(runs),
            (lineage, _) => lineage,
        };
        let mut counts = MaskCounts::new();
        let params = rows::render_params(
            self.cx.session.masker(),
            &bind.parameters,
            &bind.parameter_format_codes,
            &types,
            &mut counts,
        );
        if !counts.is_empty() {
            self.cx.session.record_later(Event::Masked { counts });
        }
        if self
            .prepared
            .bind_needs_judging(&statement, self.statements.contains_key(&statement))
        {
            // A statement SQL `PREPARE` made runs here without an EXECUTE
            // to judge: the Bind is judged as one.
            let name = String::from_utf8_lossy(&statement).into_owned();
            let what = opaque(&format!("-- bind of prepared statement {name:?}"));
            let ops = with_parameters(self.resolve_execute(&what, &name, &[]), &params);
            match self.decide(ops, &exact_parameters(), false, false).await? {
                Verdict::Allow(..) => {}
                Verdict::Refuse(error) => return self.refuse(error, true).await,
                Verdict::Gone => {
                    return Err(Error::Client(
                        "the client left while waiting for approval".into(),
                    ));
                }
            }
        }
        self.seq += 1;
        let idle_through = self.actions.idle_through.load(Ordering::Acquire);
        let executes = executes.map(|classified| Executes {
            classified,
            at: self.acts,
            judged: false,
        });
        // A Bind the server skips (after an error in the pipeline), or
        // refuses (a named portal that exists), leaves the portal it had.
        let watch = self
            .portals
            .map
            .get(&portal)
            .is_some_and(|p| p.awaits_judgement(idle_through))
            .then(|| self.watch_id());
        let bound = (
            portal,
            Portal {
                statement,
                key,
                params,
                described: false,
                seq: self.seq,
                epoch: self.portal_epoch,
                text,
                lineage,
                changes_names,
                changes_columns,
                ends_settings,
                copies_in,
                exact_parameters: if review.is_some() || executes.is_some() {
                    exact_parameters()
                } else {
                    Bytes::new()
                },
                // (A parsed `EXECUTE` is judged afresh at its Execute, and
                // that judgement replaces the review its Parse put off: one
                // approval per execution, not two.)
                review,
                executes,
                columns: None,
            },
        );
        if self.forward_watched(&frame, Pending::Bind(watch)).await? {
            self.portals.bind(bound.0, bound.1, idle_through);
        }
        Ok(())
    }

    async fn describe(&mut self, frame: Frame) -> Result<()> {
        frame::check_structure(b'D', frame.body(), Peer::Client)?;
        let kind = frame.body()[0];
        let name = cstr_at(&frame.body()[1..]);
        let pending = if kind == b'P' {
            let epoch = self.portal_epoch;
            let cursor = self.cursors.get(&String::from_utf8_lossy(&name));
            let (key, lineage) = match self.portals.map.get_mut(&name) {
                Some(p) => {
                    p.described = true;
                    if p.epoch == epoch {
                        (p.key.clone(), p.lineage.clone())
                    } else {
                        // The name may stand for another portal now (a
                        // cursor SQL declared): this answer describes that
                        // one, and says nothing about the statement bound
                        // under the name before. Its rows may be either's.
                        p.epoch = epoch;
                        p.key = None;
                        p.columns = None;
                        (
                            None,
                            Lineage::of_any([p.lineage.as_ref(), cursor.as_ref()].into_iter()),
                        )
                    }
                }
                None => (None, unknown_portal(cursor)),
            };
            Pending::DescribePortal {
                name,
                hidden: false,
                key,
                lineage,
            }
        } else {
            Pending::DescribeStatement(self.statements.get(&name).map(|s| s.generation))
        };
        self.forward(&frame, Some(pending)).await
    }

    async fn execute(&mut self, frame: Frame) -> Result<()> {
        frame::check_structure(b'E', frame.body(), Peer::Client)?;
        let portal = cstr_at(frame.body());
        let (acts, mut replaced, mut direct) = (self.acts, false, false);
        let judged = self.portals.map.get(&portal).and_then(|p| {
            let mut exact = p.exact_parameters.to_vec();
            let (ops, changes_names) = match (&p.executes, &p.review) {
                // What the names it runs stand for now.
                // (One that ran is only read from again: what it ran is
                // not looked up again.)
                (Some(x), _) if x.judged => return None,
                (Some(x), review) => match self.runs(&x.classified, &mut exact) {
                    Some((ops, true)) if x.at + 1 == acts => {
                        (ops, self.changes_names(&x.classified))
                    }
                    // Nothing but what its Parse judged (a FETCH from a
                    // cursor DECLARE made, say): the review it put off, if
                    // any, as for any statement.
                    Some((_, false)) if x.at + 1 == acts => match review {
                        Some(review) => (review.to_vec(), false),
                        None => {
                            direct = true;
                            return None;
                        }
                    },
                    _ => {
                        replaced = true;
                        return None;
                    }
                },
                // The approver decides on this execution.
                (None, Some(review)) => (review.to_vec(), false),
                (None, None) => return None,
            };
            // With the parameters it runs with (masked).
            let ops = with_parameters(ops, &p.params);
            Some((ops, Bytes::from(exact), changes_names))
        });
        if replaced {
            return self.refuse(replaced_since_bind(), true).await;
        }
        if direct
            && let Some(x) = self
                .portals
                .map
                .get_mut(&portal)
                .and_then(|p| p.executes.as_mut())
        {
            x.judged = true;
        }
        if let Some((ops, exact, changes_names)) = judged {
            match self.decide(ops, &exact, false, false).await? {
                Verdict::Allow(..) => {
                    if let Some(p) = self.portals.map.get_mut(&portal) {
                        p.review = None;
                        if let Some(x) = &mut p.executes {
                            x.judged = true;
                        }
                        p.changes_names |= changes_names;
                    }
                }
                Verdict::Refuse(error) => return self.refuse(error, true).await,
                Verdict::Gone => {
                    return Err(Error::Client(
                        "the client left while waiting for approval".into(),
                    ));
                }
            }
        }
        // Formatted from borrowed parts: this runs for every execution.
        let (data, described) = match self.portals.map.get(&portal) {
            Some(p) => {
                let what = match &p.text {
                    Some(text) => Cow::Borrowed(&**text),
                    None => Cow::Owned(format!(
                        "statement {:?}",
                        String::from_utf8_lossy(&p.statement)
                    )),
                };
                let data = if p.params.is_empty() {
                    format!("execute: {what}")
                } else {
                    format!("execute: {what}\nparameters: {}", p.params)
                };
                (data, p.described)
            }
            None => (
                format!("execute: portal {:?}", String::from_utf8_lossy(&portal)),
                false,
            ),
        };
        // The execution is what acts on the target: its record (with the
        // parameters) is durable before the Execute leaves. (The Parse and
        // Bind before it may wait in the buffer: neither acts.)
        if let Err(e) = self.cx.session.record(Event::Input { data }).await {
            return self.refuse(store_error(&e), true).await;
        }
        // A portal whose name something else may have taken since its
        // Bind (a cursor declared, say) is described afresh.
        let epoch = self.portal_epoch;
        self.portal_epoch += 1;
        // What a portal that runs another by name returns is what that
        // name stands for now.
        let runs = self
            .portals
            .map
            .get(&portal)
            .and_then(|p| p.executes.as_ref())
            .map(|x| Arc::clone(&x.classified))
            .and_then(|runs| self.lineage_of_runs(&runs));
        let cursor = self.cursors.get(&String::from_utf8_lossy(&portal));
        let (
            (key, lineage),
            carried,
            described,
            changes_names,
            (changes_columns, ends_settings),
            copies_in,
        ) = match self.portals.map.get_mut(&portal) {
            Some(p) if p.epoch == epoch => {
                p.epoch = self.portal_epoch;
                (
                    (p.key.as_ref(), runs.or_else(|| p.lineage.clone())),
                    p.columns.clone(),
                    described,
                    p.changes_names,
                    (p.changes_columns, p.ends_settings),
                    p.copies_in,
                )
            }
            Some(p) => {
                // What was known of the name is forgotten, not only
                // skipped now: the fresh Describe below is what holds.
                p.key = None;
                p.columns = None;
                (
                    (
                        None,
                        Lineage::of_any([p.lineage.as_ref(), cursor.as_ref()].into_iter()),
                    ),
                    None,
                    false,
                    p.changes_names,
                    (p.changes_columns, p.ends_settings),
                    p.copies_in,
                )
            }
            None => (
                (None, unknown_portal(cursor)),
                None,
                false,
                true,
                (true, true),
                true,
            ),
        };
        if copies_in {
            self.copy_in_until = Some(self.seq + 1);
            self.copy_in_by_query = false;
        }
        // What the portal runs may give statement names other meanings
        // (it takes effect now, not when it was parsed).
        if changes_names {
            // (Not `any_sql_changed`: the portal's key is still borrowed.)
            for s in self.statements.values_mut() {
                mark_sql_changed(s, &mut self.generation);
            }
        } else if changes_columns || (ends_settings && self.settings_changed) {
            for s in self.statements.values_mut() {
                mark_columns_changed(s, &mut self.generation);
            }
        }
        if changes_columns || ends_settings {
            self.settings_changed = changes_columns;
        }
        let known = match (carried, key, described) {
            (Some(columns), ..) => Some(columns),
            (None, Some(key), false) => self
                .columns
                .lock()
                .ok()
                .and_then(|cache| cache.get(key).cloned()),
            _ => None,
        };
        let mut track = Track::new();
        track.lineage.clone_from(&lineage);
        if let Some(columns) = known {
            // An earlier portal of the same statement and formats: this
            // execution carries the columns itself instead of a hidden
            // Describe. (In the execution, not in the server half's portal
            // map: a pipeline may bind the same portal name to another
            // statement before this execution's rows come back.)
            if let Some(p) = self.portals.map.get_mut(&portal) {
                p.described = true;
                p.columns = Some(columns.clone());
            }
            track.columns = columns;
        } else if !described {
            // Learn the portal's columns (names, types, formats) so that its
            // rows can be masked even when the client never describes it.
            let mut body = Vec::with_capacity(portal.len() + 2);
            body.push(b'P');
            body.extend_from_slice(&portal);
            body.push(0);
            let key = key.cloned();
            self.expect(Pending::DescribePortal {
                name: portal.clone(),
                hidden: true,
                key,
                lineage,
            });
            self.write_server(&frame::raw(b'D', &body)).await?;
            if let Some(p) = self.portals.map.get_mut(&portal) {
                p.described = true;
                p.epoch = self.portal_epoch;
            }
        }
        self.copy_armed = true;
        self.forward(&frame, Some(Pending::Execute { portal, track }))
            .await
    }

    /// Whether the entry for statement `name` keeps an earlier statement
    /// (checked before [`Self::settle`], whose future is large for a path
    /// every Bind takes).
    fn unsettled(&self, name: &Bytes) -> bool {
        self.statements
            .get(name)
            .is_some_and(|s| s.previous.is_some())
    }

    /// Brings the entry for statement `name` in line with what the server
    /// made: a Parse the server made replaces what it held before; one it
    /// did not make leaves the earlier statement in place. With `wait`, an
    /// entry whose outcome matters (an earlier statement under this name
    /// is under review) and is not known yet is waited for: the server is
    /// asked to flush its answers. Without, the wait happens only when the
    /// chain of unknown outcomes grows long.
    async fn settle(&mut self, name: &Bytes, wait: bool) -> Result<()> {
        loop {
            let Some(s) = self.statements.get(name) else {
                return Ok(());
            };
            if s.previous.is_none() {
                return Ok(());
            }
            let generation = s.generation;
            let made = match self.outcomes.take(generation) {
                Some(made) => made,
                None => {
                    let mut depth = 0;
                    let mut at = s.previous.as_deref();
                    while let Some(p) = at {
                        depth += 1;
                        at = p.previous.as_deref();
                    }
                    if !wait && depth < MAX_UNSETTLED_PARSES {
                        return Ok(());
                    }
                    self.outcome(generation).await?
                }
            };
            if made {
                let older = self
                    .statements
                    .get_mut(name)
                    .and_then(|s| s.previous.take());
                self.forget_chain(older);
                return Ok(());
            }
            let previous = self
                .statements
                .get_mut(name)
                .and_then(|s| s.previous.take());
            if let Some(failed) = self.statements.remove(name) {
                self.forget(&failed);
            }
            if let Some(p) = previous {
                self.statements.insert(name.clone(), *p);
            }
        }
    }

    /// Whether the watched message `id` took effect on the server
    /// ([`Outcomes`]), waiting for its answer: the server is asked to flush
    /// its answers. (After an error the server skips everything until
    /// Sync, and the server half tells that as soon as it has the error.)
    async fn outcome(&mut self, id: u64) -> Result<bool> {
        // While a COPY FROM STDIN may be running, the server takes any
        // other message as an error in the COPY and answers nothing for it:
        // after a Sync it ignored there, the answers come behind that Sync,
        // and after a query nothing is skipped to tell it.
        // Otherwise a message the COPY took as its error is skipped with
        // everything up to the next Sync, which the server half tells.
        let ignored_ahead =
            self.ignored_syncs && (self.copy_in_until.is_none() || self.copy_in_possible());
        if ignored_ahead || (self.copy_in_by_query && self.copy_in_possible()) {
            return Err(Error::Client(
                "a message whose outcome Airlock must know (a Close or Bind over a statement \
                 or portal under review) came while a COPY FROM STDIN may be running, or after \
                 a Sync sent during one (which PostgreSQL ignores) and before the next Sync; \
                 the session is ended rather than lose that review: send Sync only after the \
                 COPY data, and such a message after the COPY's ReadyForQuery"
                    .into(),
            ));
        }
        loop {
            if let Some(made) = self.outcomes.take(id) {
                return Ok(made);
            }
            let outcomes = self.outcomes.clone();
            let answered = outcomes.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if outcomes.made.lock().is_ok_and(|m| m.contains_key(&id)) {
                continue;
            }
            self.write_server(&frame::raw(b'H', &[])).await?;
            self.flush_server().await?;
            // The server answers nothing it skips: if its error came
            // before the watched message was queued, only the server half
            // looking at its queue again settles it.
            self.actions.nudge();
            answered.await;
        }
    }

    /// Whether a COPY FROM STDIN may be running ([`Self::copy_in_until`]).
    fn copy_in_possible(&self) -> bool {
        self.copy_in_until
            .is_some_and(|until| self.actions.ready_through.load(Ordering::Acquire) < until)
    }

    /// A fresh id for a watched message ([`Outcomes`]).
    fn watch_id(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Drops what the server told about a statement that is gone: its
    /// columns and its parameter types. (Columns kept under an earlier
    /// `columns_id` of it go when the cache starts over.)
    /// Forgets statements the server no longer holds, with every earlier
    /// one kept behind them.
    fn forget_chain(&mut self, mut next: Option<Box<Statement>>) {
        while let Some(s) = next {
            self.forget(&s);
            self.outcomes.take(s.generation);
            next = s.previous;
        }
    }

    fn forget(&self, statement: &Statement) {
        if let Ok(mut cache) = self.columns.lock() {
            cache.retain(|(id, _), _| *id != statement.columns_id);
        }
        if let Ok(mut m) = self.param_types.lock() {
            m.remove(&statement.generation);
        }
    }

    async fn close(&mut self, frame: Frame) -> Result<()> {
        frame::check_structure(b'C', frame.body(), Peer::Client)?;
        let kind = frame.body()[0];
        if !matches!(kind, b'S' | b'P') {
            // The server refuses it (an invalid subtype) and closes
            // nothing: neither does the gateway.
            let pending = Pending::Close {
                portal: None,
                watch: None,
            };
            return self.forward(&frame, Some(pending)).await;
        }
        let name = cstr_at(&frame.body()[1..]);
        let idle_through = self.actions.idle_through.load(Ordering::Acquire);
        // A Close the server skips (after an error in the pipeline) leaves
        // the statement or portal in place, and a Parse or Bind of the name
        // then fails there: one that still waits for a judgement is
        // forgotten only once the server has closed it.
        // Only an error before it since the last Sync (of any message that
        // can fail, a Describe of a missing name included) makes the server
        // skip a Close (closing what does not exist is no error).
        let first = self.failable == self.failable_at_sync + 1;
        let watched = !first
            && if kind == b'S' {
                self.statements.get(&name).is_some_and(|s| {
                    s.review.is_some() || s.executes.is_some() || s.previous.is_some()
                })
            } else {
                self.portals
                    .map
                    .get(&name)
                    .is_some_and(|p| p.awaits_judgement(idle_through))
            };
        let watch = watched.then(|| self.watch_id());
        let portal = (kind != b'S').then(|| name.clone());
        if !self
            .forward_watched(&frame, Pending::Close { portal, watch })
            .await?
        {
            return Ok(());
        }
        if kind == b'S' {
            if let Some(old) = self.statements.remove(&name) {
                self.forget_chain(Some(Box::new(old)));
            }
            // The statement stays a candidate for SQL EXECUTE of the name
            // ([`Prepared`]): a Close after an error is skipped.
        } else {
            self.portals.map.remove(&name);
        }
        Ok(())
    }

    async fn function_call(&mut self, frame: Frame) -> Result<()> {
        let function = frame
            .body()
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        // A fast-path call runs any function by OID, outside SQL: it is
        // judged as a statement the classifier cannot see into. Its
        // arguments (the data `lowrite` writes, say) are recorded with it,
        // masked, and shown to approvers.
        let mut counts = MaskCounts::new();
        let arguments = match rows::function_call_arguments(frame.body()) {
            Some((formats, values)) => rows::render_params(
                self.cx.session.masker(),
                &values,
                &formats,
                &[],
                &mut counts,
            ),
            None => "<malformed arguments>".to_string(),
        };
        if !counts.is_empty() {
            self.cx.session.record_later(Event::Masked { counts });
        }
        let op = SqlOperation {
            text: format!("-- fast-path function call of function OID {function}: {arguments}"),
            kind: SqlKind::Opaque,
            object: None,
            tables: Vec::new(),
            has_where: None,
        };
        // Its arguments are not in the text: the approval is for them too.
        let arguments = frame.body().get(4..).unwrap_or_default();
        match self.decide(vec![op], arguments, false, false).await? {
            Verdict::Allow(..) => {
                // A function can prepare and deallocate statements too.
                self.portal_epoch += 1;
                self.any_sql_changed();
                self.forward(&frame, Some(Pending::FunctionCall(Track::new())))
                    .await
            }
            Verdict::Refuse(error) => self.refuse(error, false).await,
            Verdict::Gone => Err(Error::Client(
                "the client left while waiting for approval".into(),
            )),
        }
    }

    /// Records the CopyData held (the rows it completes; at the `end` of a
    /// COPY, everything not yet recorded) and, once that is durable,
    /// forwards it. When the record cannot be written the COPY is failed
    /// instead.
    async fn flush_copy(&mut self, end: bool) -> Result<()> {
        if self.copy.is_empty() && (!end || self.copy_record.is_empty()) {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.copy);
        self.copy_bytes = 0;
        let masker = self.cx.session.masker();
        let mut counts = MaskCounts::new();
        let mut text = String::new();
        for f in &frames {
            text.push_str(&self.copy_record.push(masker, f.body(), &mut counts));
        }
        if end {
            text.push_str(&self.copy_record.finish(masker, &mut counts));
        }
        if !counts.is_empty() {
            self.cx.session.record_later(Event::Masked { counts });
        }
        // Data that completes no row yet is not acted on by the server
        // before the rest arrives, which is recorded first.
        let recorded = if text.is_empty() {
            Ok(())
        } else {
            self.cx.session.record(Event::Input { data: text }).await
        };
        match recorded {
            Ok(()) => {
                for f in frames {
                    self.write_server(&f.bytes).await?;
                }
                Ok(())
            }
            Err(e) => {
                self.copy_record = rows::CopyInRecord::default();
                let mut body = e.to_string().into_bytes();
                body.push(0);
                self.write_server(&frame::raw(b'f', &body)).await
            }
        }
    }

    /// The operations `EXECUTE name` (written as `what`) stands for: each
    /// statement the name may run, or opaque for an unknown name.
    fn resolve_execute(
        &self,
        what: &SqlOperation,
        name: &str,
        overlay: &[PreparedChange],
    ) -> Vec<SqlOperation> {
        let mut found = self.prepared.by_name.get(name).cloned().unwrap_or_default();
        for change in overlay {
            match change {
                PreparedChange::Add(n, op, _) if n == name => found.push(op.clone()),
                PreparedChange::Remove(n) if n == name => found.clear(),
                PreparedChange::Clear => found.clear(),
                _ => {}
            }
        }
        if found.is_empty() {
            return vec![SqlOperation {
                text: what.text.clone(),
                kind: SqlKind::Opaque,
                ..what.clone()
            }];
        }
        found
            .into_iter()
            .map(|inner| SqlOperation {
                text: format!("{} -- prepared as: {}", what.text, inner.text),
                kind: inner.kind,
                object: inner.object,
                tables: inner.tables,
                has_where: inner.has_where,
            })
            .collect()
    }

    /// What running `classified` runs now: each `EXECUTE name` as the
    /// statements the name may stand for, each `FETCH` from a portal bound
    /// here as what that portal runs while it awaits a judgement, and the
    /// statement itself; `None` when it fetches from a portal it must not
    /// ([`Self::fetched`]). `exact` gathers the exact parameters of the
    /// portals fetched from.
    /// With the operations: whether any came from another statement (an
    /// `EXECUTE`, a fetched portal); if none did, its Parse judged them all.
    fn runs(
        &self,
        classified: &[Classified],
        exact: &mut Vec<u8>,
    ) -> Option<(Vec<SqlOperation>, bool)> {
        let mut ops = Vec::with_capacity(classified.len());
        let mut indirect = false;
        for c in classified {
            match c.execute.as_deref() {
                Some(name) => {
                    indirect = true;
                    ops.extend(self.resolve_execute(&c.operation, name, &[]));
                }
                None => ops.push(c.operation.clone()),
            }
            if let Some(name) = c.fetch.as_deref() {
                let fetched = self.fetched(&c.operation, name, exact)?;
                indirect |= !fetched.is_empty();
                ops.extend(fetched);
            }
        }
        Some((ops, indirect))
    }

    /// What `FETCH` (written as `what`) from portal `name` runs: SQL
    /// `FETCH` and `MOVE` reach the portals Bind made, and the server runs
    /// one that has not run yet when it is fetched from. Nothing for a
    /// portal whose statement was judged at its Parse and allowed (or a
    /// cursor `DECLARE` made, judged then). `None` for one that runs
    /// another by name and has not run: the server described its columns
    /// at its Bind, and the name may stand for another statement now.
    fn fetched(
        &self,
        what: &SqlOperation,
        name: &str,
        exact: &mut Vec<u8>,
    ) -> Option<Vec<SqlOperation>> {
        let idle_through = self.actions.idle_through.load(Ordering::Acquire);
        let Some(p) = self
            .portals
            .map
            .get(name.as_bytes())
            .filter(|p| p.seq > idle_through)
        else {
            return Some(Vec::new());
        };
        let ops = match (&p.executes, &p.review) {
            (Some(x), _) if x.judged => return Some(Vec::new()),
            (Some(_), _) => return None,
            (None, Some(review)) => review.to_vec(),
            (None, None) => return Some(Vec::new()),
        };
        // The approver sees the values it runs with, and approves those.
        exact.extend_from_slice(&p.exact_parameters);
        let ops = with_parameters(ops, &p.params)
            .into_iter()
            .map(|inner| SqlOperation {
                text: format!("{} -- portal {name:?} runs: {}", what.text, inner.text),
                ..inner
            })
            .collect();
        Some(ops)
    }

    /// What running `c` returns: for `EXECUTE name` and `FETCH … name`,
    /// what the name stands for now (a cursor and a portal share one
    /// namespace on the server).
    fn lineage_of_run(&self, c: &Classified) -> Option<Arc<Lineage>> {
        if let Some(name) = &c.execute {
            return self.prepared.lineages.get(name);
        }
        if let Some(name) = &c.fetch {
            let portal = self
                .portals
                .map
                .get(name.as_bytes())
                .and_then(|p| p.lineage.as_ref());
            let cursor = self.cursors.get(name);
            return Lineage::of_any([portal, cursor.as_ref()].into_iter());
        }
        c.lineage.clone()
    }

    /// What running any of `runs` returns.
    fn lineage_of_runs(&self, runs: &[Classified]) -> Option<Arc<Lineage>> {
        let each: Vec<Option<Arc<Lineage>>> = runs.iter().map(|c| self.lineage_of_run(c)).collect();
        Lineage::of_any(each.iter().map(Option::as_ref))
    }

    fn apply(&mut self, changes: Vec<PreparedChange>) {
        for change in changes {
            match change {
                PreparedChange::Add(name, op, lineage) => {
                    self.sql_changed(name.as_bytes());
                    self.prepared.lineages.add(&name, lineage);
                    self.prepared.add_sql(name, op);
                }
                // The statements stay candidates ([`Prepared`]).
                PreparedChange::Remove(name) => self.sql_changed(name.as_bytes()),
                PreparedChange::Clear => self.any_sql_changed(),
            }
        }
    }

    /// Marks every statement Parse made as possibly replaced by SQL.
    fn any_sql_changed(&mut self) {
        for s in self.statements.values_mut() {
            mark_sql_changed(s, &mut self.generation);
        }
    }

    /// Marks the statement Parse made under `name` as possibly replaced by
    /// SQL (the SQL statement may also fail, so it is not forgotten: a
    /// review it waits for still holds).
    fn sql_changed(&mut self, name: &[u8]) {
        if let Some(s) = self.statements.get_mut(name) {
            mark_sql_changed(s, &mut self.generation);
        }
    }

    /// Judges the statements of one message.
    /// With `keep`, an allowed verdict carries the operations back.
    async fn judge(
        &mut self,
        mut classified: Arc<[Classified]>,
        keep: bool,
        defer_review: bool,
    ) -> Result<Verdict> {
        let mut ops = Vec::with_capacity(classified.len());
        let mut changes = Vec::new();
        // The exact parameters of portals a `FETCH` runs.
        let mut exact = Vec::new();
        for i in 0..classified.len() {
            let c = &classified[i];
            let executed = c
                .execute
                .as_deref()
                .map(|name| self.resolve_execute(&c.operation, name, &changes));
            if let Some((name, inner)) = &c.prepare {
                changes.push(PreparedChange::Add(
                    name.clone(),
                    inner.clone(),
                    c.lineage.clone(),
                ));
            }
            match &c.deallocate {
                Some(Some(name)) => changes.push(PreparedChange::Remove(name.clone())),
                Some(None) => changes.push(PreparedChange::Clear),
                None => {}
            }
            let fetched = match classified[i].fetch.as_deref() {
                Some(name) => match self.fetched(&classified[i].operation, name, &mut exact) {
                    Some(ops) => Some(ops),
                    None => return Ok(Verdict::Refuse(replaced_since_bind())),
                },
                None => None,
            };
            match executed {
                Some(each) => ops.extend(each),
                // A classification made for this text alone (a new text of a
                // known shape) is not shared with the cache: its operation is
                // moved out instead of copied.
                None => ops.push(match Arc::get_mut(&mut classified) {
                    Some(mine) => std::mem::replace(&mut mine[i].operation, opaque("")),
                    None => classified[i].operation.clone(),
                }),
            }
            ops.extend(fetched.into_iter().flatten());
        }
        Ok(match self.decide(ops, &exact, keep, defer_review).await? {
            Verdict::Allow(ops, _, review) => Verdict::Allow(ops, changes, review),
            other => other,
        })
    }

    /// Authorizes each operation (each record durable before anything is
    /// forwarded); one denial refuses the whole message; reviews wait for
    /// approval while the client is told where to approve.
    ///
    /// With `keep`, an allowed verdict carries the operations back;
    /// otherwise they go into their records without a copy.
    /// `exact_parameters`: values the operations show only masked, or not
    /// at all, exactly as sent ([`airlock_core::Session::request_approval`]).
    async fn decide(
        &mut self,
        ops: Vec<SqlOperation>,
        exact_parameters: &[u8],
        keep: bool,
        defer_review: bool,
    ) -> Result<Verdict> {
        // Earlier pipelined messages go out while this one is judged.
        self.flush_server().await?;
        let mut decisions = Vec::with_capacity(ops.len());
        for op in ops {
            let operation = Operation::Sql(op);
            let decision = self.cx.session.decide(&operation);
            // A statement under review is needed again for its approval
            // request.
            let kept =
                (keep || matches!(decision, Decision::Review { .. })).then(|| operation.clone());
            match self.cx.session.record_decision(operation, &decision).await {
                Ok(()) => decisions.push((kept, decision)),
                Err(e) => return Ok(Verdict::Refuse(store_error(&e))),
            }
        }
        if let Some((_, Decision::Deny { rule, message })) = decisions
            .iter()
            .find(|(_, d)| matches!(d, Decision::Deny { .. }))
        {
            return Ok(Verdict::Refuse(denied(rule, message)));
        }
        if defer_review {
            let review: Vec<SqlOperation> = decisions
                .iter()
                .filter(|(_, d)| matches!(d, Decision::Review { .. }))
                .filter_map(|(op, _)| match op {
                    Some(Operation::Sql(op)) => Some(op.clone()),
                    _ => None,
                })
                .collect();
            if !review.is_empty() {
                let ops = decisions
                    .into_iter()
                    .filter_map(|(operation, _)| match operation {
                        Some(Operation::Sql(op)) if keep => Some(op),
                        _ => None,
                    })
                    .collect();
                return Ok(Verdict::Allow(ops, Vec::new(), review));
            }
        }
        for (operation, decision) in &decisions {
            let (Decision::Review { message, .. }, Some(operation)) = (decision, operation) else {
                continue;
            };
            // From before the approval request is visible until the wait
            // ends, a cancel request stops this statement in the gateway.
            let cx = self.cx;
            let _waiting = cx.cancel.begin();
            let pending = match self
                .cx
                .session
                .request_approval(operation, exact_parameters, decision)
                .await
            {
                Ok(p) => p,
                Err(e) => return Ok(Verdict::Refuse(store_error(&e))),
            };
            if !pending.is_decided() {
                let note = format!(
                    "{message}: waiting for approval {} (approve at {})",
                    pending.id(),
                    pending.url()
                );
                self.actions.send(Action::Notice(frame::notice_response(
                    &note,
                    Some(
                        "the statement runs once it is approved; cancel the query to stop waiting",
                    ),
                )));
            }
            let id = pending.id().to_string();
            let wait = pending.wait();
            tokio::pin!(wait);
            let outcome = loop {
                tokio::select! {
                    d = &mut wait => break d,
                    () = self.cx.cancel.cancelled() => {
                        return Ok(Verdict::Refuse(frame::error_response(
                            Severity::Error,
                            sqlstate::QUERY_CANCELED,
                            &format!("canceling statement due to user request (it was waiting for approval {id})"),
                            None,
                        )));
                    }
                    more = self.reader.fill() => {
                        if !more? {
                            return Ok(Verdict::Gone);
                        }
                    }
                }
            };
            match outcome {
                Ok(Decision::Allow) => {}
                Ok(Decision::Deny { rule, message }) => {
                    return Ok(Verdict::Refuse(denied(&rule, &message)));
                }
                Ok(Decision::Review { rule, .. }) => {
                    return Ok(Verdict::Refuse(denied(
                        &rule,
                        "the approval did not settle the review",
                    )));
                }
                Err(e) => return Ok(Verdict::Refuse(store_error(&e))),
            }
        }
        let ops = decisions
            .into_iter()
            .filter_map(|(operation, _)| match operation {
                Some(Operation::Sql(op)) => Some(op),
                _ => None,
            })
            .collect();
        Ok(Verdict::Allow(ops, Vec::new(), Vec::new()))
    }
}

/// PostgreSQL's longest name (`NAMEDATALEN` - 1): it compares statement and
/// portal names by their first 63 bytes, and truncates longer identifiers.
pub(crate) const MAX_NAME_BYTES: usize = 63;

/// The refusal of an extended-protocol message that names a statement or
/// portal the gateway cannot tell apart as the server does. PostgreSQL
/// converts a name to its own encoding and compares the first 63 bytes of
/// that: `<63 bytes>x` and `<63 bytes>y` are one name there, where the
/// gateway would keep two and run a statement other than the one judged;
/// and a non-ASCII name's length and bytes there depend on the client's
/// encoding.
fn bad_name(frame: &Frame) -> Option<Bytes> {
    let body = frame.body();
    let (first, second): (&[u8], &[u8]) = match frame.tag {
        // Parse, Execute: the name first.
        b'P' | b'E' => (body, &[]),
        // Bind: the portal, then the statement.
        b'B' => match frame::take_cstr(body) {
            Some((_, rest)) => (body, rest),
            None => (body, &[]),
        },
        // Describe, Close: a kind byte, then the name.
        b'D' | b'C' => (body.get(1..).unwrap_or_default(), &[]),
        _ => return None,
    };
    let (first, second) = (name_of(first), name_of(second));
    let (code, what) = if first.len() > MAX_NAME_BYTES || second.len() > MAX_NAME_BYTES {
        (
            sqlstate::NAME_TOO_LONG,
            format!(
                "longer than {MAX_NAME_BYTES} bytes (PostgreSQL tells names apart only by their first {MAX_NAME_BYTES} bytes)"
            ),
        )
    } else if !first.is_ascii() || !second.is_ascii() {
        (
            sqlstate::INVALID_NAME,
            "not ASCII (PostgreSQL compares names in its own encoding, which may not be the client's)".to_string(),
        )
    } else {
        return None;
    };
    Some(frame::error_response(
        Severity::Error,
        code,
        &format!(
            "a statement or portal name {what}, so Airlock cannot know which statement it runs; use a shorter ASCII name"
        ),
        None,
    ))
}

/// The C string a message field starts with.
fn name_of(b: &[u8]) -> &[u8] {
    frame::take_cstr(b).map_or(b, |(n, _)| n)
}

impl ClientHalf<'_> {
    /// Whether running the statements may prepare or deallocate statements
    /// by name in ways the gateway does not follow message by message: SQL
    /// `PREPARE`/`DEALLOCATE`/`DISCARD` (which take effect when they run,
    /// not when they are parsed), anything the classifier could not see
    /// into, or an `EXECUTE` of a name Parse gave such a statement.
    fn changes_names(&self, classified: &[Classified]) -> bool {
        classified.iter().any(|c| {
            c.operation.kind == SqlKind::Opaque
                || c.prepare.is_some()
                || c.deallocate.is_some()
                || c.execute
                    .as_deref()
                    .is_some_and(|name| self.prepared.changes_names(name))
                || c.fetch.as_deref().is_some_and(|name| {
                    self.portals
                        .map
                        .get(name.as_bytes())
                        .is_some_and(|p| p.changes_names)
                })
        })
    }
}

/// Whether running the statements may start a COPY FROM STDIN: a COPY
/// FROM, anything opaque, or an `EXECUTE` (of a statement Parse made, which
/// may be one).
fn copies_in(classified: &[Classified]) -> bool {
    classified.iter().any(|c| {
        c.execute.is_some() || matches!(c.operation.kind, SqlKind::CopyIn | SqlKind::Opaque)
    })
}

/// The operations with the parameters they run with (rendered, masked)
/// appended, for their records and approvers.
fn with_parameters(mut ops: Vec<SqlOperation>, params: &str) -> Vec<SqlOperation> {
    if !params.is_empty() {
        for op in &mut ops {
            op.text = format!("{}\n-- parameters: {params}", op.text);
        }
    }
    ops
}

/// Whether running these may change what the server's prepared statements
/// return without a new Parse: PostgreSQL re-plans a prepared statement
/// after `SET search_path` or a schema change, and the same text may then
/// read another table, whose columns other masking rules cover.
fn changes_columns(classified: &[Classified]) -> bool {
    classified.iter().any(|c| {
        matches!(
            c.operation.kind,
            SqlKind::Set
                | SqlKind::Create
                | SqlKind::Alter
                | SqlKind::Drop
                | SqlKind::Call
                | SqlKind::Other
                | SqlKind::Opaque
        )
    })
}

/// Whether these end or begin a transaction, which undoes the `SET LOCAL`s
/// (and, rolled back, the `SET`s) made in it: after a settings change, the
/// next of these makes prepared statements' columns be learned again.
/// (Only then: a transaction on every statement's path costs nothing.)
fn ends_settings(classified: &[Classified]) -> bool {
    classified
        .iter()
        .any(|c| c.operation.kind == SqlKind::Transaction)
}

/// Gives a statement, and the ones the server may hold instead of it, new
/// `columns_id`s: their next executions are described afresh.
fn mark_columns_changed(statement: &mut Statement, ids: &mut u64) {
    let mut s = Some(statement);
    while let Some(st) = s {
        *ids += 1;
        st.columns_id = *ids;
        s = st.previous.as_deref_mut();
    }
}

/// Marks a statement, and the ones the server may hold instead of it, as
/// possibly replaced by SQL: each gets a new `columns_id` from `ids` (the
/// Parse generation counter, so ids never collide with a generation).
fn mark_sql_changed(statement: &mut Statement, ids: &mut u64) {
    let mut s = Some(statement);
    while let Some(st) = s {
        st.sql_changed = true;
        *ids += 1;
        st.columns_id = *ids;
        s = st.previous.as_deref_mut();
    }
}

/// An answer from the server that matches no request the gateway knows of.
/// A `RowDescription` and what was made of it.
#[derive(Debug)]
struct Described {
    frame: Bytes,
    cols: Arc<Vec<Column>>,
    /// The frame with its column names masked, when any was.
    masked: Option<Bytes>,
    /// What was masked in the names.
    counts: MaskCounts,
    /// What the computed columns were taken to be made of.
    lineage: Option<Arc<Lineage>>,
}

fn out_of_step(what: &str) -> Error {
    Error::Upstream(format!(
        "the server sent a {what} that answers no request Airlock knows of; the session is ended rather than risk passing on results unmasked"
    ))
}

/// The first C string of a message body, as raw bytes.
fn cstr_at(b: &[u8]) -> Bytes {
    match frame::take_cstr(b) {
        Some((s, _)) => Bytes::copy_from_slice(s),
        None => Bytes::new(),
    }
}

fn opaque(text: &str) -> SqlOperation {
    SqlOperation {
        text: text.to_string(),
        kind: SqlKind::Opaque,
        object: None,
        tables: Vec::new(),
        has_where: None,
    }
}

fn denied(rule: &str, message: &str) -> Bytes {
    frame::error_response(
        Severity::Error,
        sqlstate::INSUFFICIENT_PRIVILEGE,
        &format!("denied by rule {rule}: {message}"),
        None,
    )
}

/// The refusal of statement text that is not UTF-8. The session is UTF-8
/// (`startup::check_encoding`), where the server refuses such text too,
/// with the same SQLSTATE; the gateway refuses it first, because it would
/// judge it otherwise than the server reads it if SQL had just changed
/// client_encoding in the same pipeline.
fn not_utf8() -> Bytes {
    frame::error_response(
        Severity::Error,
        sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
        "the statement is not valid UTF-8: sessions through Airlock use client_encoding UTF8",
        None,
    )
}

fn replaced_since_bind() -> Bytes {
    frame::error_response(
        Severity::Error,
        sqlstate::FEATURE_NOT_SUPPORTED,
        "the statement runs a prepared statement or portal by name (EXECUTE, or FETCH \
         from a portal that does), and another message came between that portal's \
         Bind and its first execution: the name may stand for another statement now, \
         whose rows would not match the columns described at the Bind, so Airlock does \
         not run it; execute such a portal right after its Bind",
        None,
    )
}

fn store_error(e: &Error) -> Bytes {
    let code = match e {
        Error::Store(_) | Error::Internal(_) => sqlstate::SYSTEM_ERROR,
        _ => sqlstate::INSUFFICIENT_PRIVILEGE,
    };
    frame::error_response(Severity::Error, code, &e.to_string(), None)
}

// ---------------------------------------------------------------------------
// Server half

struct ServerHalf<'a> {
    cx: &'a Context<'a>,
    reader: FrameReader<ReadHalf<UpstreamStream>>,
    client: BufWriter<WriteHalf<ClientStream>>,
    actions: Arc<Actions>,
    /// Actions taken from `actions`, being acted on.
    inbox: VecDeque<Action>,
    queue: VecDeque<Pending>,
    /// The transaction status of the server's last ReadyForQuery.
    status: u8,
    /// After an error in the extended protocol: the server skips to Sync.
    skipping: bool,
    /// The server entered copy-in mode since its last ReadyForQuery.
    copied_in: bool,
    /// Columns of portals, from Describe (`None`: the portal returns no rows).
    portals: HashMap<Bytes, Option<Arc<Vec<Column>>>>,
    param_types: ParamTypes,
    outcomes: Arc<Outcomes>,
    columns: ColumnsCache,
    /// The last `RowDescription` and what was made of it (its columns, the
    /// frame with masked names, what was masked in them): a repeated query
    /// gets the same bytes back, and is not decoded again.
    last_description: Option<Described>,
}

impl ServerHalf<'_> {
    /// The columns a RowDescription describes, and whether the catalog
    /// named all of those that come from a table (if not, they are not
    /// worth remembering beyond this result).
    /// The columns a `RowDescription` describes, whether they could be
    /// named completely, and the frame to send the client when a column
    /// name had something to mask (a name can carry data: `SELECT 1 AS
    /// "4111111111111111"`, or a view whose column a function named after a
    /// value).
    /// What the statement the head of the queue answers returns.
    fn head_lineage(&self) -> Option<Arc<Lineage>> {
        match self.queue.front() {
            // A query with a piece the classifier could not read may have
            // been split otherwise by the server: any of its statements may
            // be any, and so may one beyond those classified.
            Some(Pending::Query(q))
                if q.at >= q.statements.len()
                    || q.statements
                        .iter()
                        .any(|c| c.operation.kind == SqlKind::Opaque) =>
            {
                Some(Arc::new(Lineage::anything()))
            }
            Some(Pending::Query(q)) => match q.runs.get(q.at) {
                Some(run) => run.clone(),
                None => q.statements.get(q.at).and_then(|c| c.lineage.clone()),
            },
            Some(Pending::DescribePortal { lineage, .. }) => lineage.clone(),
            Some(Pending::Execute { track, .. }) => track.lineage.clone(),
            _ => None,
        }
    }

    /// How each of the `columns` columns of a COPY OUT is masked, when a
    /// rule or a secret-like name applies to any of them (`None`: the
    /// detectors alone, over each row as one text). A whole table's columns
    /// are the catalog's; while it cannot tell them, each is a whole row of
    /// the table (any rule for a column of it covers every column).
    async fn copy_plans(&mut self, lineage: &Lineage, columns: usize) -> Option<Vec<FieldPlan>> {
        let copy = lineage.copy.as_ref()?;
        // A query's columns may be computed; a table's are its own, unless
        // which table is not known.
        let mut derived = copy.table.is_none();
        let names: Vec<Vec<String>> = match &copy.table {
            Some(table) => {
                let known = match &self.cx.catalog {
                    Some(catalog) => catalog.relation_columns(table).await,
                    None => None,
                };
                // One table of that name (in any schema) with these many
                // columns: its columns. Otherwise which table the server's
                // search path finds is not known here.
                match known.as_deref().map(Vec::as_slice) {
                    Some([one]) if one.len() == columns => one.iter().map(|n| n.to_vec()).collect(),
                    // Each field may be any column of any of them.
                    other => {
                        derived = true;
                        let mut all = vec![format!("{table}.*")];
                        all.extend(
                            other
                                .into_iter()
                                .flatten()
                                .flatten()
                                .flat_map(|n| n.iter().cloned()),
                        );
                        vec![all; columns]
                    }
                }
            }
            None => {
                let mut names: Vec<Vec<String>> = lineage
                    .columns(columns)
                    .into_iter()
                    .map(|s| s.names())
                    .collect();
                // `COPY (UPDATE … RETURNING …)`: what it wrote, too.
                for n in &mut names {
                    lineage.written.add_to(n);
                }
                self.behind(&mut names).await;
                names
            }
        };
        let masker = self.cx.session.masker();
        let plans: Vec<FieldPlan> = names
            .iter()
            .map(|n| {
                let mut names: Vec<&str> = n.iter().map(String::as_str).collect();
                if names.iter().any(|n| crate::catalog::holds_samples(n)) {
                    names.push("*");
                }
                let plan = masker.field_plan(&names);
                if derived { plan.derived() } else { plan }
            })
            .collect();
        plans.iter().any(|p| *p != FieldPlan::NONE).then_some(plans)
    }

    /// Adds to each column's names (`table.column`, `table.*`, as a
    /// query gives them) what the catalog says is behind them: the same
    /// column in every schema's table of that name and in the tables it
    /// inherits from, and for a view's column the table columns the view
    /// computes it from. False when the catalog could not be asked.
    async fn behind(&mut self, names: &mut [Vec<String>]) -> bool {
        let Some(catalog) = self.cx.catalog.clone() else {
            return true;
        };
        let mut relations: Vec<&str> = names
            .iter()
            .flatten()
            .filter_map(|n| n.rsplit_once('.').map(|(t, _)| t))
            .collect();
        relations.sort_unstable();
        relations.dedup();
        let relations: Vec<String> = relations.into_iter().map(str::to_owned).collect();
        let mut complete = true;
        let mut found = HashMap::new();
        for relation in relations {
            match catalog.relation_columns(&relation).await {
                Some(tables) => {
                    found.insert(relation, tables);
                }
                None => complete = false,
            }
        }
        for column in names.iter_mut() {
            let mut more = Vec::new();
            for name in column.iter() {
                let Some((relation, col)) = name.rsplit_once('.') else {
                    continue;
                };
                let Some(tables) = found.get(relation) else {
                    continue;
                };
                for c in tables.iter().flatten() {
                    let own = c.first().map(String::as_str).unwrap_or_default();
                    let matches = col == "*"
                        || own
                            .rsplit_once('.')
                            .is_some_and(|(_, last)| last.eq_ignore_ascii_case(col));
                    if matches {
                        more.extend(c.iter().cloned());
                    }
                }
            }
            // A whole row of a table the catalog knows is its columns: a
            // rule that names no table (`ssn`) then covers it only when
            // the table has such a column, not whatever the table is.
            column.retain(|name| {
                !name.strip_suffix(".*").is_some_and(|relation| {
                    found.get(relation).is_some_and(|tables| !tables.is_empty())
                })
            });
            column.extend(more);
        }
        complete
    }

    async fn described(
        &mut self,
        frame: &Frame,
        lineage: Option<Arc<Lineage>>,
    ) -> Result<(Arc<Vec<Column>>, bool, Option<Bytes>)> {
        if let Some(last) = &self.last_description
            && last.frame == frame.bytes
            && last.lineage == lineage
        {
            let (cols, masked) = (last.cols.clone(), last.masked.clone());
            self.record_counts(last.counts.clone());
            return Ok((cols, true, masked));
        }
        if !frame::column_names_are_utf8(frame.body()) {
            // SQL changed client_encoding earlier in this query or
            // pipeline; the server reports that only at its end.
            return Err(self
                .encoding_changed(
                    "a result's column names are not UTF-8 (client_encoding was changed)",
                )
                .await);
        }
        let desc: RowDescription = frame.decode(Peer::Upstream)?;
        // Columns straight from a table are named by the catalog, so an
        // alias cannot take a column out of its masking rule.
        let mut complete = true;
        if let Some(catalog) = &self.cx.catalog {
            let origins: Vec<(u32, i16)> = desc
                .fields
                .iter()
                .map(|f| (f.table_id.cast_unsigned(), f.column_id))
                // A whole row (column 0) has no name to look up.
                .filter(|&(table, column)| table != 0 && column != 0)
                .collect();
            complete = if catalog.needs(&origins) {
                catalog.learn(&origins).await
            } else {
                // A column the catalog did not know is not asked again for
                // a while; its names are still not to be remembered.
                catalog.all_named(&origins)
            };
        }
        // What the computed columns are made of, each name also in the
        // tables and views behind it.
        let computed =
            match &lineage {
                Some(l) => {
                    let mut names: Vec<Vec<String>> = l
                        .columns(desc.fields.len())
                        .into_iter()
                        .map(|s| s.names())
                        .collect();
                    // A column the server names as a table's is that column
                    // (the catalog names it), unless a write put a value made
                    // of other columns into it (`SET team = pay_grade
                    // RETURNING team`): it is also named after what was
                    // written to a column of its name, and a computed one
                    // after what was written to the columns it is made of.
                    for (field, n) in desc.fields.iter().zip(names.iter_mut()) {
                        if field.table_id == 0 {
                            l.written.add_to(n);
                            continue;
                        }
                        n.clear();
                        if !l.written.is_empty() {
                            let own = self.cx.catalog.as_ref().and_then(|c| {
                                c.column(field.table_id.cast_unsigned(), field.column_id)
                            });
                            n.extend(l.written.names_for(
                                own.as_ref().and_then(|o| o.first()).map(String::as_str),
                            ));
                        }
                    }
                    complete &= self.behind(&mut names).await;
                    Some(names)
                }
                None => None,
            };
        let masker = self.cx.session.masker();
        let mut cols = rows::columns(
            masker,
            &desc,
            |table, attnum| {
                self.cx
                    .catalog
                    .as_ref()
                    .and_then(|c| c.column(table, attnum))
            },
            computed.as_deref(),
        );
        // Rules were matched on the names as the server gave them; the
        // client and the record get them masked.
        let mut counts = MaskCounts::new();
        let mut desc = desc;
        let mut renamed = false;
        for (field, col) in desc.fields.iter_mut().zip(cols.iter_mut()) {
            if let Some(name) = rows::mask_plain(masker, &field.name, &mut counts) {
                field.name.clone_from(&name);
                col.name = name;
                renamed = true;
            }
        }
        self.record_counts(counts.clone());
        let masked = renamed.then(|| frame::encode(&desc));
        if masked.as_ref().is_some_and(Bytes::is_empty) {
            return Err(Error::Upstream(
                "a result's description could not be written back with its column names masked"
                    .into(),
            ));
        }
        let cols = Arc::new(cols);
        // A copy: holding the frame itself would pin the read buffer. Not
        // kept when the catalog could not be asked, so it is asked again.
        if complete {
            self.last_description = Some(Described {
                frame: Bytes::copy_from_slice(&frame.bytes),
                cols: cols.clone(),
                masked: masked.clone(),
                counts,
                lineage,
            });
        }
        Ok((cols, complete, masked))
    }

    /// Ends the session because its text is no longer UTF-8: the session
    /// began in UTF-8 (`startup::check_encoding`) and SQL changed that
    /// (`SET client_encoding`, `set_config`). The gateway would read what
    /// follows otherwise than the server (a column or table named outside
    /// ASCII, and no rule for it applies), so nothing more passes. Returns
    /// the error that ends the session, once the client has been told.
    async fn encoding_changed(&mut self, what: &str) -> Error {
        let reason = format!(
            "{what}: Airlock judges and masks statements and results as UTF-8 only, so the session ends; keep client_encoding UTF8"
        );
        let fatal = frame::error_response(
            Severity::Fatal,
            sqlstate::FEATURE_NOT_SUPPORTED,
            &reason,
            None,
        );
        let _ = self.write_client(&fatal).await;
        Error::Client(reason)
    }

    async fn run(&mut self) -> Result<String> {
        let end = self.relay().await;
        if let Err(e @ Error::Upstream(_)) = &end {
            // The client is told why its session ends, masked like
            // anything else that reaches it.
            let mut counts = MaskCounts::new();
            let text = self
                .cx
                .session
                .masker()
                .mask_str(None, &e.to_string(), &mut counts)
                .into_owned();
            let fatal =
                frame::error_response(Severity::Fatal, sqlstate::INTERNAL_ERROR, &text, None);
            let _ = self.write_client(&fatal).await;
        }
        let _ = self.client.flush().await;
        end
    }

    async fn relay(&mut self) -> Result<String> {
        loop {
            if let Some(end) = self.take_actions().await? {
                return Ok(end);
            }
            self.advance().await?;
            if !self.reader.has_frame() {
                self.flush_client().await?;
            }
            tokio::select! {
                biased;
                () = self.actions.attention() => {}
                frame = self.reader.next() => match frame? {
                    Some(mut frame) => loop {
                        // Anything the client half queued before this answer
                        // was sent must be known before matching it.
                        if let Some(end) = self.take_actions().await? {
                            return Ok(end);
                        }
                        self.advance().await?;
                        self.handle(frame).await?;
                        // The rest of what one read brought (the rows of a
                        // result) without a turn through the select each.
                        match self.reader.try_next()? {
                            Some(next) => frame = next,
                            None => break,
                        }
                    },
                    None => return Ok("the server closed the connection".into()),
                },
            }
        }
    }

    /// Acts on what the client half queued; `Some` when the session ends.
    async fn take_actions(&mut self) -> Result<Option<String>> {
        if self.inbox.is_empty() {
            self.actions.take(&mut self.inbox);
        }
        while let Some(action) = self.inbox.pop_front() {
            if let Some(end) = self.act(action).await? {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    async fn act(&mut self, action: Action) -> Result<Option<String>> {
        match action {
            Action::Expect(p) => self.queue.push_back(p),
            Action::Notice(n) => {
                self.write_client(&n).await?;
                self.flush_client().await?;
            }
            Action::Fatal(e, reason) => {
                self.write_client(&e).await?;
                self.flush_client().await?;
                return Ok(Some(reason));
            }
        }
        Ok(None)
    }

    async fn write_client(&mut self, bytes: &[u8]) -> Result<()> {
        self.client
            .write_all(bytes)
            .await
            .map_err(|e| Error::Client(format!("writing to the client failed: {e}")))
    }

    async fn flush_client(&mut self) -> Result<()> {
        self.client
            .flush()
            .await
            .map_err(|e| Error::Client(format!("writing to the client failed: {e}")))
    }

    /// Emits the gateway's own answers that have reached the head of the
    /// queue, and drops what the server skips after an error.
    async fn advance(&mut self) -> Result<()> {
        loop {
            match self.queue.front() {
                Some(Pending::Sync { .. }) | None => return Ok(()),
                Some(_) if self.skipping => {
                    if let Some(p) = self.queue.pop_front() {
                        self.skipped(p);
                    }
                }
                Some(Pending::Refused(_)) => {
                    if let Some(Pending::Refused(error)) = self.queue.pop_front() {
                        self.write_client(&error).await?;
                        self.skipping = true;
                    }
                }
                Some(_) => return Ok(()),
            }
        }
    }

    /// After a COPY FROM STDIN: the Syncs the client sent between starting
    /// the COPY and ending its data reached the server in copy-in mode,
    /// which ignores them. They are the leading Syncs sent before the
    /// client's latest CopyDone or CopyFail, when a Sync sent after it is
    /// queued too (the one this ReadyForQuery answers).
    fn drop_syncs_ignored_in_copy(&mut self) {
        let Some(Pending::Sync {
            copy_ends: first, ..
        }) = self.queue.front()
        else {
            return;
        };
        let first = *first;
        let answered_later = self
            .queue
            .iter()
            .any(|p| matches!(p, Pending::Sync { copy_ends, .. } if *copy_ends > first));
        if !answered_later {
            return;
        }
        while matches!(self.queue.front(), Some(Pending::Sync { copy_ends, .. }) if *copy_ends == first)
        {
            self.queue.pop_front();
        }
    }

    /// Records the end of a message the server skipped.
    fn skipped(&mut self, p: Pending) {
        match p {
            Pending::Execute { mut track, .. } => {
                track.error =
                    Some("not executed: an earlier message of the pipeline failed".into());
                self.finish(track, None);
            }
            other => {
                if let Some(id) = other.watch() {
                    self.outcomes.set(id, false);
                }
            }
        }
    }

    fn track(&mut self) -> Option<&mut Track> {
        match self.queue.front_mut()? {
            Pending::Query(q) => Some(&mut q.current),
            Pending::Execute { track, .. } => Some(track),
            Pending::FunctionCall(track) => Some(track),
            _ => None,
        }
    }

    /// Records how a statement ended, with its first rows and masking
    /// counts, in one record. At once, before the client can see the
    /// answer: a result recorded after the flush could follow the next
    /// statement's record (replay pairs them by order), or be lost with a
    /// connection dropped at shutdown while the flush waits.
    fn finish(&self, track: Track, rows: Option<u64>) {
        let output = (!track.rows.is_empty()).then(|| {
            let mut data = track
                .columns
                .as_ref()
                .map(|c| rows::header(c))
                .unwrap_or_default();
            data.reserve(track.rows.iter().map(|r| r.len() + 1).sum());
            for row in &track.rows {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(row);
            }
            data
        });
        self.cx.session.record_later(Event::Result {
            rows,
            error: track.error,
            duration_us: track.started.elapsed().as_micros() as u64,
            output,
            masked: track.counts,
        });
    }

    /// Ends the current statement of the head entry.
    fn complete(&mut self, rows: Option<u64>) {
        match self.queue.front_mut() {
            Some(Pending::Query(q)) => {
                let track = std::mem::replace(&mut q.current, Track::new());
                q.at += 1;
                self.finish(track, rows);
            }
            Some(Pending::Execute { .. }) => {
                if let Some(Pending::Execute { track, .. }) = self.queue.pop_front() {
                    self.finish(track, rows);
                }
            }
            _ => {}
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<()> {
        let masker = self.cx.session.masker();
        match frame.tag {
            b'N' => {
                let mut n: NoticeResponse = frame.decode(Peer::Upstream)?;
                let out = if self.mask_fields(&mut n.fields) {
                    frame::encode(&n)
                } else {
                    frame.bytes.clone()
                };
                self.write_client(&out).await
            }
            b'E' => {
                if matches!(self.queue.front(), Some(Pending::Rollback)) {
                    // The server failed the gateway's own Parse and now skips
                    // to Sync; the client gets the refusal queued next.
                    self.queue.pop_front();
                    return Ok(());
                }
                let mut e: ErrorResponse = frame.decode(Peer::Upstream)?;
                let detected =
                    self.mask_fields(&mut e.fields) | self.mask_quoted_values(&mut e.fields);
                let out = if self.mask_row_values(&mut e.fields).await || detected {
                    frame::encode(&e)
                } else {
                    frame.bytes.clone()
                };
                let text = error_text(&e);
                self.on_error(text);
                self.write_client(&out).await
            }
            b'A' => {
                let mut n: NotificationResponse = frame.decode(Peer::Upstream)?;
                let mut counts = MaskCounts::new();
                let channel = rows::mask_plain(masker, &n.channel, &mut counts);
                let payload = rows::mask_plain(masker, &n.payload, &mut counts);
                self.record_counts(counts);
                if channel.is_none() && payload.is_none() {
                    return self.write_client(&frame.bytes).await;
                }
                if let Some(c) = channel {
                    n.channel = c;
                }
                if let Some(p) = payload {
                    n.payload = p;
                }
                self.write_client(&frame::encode(&n)).await
            }
            b'S' => {
                let mut p: ParameterStatus = frame.decode(Peer::Upstream)?;
                if p.name == "client_encoding" && !crate::startup::is_utf8(&p.value) {
                    return Err(self
                        .encoding_changed(&format!("client_encoding was changed to {:?}", p.value))
                        .await);
                }
                let mut counts = MaskCounts::new();
                match rows::mask_plain(masker, &p.value, &mut counts) {
                    Some(v) => {
                        p.value = v;
                        self.record_counts(counts);
                        self.write_client(&frame::encode(&p)).await
                    }
                    None => self.write_client(&frame.bytes).await,
                }
            }
            b'Z' => {
                frame::check_structure(b'Z', frame.body(), Peer::Upstream)?;
                self.status = frame.body()[0];
                self.skipping = false;
                if std::mem::take(&mut self.copied_in) {
                    self.drop_syncs_ignored_in_copy();
                }
                let idle = self.status == b'I';
                if idle {
                    // No transaction: the server holds no portal now.
                    self.portals.clear();
                }
                match self.queue.front() {
                    Some(Pending::Query(_)) => {
                        if let Some(Pending::Query(q)) = self.queue.pop_front() {
                            self.actions
                                .ready_through
                                .fetch_max(q.seq, Ordering::Release);
                            if idle {
                                self.actions
                                    .idle_through
                                    .fetch_max(q.seq, Ordering::Release);
                            }
                            // A query whose last statement produced no
                            // completion (an error already ended it) has
                            // nothing more to record.
                            if !q.current.rows.is_empty() {
                                self.finish(q.current, None);
                            }
                        }
                    }
                    Some(Pending::Sync { .. }) => {
                        if let Some(Pending::Sync { seq, .. }) = self.queue.pop_front() {
                            self.actions.ready_through.fetch_max(seq, Ordering::Release);
                            if idle {
                                self.actions.idle_through.fetch_max(seq, Ordering::Release);
                            }
                        }
                    }
                    Some(Pending::FunctionCall(_)) => {
                        if let Some(Pending::FunctionCall(track)) = self.queue.pop_front() {
                            self.finish(track, None);
                        }
                    }
                    // Every ReadyForQuery answers a Sync, a query or a
                    // function call. Anything else means the gateway has
                    // lost its place, and the next answers would be masked
                    // by the wrong request's columns: fail closed.
                    _ => return Err(out_of_step("ReadyForQuery")),
                }
                self.write_client(&frame.bytes).await
            }
            b'1' | b'2' | b'3' => {
                if matches!(
                    self.queue.front(),
                    Some(Pending::Parse(_) | Pending::Bind(_) | Pending::Close { .. })
                ) && let Some(answered) = self.queue.pop_front()
                {
                    if let Pending::Close {
                        portal: Some(portal),
                        ..
                    } = &answered
                    {
                        self.portals.remove(portal);
                    }
                    if let Some(id) = answered.watch() {
                        self.outcomes.set(id, true);
                    }
                }
                self.write_client(&frame.bytes).await
            }
            b't' => {
                if let Some(Pending::DescribeStatement(Some(generation))) = self.queue.front() {
                    let d: ParameterDescription = frame.decode(Peer::Upstream)?;
                    let generation = *generation;
                    if let Ok(mut m) = self.param_types.lock() {
                        m.insert(generation, d.types);
                    }
                }
                self.write_client(&frame.bytes).await
            }
            b'T' => {
                let lineage = self.head_lineage();
                let (cols, complete, masked) = self.described(&frame, lineage).await?;
                match self.queue.front_mut() {
                    Some(Pending::Query(q)) => q.current.columns = Some(cols),
                    Some(Pending::DescribePortal {
                        name, hidden, key, ..
                    }) => {
                        let (name, hidden) = (name.clone(), *hidden);
                        let key = key.take();
                        if complete {
                            remember(&self.columns, key, Some(cols.clone()));
                        }
                        self.portals.insert(name, Some(cols));
                        self.queue.pop_front();
                        if hidden {
                            return Ok(());
                        }
                    }
                    Some(Pending::DescribeStatement(_)) => {
                        self.queue.pop_front();
                    }
                    _ => return Err(out_of_step("RowDescription")),
                }
                self.write_client(masked.as_deref().unwrap_or(&frame.bytes))
                    .await
            }
            b'n' => {
                match self.queue.front_mut() {
                    Some(Pending::DescribePortal {
                        name, hidden, key, ..
                    }) => {
                        let (name, hidden) = (name.clone(), *hidden);
                        remember(&self.columns, key.take(), None);
                        self.portals.insert(name, None);
                        self.queue.pop_front();
                        if hidden {
                            return Ok(());
                        }
                    }
                    Some(Pending::DescribeStatement(_)) => {
                        self.queue.pop_front();
                    }
                    _ => {}
                }
                self.write_client(&frame.bytes).await
            }
            b'D' => self.data_row(frame).await,
            b'C' => {
                frame::check_structure(b'C', frame.body(), Peer::Upstream)?;
                let rows = row_count(frame.body());
                self.complete(rows);
                self.write_client(&frame.bytes).await
            }
            b'I' => {
                self.complete(None);
                self.write_client(&frame.bytes).await
            }
            b's' => {
                if let Some(Pending::Execute { .. }) = self.queue.front()
                    && let Some(Pending::Execute { track, .. }) = self.queue.pop_front()
                {
                    let n = track.count;
                    self.finish(track, Some(n));
                }
                self.write_client(&frame.bytes).await
            }
            b'G' => {
                self.copied_in = true;
                self.write_client(&frame.bytes).await
            }
            b'H' => {
                // The overall format: 0 text, 1 binary.
                let binary = frame.body().first() == Some(&1);
                // A COPY OUT that no statement of the gateway's is running
                // (the gateway has lost its place, say after messages the
                // server ignored during a COPY) would send its rows
                // unmasked: the session ends instead, as for any answer out
                // of step.
                if self.track().is_none() {
                    return Err(out_of_step("CopyOutResponse"));
                }
                let columns = frame
                    .body()
                    .get(1..3)
                    .map_or(0, |n| i16::from_be_bytes([n[0], n[1]]).max(0) as usize);
                let copy = self.head_lineage().filter(|l| l.copy.is_some());
                let plans = match &copy {
                    Some(lineage) => self.copy_plans(lineage, columns).await,
                    None => None,
                };
                let Some(t) = self.track() else {
                    return Err(out_of_step("CopyOutResponse"));
                };
                let format = copy.and_then(|l| l.copy.clone());
                // A COPY whose statement this gateway could not read (an
                // option it does not know, a statement it could not line
                // up): its fields cannot be told apart, so while any
                // column rule is on, every field may be a ruled column's.
                let plans = match (&format, plans) {
                    (None, None) if masker.has_field_rules() => {
                        Some(vec![masker.whole_row_plan(""); columns.max(1)])
                    }
                    (_, plans) => plans,
                };
                let withheld = format.is_none() && plans.is_some();
                t.copy_out = Some(match (binary, plans, format) {
                    (false, Some(plans), _) if withheld => CopyOut::Withheld(plans[0].clone()),
                    (true, plans, _) => {
                        let mut copy = rows::BinaryCopy::default();
                        copy.plans = plans;
                        CopyOut::Binary(copy)
                    }
                    (false, Some(plans), Some(copy))
                        if !matches!(copy.format, crate::classify::CopyFormat::Binary) =>
                    {
                        CopyOut::Fields(rows::CopyFields {
                            format: copy.format,
                            plans,
                            header: copy.header,
                        })
                    }
                    (false, ..) => CopyOut::Text,
                });
                self.write_client(&frame.bytes).await
            }
            b'd' => {
                let record_rows = self.cx.record_rows;
                let mut counts = MaskCounts::new();
                let Some(t) = self.track() else {
                    return Err(out_of_step("CopyData"));
                };
                let (out, lines) = match &mut t.copy_out {
                    None => return Err(out_of_step("CopyData")),
                    Some(CopyOut::Withheld(plan)) => {
                        let line = frame::lossy(frame.body());
                        let masked =
                            masker.mask_field(plan, line.trim_end_matches('\n'), &mut counts);
                        let row = masked.to_string();
                        (
                            Some(frame::raw(b'd', format!("{masked}\n").as_bytes())),
                            vec![row],
                        )
                    }
                    Some(CopyOut::Fields(fields)) => {
                        let (masked, line) =
                            rows::mask_copy_fields(masker, fields, frame.body(), &mut counts);
                        let out = match masked {
                            Some(data) => frame::raw(b'd', &data),
                            None => frame.bytes.clone(),
                        };
                        (Some(out), line.into_iter().collect::<Vec<_>>())
                    }
                    Some(CopyOut::Text) => {
                        let (masked, line) =
                            rows::mask_copy_line(masker, frame.body(), &mut counts);
                        let out = match masked {
                            Some(data) => frame::raw(b'd', &data),
                            None => frame.bytes.clone(),
                        };
                        (Some(out), line.into_iter().collect::<Vec<_>>())
                    }
                    Some(CopyOut::Binary(copy)) => {
                        let (data, lines) = copy.push(masker, frame.body(), &mut counts);
                        ((!data.is_empty()).then(|| frame::raw(b'd', &data)), lines)
                    }
                };
                for (k, v) in counts {
                    *t.counts.entry(k).or_default() += v;
                }
                for line in lines {
                    if t.rows.len() < record_rows {
                        t.rows.push(line);
                    }
                }
                match out {
                    Some(out) => self.write_client(&out).await,
                    None => Ok(()),
                }
            }
            b'V' => {
                // A fast-path call's result: masked like a value of unknown type.
                let mut counts = MaskCounts::new();
                let out = rows::mask_function_result(masker, frame.body(), &mut counts);
                self.record_counts(counts);
                match out {
                    Some(body) => self.write_client(&frame::raw(b'V', &body)).await,
                    None => self.write_client(&frame.bytes).await,
                }
            }
            b'c' => {
                let rest = match self.track().and_then(|t| t.copy_out.take()) {
                    Some(CopyOut::Binary(mut copy)) => copy.finish(),
                    _ => Bytes::new(),
                };
                if !rest.is_empty() {
                    self.write_client(&frame::raw(b'd', &rest)).await?;
                }
                self.write_client(&frame.bytes).await
            }
            _ => self.write_client(&frame.bytes).await,
        }
    }

    async fn data_row(&mut self, frame: Frame) -> Result<()> {
        let record_rows = self.cx.record_rows;
        let cols = match self.queue.front() {
            Some(Pending::Query(q)) => q.current.columns.clone(),
            Some(Pending::Execute { portal, track }) => match &track.columns {
                Some(cols) => Some(cols.clone()),
                None => {
                    // Learned from a Describe answered just before the rows.
                    let cols = self.portals.get(portal).cloned().flatten();
                    if let Some(Pending::Execute { track, .. }) = self.queue.front_mut() {
                        track.columns = cols.clone();
                    }
                    cols
                }
            },
            _ => return Err(out_of_step("DataRow")),
        };
        let no_cols = Vec::new();
        let cols_ref: &[Column] = cols.as_deref().unwrap_or(&no_cols);
        let render = self.track().is_some_and(|t| t.rows.len() < record_rows);
        let mut counts = MaskCounts::new();
        let (masked, line) = rows::mask_row(
            self.cx.session.masker(),
            cols_ref,
            frame.body(),
            &mut counts,
            render,
        )
        .map_err(Error::Upstream)?;
        match self.track() {
            Some(t) => {
                t.count += 1;
                for (k, v) in counts {
                    *t.counts.entry(k).or_default() += v;
                }
                if let Some(line) = line {
                    t.rows.push(line);
                }
            }
            None => self.record_counts(counts),
        }
        match masked {
            Some(bytes) => self.write_client(&bytes).await,
            None => self.write_client(&frame.bytes).await,
        }
    }

    fn record_counts(&self, counts: MaskCounts) {
        if !counts.is_empty() {
            self.cx.session.record_later(Event::Masked { counts });
        }
    }

    /// An error from the server ends the current statement; in the
    /// extended protocol the server then skips to Sync.
    fn on_error(&mut self, text: String) {
        match self.queue.front_mut() {
            Some(Pending::Query(q)) => {
                let mut track = std::mem::replace(&mut q.current, Track::new());
                track.error = Some(text);
                self.finish(track, None);
            }
            Some(Pending::FunctionCall(track)) => track.error = Some(text),
            Some(Pending::Sync { .. }) | None => {}
            Some(Pending::Execute { .. }) => {
                if let Some(Pending::Execute { mut track, .. }) = self.queue.pop_front() {
                    track.error = Some(text);
                    self.finish(track, None);
                }
                self.skipping = true;
            }
            Some(_) => {
                if let Some(id) = self.queue.pop_front().and_then(|p| p.watch()) {
                    self.outcomes.set(id, false);
                }
                self.skipping = true;
            }
        }
    }

    /// Masks the values of a table's row that an integrity error (SQLSTATE
    /// class 23) shows in its DETAIL (`Failing row contains (…)`, `Key
    /// (email)=(…) already exists`) by the column rules of that table, after
    /// the detectors have had them: otherwise a write that fails a
    /// constraint would show the client every column of the row, ruled
    /// ones included. A key's values are masked when a rule covers one of
    /// its columns; a whole row's when one covers any column of the table
    /// (from the catalog; without it, any rule for that table or for no
    /// table). A DETAIL the gateway cannot read (the server's messages in
    /// another language) counts as a whole row. Returns whether something
    /// changed.
    async fn mask_row_values(&mut self, fields: &mut [(u8, String)]) -> bool {
        let (Some(code), Some(table), Some(d)) = (
            field_of(fields, b'C'),
            field_of(fields, b't'),
            fields.iter().position(|(k, _)| *k == b'D'),
        ) else {
            return false;
        };
        if !code.starts_with("23") {
            return false;
        }
        // A DETAIL in another language (`lc_messages`) is not read: it is
        // taken as values of the table as a whole.
        let found = rows::row_values(&fields[d].1).unwrap_or_else(|| rows::RowValues {
            spans: std::iter::once(0..fields[d].1.len()).collect(),
            columns: None,
        });
        let schema = field_of(fields, b's');
        let qualified = match schema {
            Some(schema) => format!("{schema}.{table}"),
            None => table.to_owned(),
        };
        let masker = self.cx.session.masker();
        // Each column also by its name alone: the table an error names is
        // not always the one whose rule covers the value. A foreign key's
        // `Key (…)=(…) is still referenced from table "loans"` shows the
        // referenced table's key but names the referencing one; a
        // partition's error names the partition, not the table its rules
        // are written for.
        let with_bare = |names: &[String]| -> Vec<String> {
            let bare = names
                .iter()
                .filter_map(|n| n.rsplit_once('.').map(|(_, c)| c.to_owned()));
            names.iter().cloned().chain(bare).collect()
        };
        let plan = match (&found.columns, &self.cx.catalog, schema) {
            (Some(columns), ..) => {
                let names: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{qualified}.{c}"))
                    .chain(columns.iter().map(|c| c.to_string()))
                    .collect();
                masker.field_plan(&names.iter().map(String::as_str).collect::<Vec<_>>())
            }
            (None, Some(catalog), Some(schema)) => {
                match catalog.table_columns(schema, table).await {
                    Some(names) => {
                        let names = with_bare(&names);
                        masker.field_plan(&names.iter().map(String::as_str).collect::<Vec<_>>())
                    }
                    None => masker.table_plan(&qualified),
                }
            }
            (None, ..) => masker.table_plan(&qualified),
        };
        let mut counts = MaskCounts::new();
        let detail = &fields[d].1;
        let mut out = String::with_capacity(detail.len());
        let mut last = 0;
        let mut changed = false;
        for span in &found.spans {
            out.push_str(&detail[last..span.start]);
            match masker.mask_whole(&plan, &detail[span.clone()], &mut counts) {
                Some(masked) => {
                    out.push_str(&masked);
                    changed = true;
                }
                None => out.push_str(&detail[span.clone()]),
            }
            last = span.end;
        }
        out.push_str(&detail[last..]);
        self.record_counts(counts);
        if changed {
            fields[d].1 = out;
        }
        changed
    }

    /// An error may show a value the statement read: a data exception
    /// (SQLSTATE class 22) the value that failed (`invalid input syntax
    /// for type integer: "E7-band-3"` from `SELECT pay_grade::int`, `date
    /// field value out of range: 2000-01-85000`), an undefined object
    /// (classes 42 and 3F) a value taken for a name (`relation "…" does not
    /// exist` from `pay_grade::regclass`, `unrecognized configuration
    /// parameter "…"` from `current_setting(ssn)`, `operator does not
    /// exist: …` from `::regoper`, a `CONTEXT: invalid type name "…"`),
    /// and a resource limit (class 54) a number (`chr(salary)`). While
    /// column rules are on, such an error raised while the statement may
    /// have read rows has the quoted part of its message masked (or, with
    /// no quotes, what follows its last `: `), and its detail and context
    /// masked whole. An error that comes before the statement read
    /// anything is the statement's own and is left readable (a misspelt
    /// name: `relation "custmers" does not exist`): one answering a Parse,
    /// Bind or Describe, or a simple query's `SELECT` before its
    /// RowDescription (PostgreSQL describes a query's rows before it runs
    /// it); so is one about a `COPY FROM`'s input, which is the client's.
    /// Whether something changed.
    fn mask_quoted_values(&self, fields: &mut [(u8, String)]) -> bool {
        let masker = self.cx.session.masker();
        if !masker.has_field_rules() {
            return false;
        }
        let code = field_of(fields, b'C').unwrap_or_default();
        // (Not trusted: the position field. A type name read from a value
        // at run time, `pay_grade::regtype`, is parsed with one too.)
        if !["22", "42", "3F", "54"].iter().any(|c| code.starts_with(c)) || self.read_nothing() {
            return false;
        }
        // A data error or a limit can also show a value as a number
        // (`index 85000 out of valid range, 0..0` from `get_byte`, the
        // bytes of `invalid byte sequence …: 0xf0 0x31`).
        let numbers = code.starts_with("22") || code.starts_with("54");
        let plan = masker.whole_row_plan("");
        let mut counts = MaskCounts::new();
        let mut changed = false;
        for (code, value) in fields.iter_mut() {
            let masked = match *code {
                b'M' => {
                    let mut spans = Vec::new();
                    match (value.find('"'), value.rfind('"')) {
                        (Some(start), Some(end)) if end > start + 1 => spans.push(start + 1..end),
                        (Some(_), Some(_)) => {}
                        _ => {
                            if let Some(at) = value.rfind(": ")
                                && at + 2 < value.len()
                            {
                                spans.push(at + 2..value.len());
                            }
                        }
                    }
                    if numbers {
                        spans.extend(rows::digit_runs(value));
                    }
                    let spans = rows::merge_spans(spans);
                    if spans.is_empty() {
                        continue;
                    }
                    let mut out = String::with_capacity(value.len());
                    let mut last = 0;
                    for span in spans {
                        out.push_str(&value[last..span.start]);
                        out.push_str(&masker.mask_field(&plan, &value[span.clone()], &mut counts));
                        last = span.end;
                    }
                    out.push_str(&value[last..]);
                    out
                }
                b'D' | b'W' if !value.is_empty() => {
                    masker.mask_field(&plan, value, &mut counts).into_owned()
                }
                _ => continue,
            };
            *value = masked;
            changed = true;
        }
        self.record_counts(counts);
        changed
    }

    /// Whether the error the server sends now comes before the statement
    /// it answers read any row (see [`Self::mask_quoted_values`]).
    fn read_nothing(&self) -> bool {
        match self.queue.front() {
            Some(
                Pending::Parse(_)
                | Pending::Bind(_)
                | Pending::DescribeStatement(_)
                | Pending::DescribePortal { .. },
            ) => true,
            Some(Pending::Query(q)) => {
                // A query the server may have split otherwise than the
                // classifier: its statement cannot be told.
                if q.statements
                    .iter()
                    .any(|c| c.operation.kind == SqlKind::Opaque)
                {
                    return false;
                }
                match q.statements.get(q.at) {
                    Some(c) if c.operation.kind == SqlKind::CopyIn => true,
                    // (A FETCH reads its rows before it describes them.)
                    Some(c) if c.operation.kind == SqlKind::Select && c.fetch.is_none() => {
                        q.current.columns.is_none()
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// Masks every field of an error or notice; whether one changed.
    fn mask_fields(&self, fields: &mut [(u8, String)]) -> bool {
        let mut counts = MaskCounts::new();
        let mut changed = false;
        for (_, value) in fields.iter_mut() {
            if let Some(m) = rows::mask_plain(self.cx.session.masker(), value, &mut counts) {
                *value = m;
                changed = true;
            }
        }
        self.record_counts(counts);
        changed
    }
}

/// The value of field `code` of an error or notice.
fn field_of(fields: &[(u8, String)], code: u8) -> Option<&str> {
    fields
        .iter()
        .find(|(k, _)| *k == code)
        .map(|(_, v)| v.as_str())
}

/// `SQLSTATE: message` of a server error (already masked), for the record.
pub(crate) fn error_text(e: &ErrorResponse) -> String {
    let field = |c: u8| {
        e.fields
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    format!("{}: {}", field(b'C'), field(b'M'))
}

/// The row count of a CommandComplete tag ("SELECT 3", "INSERT 0 1", "COPY 5").
fn row_count(body: &[u8]) -> Option<u64> {
    let tag = frame::take_cstr(body)?.0;
    let tag = std::str::from_utf8(tag).ok()?;
    let mut words = tag.split(' ');
    let command = words.next()?;
    if !matches!(
        command,
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE"
    ) {
        return None;
    }
    tag.rsplit(' ').next()?.parse().ok()
}

/// Writes all of `bytes`; used for the few messages sent outside the relay.
pub(crate) async fn send<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<()> {
    w.write_all(bytes)
        .await
        .map_err(|e| Error::Client(format!("writing to the client failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_counts_from_command_tags() {
        assert_eq!(row_count(b"SELECT 3\0"), Some(3));
        assert_eq!(row_count(b"INSERT 0 12\0"), Some(12));
        assert_eq!(row_count(b"COPY 5\0"), Some(5));
        assert_eq!(row_count(b"CREATE TABLE\0"), None);
        assert_eq!(row_count(b"SET\0"), None);
    }

    fn portal(seq: u64) -> Portal {
        Portal {
            statement: Bytes::new(),
            key: None,
            params: "$1 = 'a large parameter'".repeat(100),
            described: false,
            seq,
            epoch: 0,
            text: None,
            lineage: None,
            changes_names: false,
            changes_columns: false,
            ends_settings: false,
            copies_in: false,
            review: None,
            executes: None,
            exact_parameters: Bytes::new(),
            columns: None,
        }
    }

    #[test]
    fn portals_of_ended_transactions_do_not_pile_up() {
        // Each portal bound in its own transaction, ended before the next
        // Bind (what a client binding named portals and never closing them
        // does in autocommit).
        let mut ended = Portals::new();
        for seq in 1..=1000 {
            ended.bind(Bytes::from(format!("p{seq}")), portal(seq), seq - 1);
            assert!(ended.map.len() <= PORTALS_PRUNE_MIN, "{}", ended.map.len());
        }
        assert!(ended.map.contains_key("p1000".as_bytes()));
        // In one open transaction every portal lives on the server, and in
        // the gateway.
        let mut open = Portals::new();
        for seq in 1..=1000 {
            open.bind(Bytes::from(format!("p{seq}")), portal(seq), 0);
        }
        assert_eq!(open.map.len(), 1000);
    }
}
