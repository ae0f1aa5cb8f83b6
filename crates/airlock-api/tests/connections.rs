//! The API's connection limits over real sockets: one address cannot hold
//! every connection, a client that stops reading its answer or never
//! finishes its headers is dropped, and in each case the same request from a
//! well-behaved client is served.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use airlock_api::Limits;
use axum::Router;
use axum::routing::get;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Bigger than the server's largest send buffer (4 MiB here) and a small
/// receive buffer together, so a client that stops reading stalls it.
const BIG: usize = 16 << 20;

const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn start(limits: Limits) -> SocketAddr {
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/big", get(|| async { vec![b'x'; BIG] }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(airlock_api::serve_with(listener, app, None, limits));
    addr
}

/// A connection from `from` (any 127/8 address is loopback's), with a small
/// receive buffer when `small`.
async fn connect(server: SocketAddr, from: IpAddr, small: bool) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if small {
        socket.set_recv_buffer_size(16 * 1024).unwrap();
    }
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(server).await.unwrap()
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
}

/// One whole exchange: `(status, body)`.
async fn fetch(server: SocketAddr, from: IpAddr, path: &str) -> (u16, Vec<u8>) {
    let mut conn = connect(server, from, false).await;
    conn.write_all(get_request(path).as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    split(&answer)
}

fn split(answer: &[u8]) -> (u16, Vec<u8>) {
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, answer[head_end + 4..].to_vec())
}

/// Retries `fetch` until it is answered `want` (the server notices a closed
/// connection asynchronously), or gives up after five seconds.
async fn eventually(server: SocketAddr, from: IpAddr, path: &str, want: u16) -> (u16, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = fetch(server, from, path).await;
        if got.0 == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_refused_for_its_address(answer: (u16, Vec<u8>)) {
    let (status, body) = answer;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("holds 2 connections") && message.contains("close idle ones"),
        "{message}"
    );
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let server = start(Limits {
        per_peer: 2,
        ..Limits::default()
    })
    .await;
    // Two connections that never finish their request hold 127.0.0.1's share.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = connect(server, LOCAL, false).await;
        conn.write_all(b"GET /hello HTTP/1.1\r\nHost: api\r\n")
            .await
            .unwrap();
        held.push(conn);
    }
    // Its third is told why, at once...
    assert_refused_for_its_address(eventually(server, LOCAL, "/hello", 429).await);
    // ...while another address is served as usual.
    assert_eq!(
        fetch(server, OTHER, "/hello").await,
        (200, b"hello".to_vec())
    );
    // Once one of the two is closed, 127.0.0.1 is served again.
    drop(held.pop());
    assert_eq!(
        eventually(server, LOCAL, "/hello", 200).await,
        (200, b"hello".to_vec())
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_a_slow_one_is_not() {
    let stall = Duration::from_secs(1);
    let server = start(Limits {
        per_peer: 2,
        stall,
        ..Limits::default()
    })
    .await;

    // A client that reads its big answer slowly but steadily, for longer
    // than the stall limit in all, gets all of it.
    let started = Instant::now();
    let mut slow = connect(server, OTHER, true).await;
    slow.write_all(get_request("/big").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = slow.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() % (2 << 20) < n {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert!(started.elapsed() > stall * 2, "{:?}", started.elapsed());
    let (status, body) = split(&answer);
    assert_eq!((status, body.len()), (200, BIG));

    // Two clients from 127.0.0.1 ask for it and read nothing: they hold
    // the address's share, so its next connection is refused...
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut conn = connect(server, LOCAL, true).await;
        conn.write_all(get_request("/big").as_bytes())
            .await
            .unwrap();
        stalled.push(conn);
    }
    assert_refused_for_its_address(fetch(server, LOCAL, "/hello").await);
    // ...until the stall limit drops them, and 127.0.0.1 is served again.
    assert_eq!(
        eventually(server, LOCAL, "/hello", 200).await,
        (200, b"hello".to_vec())
    );
    // What the dropped clients got is cut short. (The two were dropped by
    // their own stall timers: the first one gone frees the address for the
    // request above; give the other's timer its time too, or reading it
    // now would un-stall it and get the whole answer.)
    tokio::time::sleep(stall * 2).await;
    for mut conn in stalled {
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got).await;
        assert!(got.len() < BIG, "{}", got.len());
    }
}

#[tokio::test]
async fn headers_that_never_end_are_dropped_on_plain_http_too() {
    let server = start(Limits {
        per_peer: 1,
        headers: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let mut trickle = connect(server, LOCAL, false).await;
    trickle
        .write_all(b"GET /hello HTTP/1.1\r\nHost: api\r\n")
        .await
        .unwrap();
    // While it waits, it is 127.0.0.1's one connection.
    let (status, _) = fetch(server, LOCAL, "/hello").await;
    assert_eq!(status, 429);
    // The server closes it after the header deadline...
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), trickle.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection was not closed");
    // ...and the same request, sent whole, is answered.
    assert_eq!(
        eventually(server, LOCAL, "/hello", 200).await,
        (200, b"hello".to_vec())
    );
}
