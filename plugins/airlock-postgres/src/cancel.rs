//! Cancel keys. Each session gives its client the server's process id and a
//! secret the gateway draws itself; a `CancelRequest` arriving on a new
//! connection is matched to the session and forwarded to the server with
//! the server's own key (which the client never sees). A statement still
//! waiting for approval is cancelled in the gateway, and then the request is
//! not forwarded: the server runs nothing of that statement, and a forwarded
//! request, arriving late, would cancel the client's *next* statement.
//! Either way the request is first recorded in the session it names.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Notify;

use airlock_core::{Gateway, SessionId};

use crate::upstream::Target;

/// What a cancel key leads to.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) target: Arc<Target>,
    /// The server session's own key.
    pub(crate) pid: i32,
    pub(crate) secret: Bytes,
    /// The server's address the session is connected to.
    pub(crate) addr: std::net::SocketAddr,
    /// Reaches a statement that waits for approval in the gateway.
    pub(crate) local: Arc<Local>,
    /// Where a request for this session is recorded.
    pub(crate) gateway: Gateway,
    pub(crate) session: SessionId,
}

/// Where a cancel request reaches a statement that waits in the gateway (for
/// approval) rather than on the server.
#[derive(Debug, Default)]
pub(crate) struct Local {
    /// A statement of the session waits in the gateway.
    waiting: AtomicBool,
    /// A cancel request arrived while it waits.
    requested: AtomicBool,
    notify: Notify,
}

impl Local {
    /// Marks the session as waiting in the gateway until the guard drops.
    /// Taken before the approval request becomes visible, so that no cancel
    /// request for it can find the session not waiting.
    pub(crate) fn begin(&self) -> Waiting<'_> {
        self.requested.store(false, Ordering::SeqCst);
        self.waiting.store(true, Ordering::SeqCst);
        Waiting(self)
    }

    /// Stops the statement waiting in the gateway. False when none waits:
    /// the request is then the server's.
    pub(crate) fn cancel(&self) -> bool {
        let waiting = self.waiting.load(Ordering::SeqCst);
        if waiting {
            self.requested.store(true, Ordering::SeqCst);
            self.notify.notify_waiters();
        }
        waiting
    }

    /// Resolves once a cancel request has arrived since [`Local::begin`].
    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a request that comes
            // after the read wakes this waiter.
            notified.as_mut().enable();
            if self.requested.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// A statement waiting in the gateway; the wait ends when this drops.
pub(crate) struct Waiting<'a>(&'a Local);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.store(false, Ordering::SeqCst);
    }
}

/// The cancel keys of one listener's live sessions.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    keys: Mutex<HashMap<(i32, i32), Entry>>,
}

impl Registry {
    /// Registers a session; the key lives until the guard is dropped.
    pub(crate) fn register(self: &Arc<Self>, entry: Entry) -> Guard {
        let rng = SystemRandom::new();
        let pid = entry.pid;
        let mut keys = match self.keys.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut secret;
        loop {
            let mut b = [0u8; 4];
            // If the system RNG fails, a zero secret still works, it is
            // just guessable; the lookup below keeps keys unique either way.
            let _ = rng.fill(&mut b);
            secret = i32::from_be_bytes(b);
            if !keys.contains_key(&(pid, secret)) {
                break;
            }
        }
        keys.insert((pid, secret), entry);
        Guard {
            registry: self.clone(),
            key: (pid, secret),
        }
    }

    /// The session with this key, if any.
    pub(crate) fn find(&self, pid: i32, secret: i32) -> Option<Entry> {
        let keys = match self.keys.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        keys.get(&(pid, secret)).cloned()
    }
}

/// Keeps a cancel key registered.
#[derive(Debug)]
pub(crate) struct Guard {
    registry: Arc<Registry>,
    key: (i32, i32),
}

impl Guard {
    /// The key to give the client: (process id, secret).
    pub(crate) fn key(&self) -> (i32, i32) {
        self.key
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut keys = match self.registry.keys.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        keys.remove(&self.key);
    }
}
