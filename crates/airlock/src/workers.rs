//! Connection workers: one thread per worker, each running its own
//! single-threaded async runtime, each accepting on every listener.
//!
//! Why not one work-stealing runtime: a proxied statement is a short chain of
//! socket reads and writes. On a work-stealing runtime every wake-up of a
//! connection's task also wakes an idle sibling worker to look for work (a
//! futex and a context switch per hop), which on a small machine cost more
//! than the gateway's own work per statement. Here a connection lives on the
//! worker that accepted it; workers share listening sockets, and whichever is
//! idle first accepts the next connection, which spreads the load. Everything
//! shared (recorder, store, policy) is thread-safe and runtime-agnostic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use airlock_core::connector::{BoundListener, Serve};
use airlock_core::{ClientInfo, Gateway};
use anyhow::Context;
use tokio::sync::watch;

/// The live client connections, so shutdown can end them.
#[derive(Clone, Debug)]
pub(crate) struct Connections {
    stop: watch::Sender<bool>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            stop: watch::channel(false).0,
        }
    }
}

impl Connections {
    /// Runs `serve` until it ends or shutdown begins.
    async fn run<F: std::future::Future<Output = ()>>(&self, serve: F) {
        let mut stop = self.stop.subscribe();
        tokio::select! {
            _ = serve => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    /// Ends every connection and waits (at most 5 s) until they are gone.
    pub(crate) async fn close(&self) {
        let _ = self.stop.send(true);
        for _ in 0..500 {
            if self.stop.receiver_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(
            connections = self.stop.receiver_count(),
            "connections still open at shutdown"
        );
    }
}

/// A listener as each worker needs it.
#[derive(Clone)]
struct Shared {
    name: String,
    connector: Arc<dyn Serve>,
    socket: Arc<std::net::TcpListener>,
}

/// The running workers.
pub(crate) struct Workers {
    threads: Vec<JoinHandle<()>>,
    /// Set to stop accepting; dropping it (or setting it) ends the workers
    /// once their connections are gone.
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Workers {
    /// Binds every listener and starts `count` workers (0: one per CPU).
    /// Returns the workers and each listener's actual address.
    pub(crate) fn start(
        listeners: Vec<BoundListener>,
        count: usize,
        gateway: &Gateway,
        connections: &Connections,
    ) -> anyhow::Result<(Workers, Vec<(String, SocketAddr)>)> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut shared = Vec::new();
        let mut addresses = Vec::new();
        for listener in listeners {
            let socket = std::net::TcpListener::bind(listener.listen).with_context(|| {
                format!(
                    "listener {:?}: cannot listen on {}",
                    listener.name, listener.listen
                )
            })?;
            socket.set_nonblocking(true)?;
            let addr = socket.local_addr()?;
            tracing::info!(listener = %listener.name, protocol = listener.protocol, %addr, workers = count, "listening");
            addresses.push((listener.name.clone(), addr));
            shared.push(Shared {
                name: listener.name,
                connector: listener.connector,
                socket: Arc::new(socket),
            });
        }
        let (stop, _) = watch::channel(false);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a worker runtime")?;
            let listeners = shared
                .iter()
                .map(|s| Ok((s.clone(), s.socket.try_clone()?)))
                .collect::<std::io::Result<Vec<_>>>()
                .context("cannot share a listening socket with a worker")?;
            let gateway = gateway.clone();
            let connections = connections.clone();
            let mut stopped = stop.subscribe();
            let thread = std::thread::Builder::new()
                .name(format!("airlock-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        // The accept loops run inside block_on, not as
                        // tasks: the runtime's task count is then its
                        // connections (the recorder asks it).
                        let mut loops = Vec::new();
                        for (listener, socket) in listeners {
                            match tokio::net::TcpListener::from_std(socket) {
                                Ok(socket) => loops.push(accept_loop(
                                    socket,
                                    listener,
                                    gateway.clone(),
                                    connections.clone(),
                                )),
                                Err(e) => {
                                    tracing::error!(error = %e, "a worker cannot use a listening socket");
                                }
                            }
                        }
                        // Until shutdown (or the gateway is dropped); the
                        // loops never end on their own.
                        tokio::select! {
                            _ = futures_util::future::join_all(loops) => {}
                            _ = stopped.wait_for(|s| *s) => {}
                        }
                        // Connections end on their own shutdown signal and
                        // need this runtime to record their end: stay until
                        // the gateway lets go of the workers.
                        while stopped.changed().await.is_ok() {}
                    });
                })
                .context("cannot start a worker thread")?;
            threads.push(thread);
        }
        Ok((Workers { threads, stop }, addresses))
    }

    /// Stops accepting new connections.
    pub(crate) fn stop_accepting(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the workers to finish (after their connections ended).
    pub(crate) async fn join(self) {
        let Workers { threads, stop } = self;
        drop(stop);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

async fn accept_loop(
    socket: tokio::net::TcpListener,
    listener: Shared,
    gateway: Gateway,
    connections: Connections,
) {
    loop {
        let (stream, addr) = match socket.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connector = listener.connector.clone();
        let info = ClientInfo {
            addr,
            listener: listener.name.clone(),
            login: None,
        };
        let gateway = gateway.clone();
        let name = listener.name.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            connections
                .run(async move {
                    if let Err(e) = connector.serve(Box::new(stream), info, gateway).await {
                        tracing::info!(listener = %name, client = %addr, side = ?e.side(), error = %e, "connection ended with an error");
                    }
                })
                .await;
        });
    }
}
