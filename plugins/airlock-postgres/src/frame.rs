//! Protocol framing: reading whole messages off a stream (type byte + length,
//! or length only during startup) with a size limit, checking the structure
//! of the messages the gateway decodes, and building the messages it sends
//! itself with pgwire's codec.
//!
//! Messages the gateway does not change are forwarded as the original bytes
//! ([`Frame::bytes`]): pgwire re-encodes strings lossily and does not know
//! every message type, so it only decodes what the gateway inspects.

use airlock_core::{Error, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgwire::messages::response::{ErrorResponse, NoticeResponse};
use pgwire::messages::{DecodeContext, Message};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Startup-phase request codes (the "protocol version" of length-only packets).
pub(crate) const SSL_REQUEST: i32 = 80877103;
pub(crate) const GSSENC_REQUEST: i32 = 80877104;
pub(crate) const CANCEL_REQUEST: i32 = 80877102;

/// PostgreSQL's own limit for length-only startup packets.
pub(crate) const MAX_STARTUP_PACKET: usize = 10_000;

/// Which peer a reader faces, for error messages and error sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    Client,
    Upstream,
}

impl Peer {
    fn error(self, message: String) -> Error {
        match self {
            Peer::Client => Error::Client(message),
            Peer::Upstream => Error::Upstream(message),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Peer::Client => "client",
            Peer::Upstream => "server",
        }
    }
}

/// One complete message: its type byte and the whole frame as received.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub(crate) tag: u8,
    /// Type byte, length and body, exactly as received.
    pub(crate) bytes: Bytes,
}

impl Frame {
    /// The message body (after the type byte and the length).
    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// A frame made from an encoded message.
    #[cfg(test)]
    pub(crate) fn from_encoded(bytes: Bytes) -> Frame {
        Frame {
            tag: bytes.first().copied().unwrap_or(0),
            bytes,
        }
    }

    /// Decodes the message with pgwire after checking its structure, so that
    /// a malformed message is an error rather than a panic in the codec.
    pub(crate) fn decode<T: Message>(&self, peer: Peer) -> Result<T> {
        check_structure(self.tag, self.body(), peer)?;
        let mut buf = BytesMut::from(self.body());
        T::decode_body(&mut buf, self.bytes.len() - 1, &DecodeContext::default()).map_err(|e| {
            peer.error(format!(
                "malformed {} message from the {}: {e}",
                char::from(self.tag),
                peer.name()
            ))
        })
    }
}

/// Reads whole messages from one side. Reading is cancel-safe: bytes already
/// read stay in the buffer when a `select!` drops the future.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max: usize,
    peer: Peer,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max: usize, peer: Peer) -> Self {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(16 * 1024),
            max,
            peer,
        }
    }

    /// Changes the size limit for the messages still to come.
    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Whether a whole message is already buffered (nothing to wait for).
    pub(crate) fn has_frame(&self) -> bool {
        matches!(self.complete_len(), Ok(Some(_)))
    }

    fn complete_len(&self) -> Result<Option<usize>> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len < 4 {
            return Err(self.peer.error(format!(
                "malformed message from the {}: type {:?} with length {len}",
                self.peer.name(),
                char::from(self.buf[0])
            )));
        }
        let len = len as usize;
        if len > self.max {
            return Err(TooLarge {
                tag: self.buf[0],
                len,
                max: self.max,
            }
            .into_error(self.peer));
        }
        Ok((self.buf.len() > len).then_some(len + 1))
    }

    /// The next message if it is already buffered, without waiting.
    pub(crate) fn try_next(&mut self) -> Result<Option<Frame>> {
        Ok(self.complete_len()?.map(|total| {
            let bytes = self.buf.split_to(total).freeze();
            Frame {
                tag: bytes[0],
                bytes,
            }
        }))
    }

    /// The next message, or `None` at a clean end of stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.try_next()? {
                return Ok(Some(frame));
            }
            let n = self.io.read_buf(&mut self.buf).await.map_err(|e| {
                self.peer
                    .error(format!("reading from the {} failed: {e}", self.peer.name()))
            })?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(self.peer.error(format!(
                    "the {} closed the connection in the middle of a message",
                    self.peer.name()
                )));
            }
        }
    }

    /// Waits until the peer sends more bytes or closes; returns false on close.
    /// Used while a statement waits for approval, to notice a client that left.
    pub(crate) async fn fill(&mut self) -> Result<bool> {
        if self.buf.len() > self.max {
            // Enough buffered; stop reading until the buffer is consumed.
            return std::future::pending().await;
        }
        let n = self.io.read_buf(&mut self.buf).await.map_err(|e| {
            self.peer
                .error(format!("reading from the {} failed: {e}", self.peer.name()))
        })?;
        Ok(n > 0)
    }
}

/// A message over the size limit.
#[derive(Debug)]
pub(crate) struct TooLarge {
    tag: u8,
    len: usize,
    max: usize,
}

/// What every error for a message over the size limit says.
const TOO_LARGE: &str = "is larger than the limit of";

/// Whether a client's message was refused for its size (SQLSTATE 54000
/// rather than a protocol violation).
pub(crate) fn is_too_large(e: &Error) -> bool {
    matches!(e, Error::Client(m) if m.contains(TOO_LARGE))
}

impl TooLarge {
    fn into_error(self, peer: Peer) -> Error {
        peer.error(format!(
            "a {:?} message of {} bytes {TOO_LARGE} {} bytes{}",
            char::from(self.tag),
            self.len,
            self.max,
            if peer == Peer::Client {
                " (the listener's max_message_bytes)"
            } else {
                ""
            }
        ))
    }
}

/// Reads one length-prefixed startup-phase packet (no type byte) and returns
/// its body (after the length). Reads exactly the packet's bytes, so nothing
/// sent after it (a TLS ClientHello) is consumed.
pub(crate) async fn read_startup_packet<R: AsyncRead + Unpin>(
    io: &mut R,
    first: Option<u8>,
) -> Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    let start = match first {
        Some(b) => {
            len[0] = b;
            1
        }
        None => 0,
    };
    if let Err(e) = io.read_exact(&mut len[start..]).await {
        if e.kind() == std::io::ErrorKind::UnexpectedEof && start == 0 {
            return Ok(None);
        }
        return Err(Error::Client(format!(
            "reading the startup packet failed: {e}"
        )));
    }
    let len = i32::from_be_bytes(len);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(Error::Client(format!(
            "invalid startup packet length {len} (expected 8 to {MAX_STARTUP_PACKET} bytes); is this a PostgreSQL client?"
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    io.read_exact(&mut body)
        .await
        .map_err(|e| Error::Client(format!("reading the startup packet failed: {e}")))?;
    Ok(Some(Bytes::from(body)))
}

/// The text of a simple `Query` message, read in place (pgwire's decoder
/// would copy it into a new `String` first); `None` when it is not UTF-8.
pub(crate) fn query_text(frame: &Frame) -> Result<Option<&str>> {
    check_structure(b'Q', frame.body(), Peer::Client)?;
    // The structure check leaves one terminating NUL, at the end.
    let text = frame.body().split_last().map_or(&[][..], |(_, text)| text);
    Ok(std::str::from_utf8(text).ok())
}

/// Whether the SQL text of a Parse body (after the statement name) is
/// UTF-8. A body without the two strings is left to the decoder to refuse.
pub(crate) fn parse_text_is_utf8(body: &[u8]) -> bool {
    take_cstr(body)
        .and_then(|(_, rest)| take_cstr(rest))
        .is_none_or(|(text, _)| std::str::from_utf8(text).is_ok())
}

/// Bytes as text: borrowed when they are UTF-8 (checked on the fast path
/// `from_utf8` has for ASCII, which `from_utf8_lossy` lacks), else their
/// lossy reading.
pub(crate) fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Checks that a message body has the structure its type requires, for the
/// message types the gateway decodes. Other types are not decoded and pass.
pub(crate) fn check_structure(tag: u8, body: &[u8], peer: Peer) -> Result<()> {
    let mut c = Cursor { b: body, ok: true };
    match (peer, tag) {
        // Query, PasswordMessage, CommandComplete.
        (Peer::Client, b'Q' | b'p') | (Peer::Upstream, b'C') => c.cstr(),
        (Peer::Client, b'P') => {
            c.cstr();
            c.cstr();
            let n = c.u16();
            c.skip(n * 4);
        }
        (Peer::Client, b'B') => {
            c.cstr();
            c.cstr();
            let n = c.u16();
            c.skip(n * 2);
            let n = c.u16();
            for _ in 0..n {
                let len = c.i32();
                if len > 0 {
                    c.skip(len as usize);
                } else if len < -1 {
                    c.ok = false;
                }
            }
            let n = c.u16();
            c.skip(n * 2);
        }
        (Peer::Client, b'D' | b'C') => {
            c.skip(1);
            c.cstr();
        }
        (Peer::Client, b'E') => {
            c.cstr();
            c.skip(4);
        }
        (Peer::Upstream, b'E' | b'N') => loop {
            if c.u8() == 0 || !c.ok {
                break;
            }
            c.cstr();
        },
        (Peer::Upstream, b'T') => {
            let n = c.u16();
            for _ in 0..n {
                c.cstr();
                c.skip(18);
            }
        }
        (Peer::Upstream, b'A') => {
            c.skip(4);
            c.cstr();
            c.cstr();
        }
        (Peer::Upstream, b'S') => {
            c.cstr();
            c.cstr();
        }
        (Peer::Upstream, b'K') => c.skip(8),
        (Peer::Upstream, b'Z') => c.skip(1),
        (Peer::Upstream, b'R') => {
            c.skip(4);
            return c.finish(tag, peer, true);
        }
        _ => return Ok(()),
    }
    c.finish(tag, peer, false)
}

/// Whether every column name in a RowDescription body is UTF-8. While the
/// session's `client_encoding` is UTF8 they all are (the server converts
/// names to it); one that is not means the encoding changed.
pub(crate) fn column_names_are_utf8(body: &[u8]) -> bool {
    let mut c = Cursor { b: body, ok: true };
    let n = c.u16();
    for _ in 0..n {
        let Some(end) = c.b.iter().position(|&b| b == 0) else {
            return false;
        };
        if std::str::from_utf8(&c.b[..end]).is_err() {
            return false;
        }
        c.skip(end + 1 + 18);
    }
    c.ok
}

struct Cursor<'a> {
    b: &'a [u8],
    ok: bool,
}

impl Cursor<'_> {
    fn skip(&mut self, n: usize) {
        if self.b.len() < n {
            self.ok = false;
            self.b = &[];
        } else {
            self.b = &self.b[n..];
        }
    }
    fn u8(&mut self) -> u8 {
        match self.b.first() {
            Some(&v) => {
                self.b = &self.b[1..];
                v
            }
            None => {
                self.ok = false;
                0
            }
        }
    }
    fn u16(&mut self) -> usize {
        if self.b.len() < 2 {
            self.skip(2);
            return 0;
        }
        let v = u16::from_be_bytes([self.b[0], self.b[1]]);
        self.b = &self.b[2..];
        v as usize
    }
    fn i32(&mut self) -> i32 {
        if self.b.len() < 4 {
            self.skip(4);
            return 0;
        }
        let v = i32::from_be_bytes([self.b[0], self.b[1], self.b[2], self.b[3]]);
        self.b = &self.b[4..];
        v
    }
    fn cstr(&mut self) {
        match self.b.iter().position(|&c| c == 0) {
            Some(i) => self.b = &self.b[i + 1..],
            None => {
                self.ok = false;
                self.b = &[];
            }
        }
    }
    fn finish(self, tag: u8, peer: Peer, trailing_ok: bool) -> Result<()> {
        if self.ok && (trailing_ok || self.b.is_empty()) {
            Ok(())
        } else {
            Err(peer.error(format!(
                "malformed {:?} message from the {}",
                char::from(tag),
                peer.name()
            )))
        }
    }
}

/// Encodes a pgwire message into a frame.
pub(crate) fn encode<T: Message>(message: &T) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.message_length() + 1);
    // Encoding only fails for messages over pgwire's per-type limit; the
    // gateway's own messages are small, and an empty frame is never sent.
    if message.encode(&mut buf).is_err() {
        return Bytes::new();
    }
    buf.freeze()
}

/// SQLSTATE codes the gateway uses itself.
pub(crate) mod sqlstate {
    pub(crate) const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub(crate) const INVALID_PARAMETER_VALUE: &str = "22023";
    pub(crate) const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    pub(crate) const INVALID_PASSWORD: &str = "28P01";
    pub(crate) const INVALID_AUTHORIZATION: &str = "28000";
    pub(crate) const INVALID_CATALOG_NAME: &str = "3D000";
    pub(crate) const CONNECTION_FAILURE: &str = "08001";
    pub(crate) const PROTOCOL_VIOLATION: &str = "08P01";
    pub(crate) const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub(crate) const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub(crate) const NAME_TOO_LONG: &str = "42622";
    pub(crate) const INVALID_NAME: &str = "42602";
    pub(crate) const TOO_MANY_CONNECTIONS: &str = "53300";
    pub(crate) const SYSTEM_ERROR: &str = "58000";
    pub(crate) const QUERY_CANCELED: &str = "57014";
    pub(crate) const INTERNAL_ERROR: &str = "XX000";
}

/// Severity of a gateway-made error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The connection ends.
    Fatal,
}

/// An `ErrorResponse` made by the gateway.
pub(crate) fn error_response(
    severity: Severity,
    code: &str,
    message: &str,
    hint: Option<&str>,
) -> Bytes {
    let severity = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let mut fields = vec![
        (b'S', severity.to_string()),
        (b'V', severity.to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    if let Some(hint) = hint {
        fields.push((b'H', hint.to_string()));
    }
    encode(&ErrorResponse::new(fields))
}

/// A `NoticeResponse` made by the gateway.
pub(crate) fn notice_response(message: &str, hint: Option<&str>) -> Bytes {
    let mut fields = vec![
        (b'S', "NOTICE".to_string()),
        (b'V', "NOTICE".to_string()),
        (b'C', "00000".to_string()),
        (b'M', message.to_string()),
    ];
    if let Some(hint) = hint {
        fields.push((b'H', hint.to_string()));
    }
    encode(&NoticeResponse::new(fields))
}

/// A `ReadyForQuery` with a raw status byte (`I`, `T` or `E`).
pub(crate) fn ready_for_query(status: u8) -> Bytes {
    let mut buf = BytesMut::with_capacity(6);
    buf.put_u8(b'Z');
    buf.put_i32(5);
    buf.put_u8(status);
    buf.freeze()
}

/// A message with a type byte and a body, for the few messages the gateway
/// sends whose pgwire type is not worth decoding into (Sync, Flush,
/// Describe, Terminate).
pub(crate) fn raw(tag: u8, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(body.len() + 5);
    buf.put_u8(tag);
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(body);
    buf.freeze()
}

/// Reads a C string from the start of `b`; returns it and the rest.
pub(crate) fn take_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == 0)?;
    Some((&b[..i], &b[i + 1..]))
}

/// Reads the first field of a length-prefixed startup body as the request code.
pub(crate) fn startup_code(body: &[u8]) -> i32 {
    let mut b = body;
    if b.len() < 4 {
        return 0;
    }
    b.get_i32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::messages::extendedquery::Bind;

    fn frame(tag: u8, body: &[u8]) -> Frame {
        Frame::from_encoded(raw(tag, body))
    }

    #[test]
    fn column_names_are_checked_for_utf8() {
        let description = |names: &[&[u8]]| {
            let mut body = (names.len() as u16).to_be_bytes().to_vec();
            for name in names {
                body.extend_from_slice(name);
                body.push(0);
                body.extend_from_slice(&[0; 18]);
            }
            body
        };
        assert!(column_names_are_utf8(&description(&[
            b"id",
            "имя".as_bytes()
        ])));
        // "имя" in WIN1251.
        assert!(!column_names_are_utf8(&description(&[
            b"id",
            b"\xe8\xec\xff"
        ])));
        // Cut short.
        let mut short = description(&[b"id"]);
        short.truncate(5);
        assert!(!column_names_are_utf8(&short));
    }

    #[tokio::test]
    async fn reader_splits_frames_and_enforces_the_limit() {
        let mut input = Vec::new();
        input.extend_from_slice(&raw(b'Q', b"select 1\0"));
        input.extend_from_slice(&raw(b'S', b""));
        let mut r = FrameReader::new(&input[..], 100, Peer::Client);
        let f = r.next().await.unwrap().unwrap();
        assert_eq!((f.tag, f.body()), (b'Q', &b"select 1\0"[..]));
        assert!(r.has_frame());
        assert_eq!(r.next().await.unwrap().unwrap().tag, b'S');
        assert!(r.next().await.unwrap().is_none());

        let big = raw(b'Q', &[b'x'; 200]);
        let mut r = FrameReader::new(&big[..], 100, Peer::Client);
        let err = r.next().await.unwrap_err().to_string();
        assert!(err.contains("larger than the limit of 100 bytes"), "{err}");

        let truncated = &raw(b'Q', b"select 1\0")[..7];
        let mut r = FrameReader::new(truncated, 100, Peer::Client);
        assert!(r.next().await.is_err());

        let negative = [b'Q', 0xff, 0xff, 0xff, 0xff];
        let mut r = FrameReader::new(&negative[..], 100, Peer::Client);
        assert!(r.next().await.is_err());
    }

    #[test]
    fn malformed_bind_is_an_error_not_a_panic() {
        // Claims one parameter of 100 bytes but carries 3.
        let body = b"\0\0\0\0\0\x01\0\0\0\x64abc";
        let err = frame(b'B', body).decode::<Bind>(Peer::Client).unwrap_err();
        assert!(err.to_string().contains("malformed 'B' message"), "{err}");
        // A well-formed one decodes.
        let ok = b"p\0s\0\0\0\0\x01\0\0\0\x03abc\0\0";
        let bind = frame(b'B', ok).decode::<Bind>(Peer::Client).unwrap();
        assert_eq!(bind.portal_name.as_deref(), Some("p"));
        assert_eq!(bind.parameters[0].as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn structure_checks_cover_every_decoded_type() {
        for (peer, tag) in [
            (Peer::Client, b'Q'),
            (Peer::Client, b'P'),
            (Peer::Client, b'D'),
            (Peer::Client, b'E'),
            (Peer::Upstream, b'E'),
            (Peer::Upstream, b'T'),
            (Peer::Upstream, b'A'),
            (Peer::Upstream, b'S'),
            (Peer::Upstream, b'K'),
            (Peer::Upstream, b'Z'),
            (Peer::Upstream, b'C'),
        ] {
            assert!(
                check_structure(tag, b"", peer).is_err(),
                "empty {:?}",
                char::from(tag)
            );
        }
        assert!(check_structure(b'T', b"\0\x01id\0", Peer::Upstream).is_err());
        assert!(check_structure(b'E', b"Mboom\0\0", Peer::Upstream).is_ok());
    }

    #[tokio::test]
    async fn startup_packet_reading_is_exact() {
        let mut input = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f, 0x16, 0x03];
        let mut r = &input[..];
        let body = read_startup_packet(&mut r, None).await.unwrap().unwrap();
        assert_eq!(startup_code(&body), SSL_REQUEST);
        assert_eq!(r, &[0x16, 0x03], "the TLS bytes after it stay unread");
        input[3] = 3;
        assert!(read_startup_packet(&mut &input[..], None).await.is_err());
        assert!(
            read_startup_packet(&mut &[][..], None)
                .await
                .unwrap()
                .is_none()
        );
    }
}
