//! The client's opening: TLS negotiation (`SSLRequest`, or direct TLS as
//! PostgreSQL 17 clients do with `sslnegotiation=direct`), GSSAPI encryption
//! refusal, cancel requests, and the startup message.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use airlock_core::{ClientStream, Error, Result};
use bytes::{Buf, BytesMut};
use pgwire::messages::startup::Startup;
use pgwire::messages::{DecodeContext, Message};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::frame::{self, Severity, sqlstate};

/// The first byte of a TLS handshake record: a client that starts TLS
/// without asking first (direct TLS).
const TLS_HANDSHAKE: u8 = 0x16;

/// How a client connection opened.
pub(crate) enum Opening {
    /// A client that wants a session.
    Startup(Hello),
    /// A cancel request for another connection's statement.
    Cancel { pid: i32, secret: i32 },
    /// The client went away, or was refused (it was told why).
    Done,
}

/// A client after its startup message.
pub(crate) struct Hello {
    pub(crate) stream: ClientStream,
    pub(crate) tls: bool,
    /// The startup parameters (user, database, application_name, ...).
    pub(crate) params: BTreeMap<String, String>,
    /// Protocol options (`_pq_.*`) and a newer minor version the client
    /// asked for; the gateway answers with NegotiateProtocolVersion.
    pub(crate) unsupported_options: Vec<String>,
    pub(crate) minor: u16,
}

/// Reads the client's opening packets until a startup message, a cancel
/// request or the end.
pub(crate) async fn open(
    mut stream: ClientStream,
    tls: Option<&Arc<ServerConfig>>,
) -> Result<Opening> {
    let mut encrypted = false;
    loop {
        let mut first = [0u8; 1];
        match stream.read(&mut first).await {
            Ok(0) => return Ok(Opening::Done),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::Client(format!(
                    "reading from the client failed: {e}"
                )));
            }
        }
        if first[0] == TLS_HANDSHAKE && !encrypted {
            let Some(config) = tls else {
                // Nothing sensible can be said to a client speaking TLS
                // without a certificate to answer with; libpq reports the
                // closed connection.
                return Err(Error::Client(
                    "the client started TLS directly but this listener has no tls_cert".into(),
                ));
            };
            let prefixed: ClientStream = Box::new(Prefixed {
                first: Some(first[0]),
                inner: stream,
            });
            let tls_stream = tokio_rustls::TlsAcceptor::from(config.clone())
                .accept(prefixed)
                .await
                .map_err(|e| Error::Client(format!("TLS handshake with the client failed: {e}")))?;
            // Direct TLS must negotiate PostgreSQL's ALPN name, so that a
            // TLS client for another protocol cannot be confused with one.
            if tls_stream.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_POSTGRESQL) {
                return Err(Error::Client(
                    "direct TLS without the ALPN protocol \"postgresql\" was refused".into(),
                ));
            }
            stream = Box::new(tls_stream);
            encrypted = true;
            continue;
        }
        let Some(body) = frame::read_startup_packet(&mut stream, Some(first[0])).await? else {
            return Ok(Opening::Done);
        };
        match frame::startup_code(&body) {
            frame::SSL_REQUEST => {
                if encrypted {
                    return refuse(
                        stream,
                        sqlstate::PROTOCOL_VIOLATION,
                        "SSLRequest on a connection that already uses TLS",
                    )
                    .await;
                }
                match tls {
                    Some(config) => {
                        write(&mut stream, b"S").await?;
                        let tls_stream = tokio_rustls::TlsAcceptor::from(config.clone())
                            .accept(stream)
                            .await
                            .map_err(|e| {
                                Error::Client(format!("TLS handshake with the client failed: {e}"))
                            })?;
                        stream = Box::new(tls_stream);
                        encrypted = true;
                    }
                    None => write(&mut stream, b"N").await?,
                }
            }
            frame::GSSENC_REQUEST => write(&mut stream, b"N").await?,
            frame::CANCEL_REQUEST => {
                let mut b = &body[4..];
                if b.len() < 8 {
                    return Ok(Opening::Done);
                }
                let pid = b.get_i32();
                let secret = b.get_i32();
                return Ok(Opening::Cancel { pid, secret });
            }
            code if (code >> 16) == 3 => {
                let mut buf = BytesMut::from(&body[..]);
                let startup =
                    Startup::decode_body(&mut buf, body.len() + 4, &DecodeContext::default())
                        .map_err(|e| Error::Client(format!("malformed startup message: {e}")))?;
                let mut params = BTreeMap::new();
                let mut unsupported_options = Vec::new();
                for (k, v) in startup.parameters {
                    if k.starts_with("_pq_.") {
                        unsupported_options.push(k);
                    } else {
                        params.insert(k, v);
                    }
                }
                if params.contains_key("replication") {
                    return refuse(
                        stream,
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "replication connections are not supported through Airlock",
                    )
                    .await;
                }
                if let Err(message) = check_settings(&params) {
                    return refuse(stream, sqlstate::INSUFFICIENT_PRIVILEGE, &message).await;
                }
                if let Err(message) = check_encoding(&params) {
                    return refuse(stream, sqlstate::INVALID_PARAMETER_VALUE, &message).await;
                }
                return Ok(Opening::Startup(Hello {
                    stream,
                    tls: encrypted,
                    params,
                    unsupported_options,
                    minor: startup.protocol_number_minor,
                }));
            }
            code => {
                let message = format!(
                    "unsupported frontend protocol {}.{}: Airlock speaks protocol 3.0",
                    code >> 16,
                    code & 0xffff
                );
                return refuse(stream, sqlstate::FEATURE_NOT_SUPPORTED, &message).await;
            }
        }
    }
}

/// Settings a client may make in its startup message (directly or in
/// `options` as `-c name=value`): how values look and what the client is
/// called, nothing that changes what the session may do. The server applies
/// startup settings at login, where no policy sees them and no record
/// holds them; `role`, `session_replication_role` (which turns triggers
/// and foreign keys off), `session_preload_libraries` and the like would
/// act unjudged. Anything else goes through `SET`, which policy judges.
const CLIENT_SETTINGS: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "intervalstyle",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "lock_timeout",
    "search_path",
    "standard_conforming_strings",
    "statement_timeout",
    "timezone",
];

/// Refuses startup parameters that would change the session unjudged.
fn check_settings(params: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    let refused = |name: &str| {
        format!(
            "startup setting \"{name}\" is not passed on by Airlock: a client may set only {} at startup; make other settings with SET, which policy judges",
            CLIENT_SETTINGS.join(", ")
        )
    };
    let check = |name: &str, value: &str| {
        let normal = normalized(name);
        if !CLIENT_SETTINGS.contains(&normal.as_str()) {
            return Err(refused(name));
        }
        // Only to tighten: `off` would lift a read-only default the
        // operator gave the target's role or database (a startup setting
        // overrides those), unjudged.
        if normal == "default_transaction_read_only" && !is_true(value) {
            return Err(format!(
                "startup setting \"{name}\" is passed on by Airlock only as on (off would lift a read-only default of the target's role or database); make it with SET, which policy judges"
            ));
        }
        Ok(())
    };
    for (name, value) in params {
        match name.as_str() {
            "user" | "database" => {}
            "options" => {
                for (setting, set_to) in option_settings(value)
                    .map_err(|e| format!("{e} in startup options {value:?}"))?
                {
                    check(&setting, &set_to)?;
                }
            }
            other => check(other, value)?,
        }
    }
    Ok(())
}

/// A boolean setting's value that PostgreSQL reads as true.
fn is_true(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    matches!(
        v.as_str(),
        "on" | "1" | "t" | "tr" | "tru" | "true" | "y" | "ye" | "yes"
    )
}

/// Whether `value` names PostgreSQL's UTF-8 encoding (as the server
/// accepts it: any case, with or without `-` and `_`, or `UNICODE`).
pub(crate) fn is_utf8(value: &str) -> bool {
    let name: String = value
        .chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    name == "utf8" || name == "unicode"
}

/// Refuses a `client_encoding` other than UTF-8. The gateway judges
/// statements and masks results as UTF-8 text, and the server keeps to the
/// session's encoding: in another one, a table or column named outside
/// ASCII would be a different name to each of them, and no rule written
/// for it would apply. `SQL_ASCII` (what libpq sends in the C locale,
/// meaning "no conversion") is taken as UTF-8; the gateway asks the server
/// for UTF-8 in every case ([`crate::upstream`]).
fn check_encoding(params: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    let refused = |value: &str| {
        format!(
            "client_encoding {value:?} is not supported through Airlock: it judges and masks statements and results as UTF-8; connect with client_encoding=UTF8 (PGCLIENTENCODING=UTF8)"
        )
    };
    for (name, value) in params {
        if normalized(name) == "client_encoding" {
            let plain: String = value.chars().filter(|c| !matches!(c, '-' | '_')).collect();
            if !is_utf8(value) && !plain.eq_ignore_ascii_case("sqlascii") {
                return Err(refused(value));
            }
        } else if name == "options"
            && option_settings(value)?
                .iter()
                .any(|(s, _)| normalized(s) == "client_encoding")
        {
            return Err(
                "client_encoding in startup options is not passed on by Airlock: give it as the client_encoding parameter (UTF8)".into(),
            );
        }
    }
    Ok(())
}

/// A setting name as the server matches it.
fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// The settings (name, value) in a startup `options` string, which the server reads
/// as command-line switches: words split at whitespace (a backslash keeps
/// the next character), each setting `-c name=value`, `-cname=value` or
/// `--name=value`. Any other switch is refused.
fn option_settings(options: &str) -> std::result::Result<Vec<(String, String)>, String> {
    // The server splits at C's `isspace` in its own locale: a vertical tab
    // (which Rust's ASCII whitespace leaves out) or, in some locales, a
    // non-ASCII byte ends a word there and not here, and a setting would
    // pass hidden inside the word of an allowed one.
    if let Some(c) = options
        .chars()
        .find(|c| !c.is_ascii() || (c.is_ascii_control() && *c != '\t'))
    {
        return Err(format!(
            "character {c:?} (only printable ASCII, spaces and tabs are passed on)"
        ));
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut names = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next().ok_or("\"-c\" without a setting")?
        } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            rest.to_string()
        } else {
            return Err(format!("switch {w:?} is not a setting"));
        };
        match setting.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                names.push((name.to_string(), value.to_string()));
            }
            _ => return Err(format!("setting {setting:?} has no value")),
        }
    }
    Ok(names)
}

async fn write(stream: &mut ClientStream, bytes: &[u8]) -> Result<()> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| Error::Client(format!("writing to the client failed: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| Error::Client(format!("writing to the client failed: {e}")))
}

/// Tells the client why it is refused (FATAL) and ends the opening.
async fn refuse(mut stream: ClientStream, code: &str, message: &str) -> Result<Opening> {
    write(
        &mut stream,
        &frame::error_response(Severity::Fatal, code, message, None),
    )
    .await?;
    Ok(Opening::Done)
}

/// A stream with one byte already read put back in front.
struct Prefixed {
    first: Option<u8>,
    inner: ClientStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(b) = self.first
            && buf.remaining() > 0
        {
            buf.put_slice(&[b]);
            self.first = None;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i32(8 + rest.len() as i32);
        b.put_i32(code);
        b.put_slice(rest);
        b.to_vec()
    }

    #[tokio::test]
    async fn ssl_and_gss_are_refused_without_a_certificate_then_startup_follows() {
        let (client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn(open(Box::new(server), None));
        let (mut r, mut w) = tokio::io::split(client);
        w.write_all(&packet(frame::GSSENC_REQUEST, b""))
            .await
            .unwrap();
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"N");
        w.write_all(&packet(frame::SSL_REQUEST, b"")).await.unwrap();
        r.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"N");
        w.write_all(&packet(
            196608,
            b"user\0alice\0database\0orders\0_pq_.x\0y\0\0",
        ))
        .await
        .unwrap();
        let Opening::Startup(hello) = task.await.unwrap().unwrap() else {
            panic!("expected a startup");
        };
        assert!(!hello.tls);
        assert_eq!(hello.params["user"], "alice");
        assert_eq!(hello.params["database"], "orders");
        assert_eq!(hello.unsupported_options, vec!["_pq_.x".to_string()]);
    }

    #[tokio::test]
    async fn cancel_and_old_protocols() {
        let (client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn(open(Box::new(server), None));
        let (_r, mut w) = tokio::io::split(client);
        w.write_all(&packet(frame::CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]))
            .await
            .unwrap();
        assert!(matches!(
            task.await.unwrap().unwrap(),
            Opening::Cancel { pid: 7, secret: 9 }
        ));

        let (client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn(open(Box::new(server), None));
        let (mut r, mut w) = tokio::io::split(client);
        w.write_all(&packet(2 << 16, b"user\0x\0\0")).await.unwrap();
        assert!(matches!(task.await.unwrap().unwrap(), Opening::Done));
        let mut reply = Vec::new();
        r.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply[0], b'E');
        assert!(String::from_utf8_lossy(&reply).contains("unsupported frontend protocol 2.0"));
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_utf8_sessions_start() {
        for ok in ["UTF8", "utf-8", "Unicode", "SQL_ASCII", "sql-ascii"] {
            assert_eq!(
                check_encoding(&params(&[("client_encoding", ok)])),
                Ok(()),
                "{ok}"
            );
        }
        for bad in ["LATIN1", "WIN1251", "SJIS", "GBK", ""] {
            let e = check_encoding(&params(&[("Client_Encoding", bad)])).unwrap_err();
            assert!(e.contains("client_encoding=UTF8"), "{bad}: {e}");
        }
        let e = check_encoding(&params(&[("options", "-c client-encoding=UTF8")])).unwrap_err();
        assert!(e.contains("startup options"), "{e}");
        assert_eq!(
            check_encoding(&params(&[("options", "-c statement_timeout=5s")])),
            Ok(())
        );
    }

    #[test]
    fn client_settings_pass_and_session_changing_ones_are_refused() {
        // What libpq, pgjdbc and tokio-postgres send.
        for ok in [
            params(&[
                ("user", "a"),
                ("database", "d"),
                ("application_name", "psql"),
            ]),
            params(&[
                ("client_encoding", "UTF8"),
                ("DateStyle", "ISO"),
                ("TimeZone", "UTC"),
                ("extra_float_digits", "3"),
            ]),
            params(&[(
                "options",
                "-c statement_timeout=5s --search-path=app,public",
            )]),
            params(&[("options", "-cDateStyle=ISO  -c lock_timeout=1s")]),
            params(&[("options", "-c application_name=two\\ words")]),
            // Read-only, to tighten what the role may do.
            params(&[("default_transaction_read_only", "on")]),
            params(&[("options", "-c default_transaction_read_only=true")]),
        ] {
            assert_eq!(check_settings(&ok), Ok(()), "{ok:?}");
        }
        for (bad, named) in [
            (params(&[("role", "app_owner")]), "role"),
            (
                params(&[("session_replication_role", "replica")]),
                "session_replication_role",
            ),
            (params(&[("options", "-c role=app_owner")]), "role"),
            (
                params(&[(
                    "options",
                    "-c statement_timeout=1s --session_preload_libraries=x",
                )]),
                "session_preload_libraries",
            ),
            // The escaped space hides nothing: the name is still read.
            (
                params(&[("options", "-c log_statement=none\\ x")]),
                "log_statement",
            ),
            // Lifting a read-only default of the role or database.
            (
                params(&[("default_transaction_read_only", "off")]),
                "default_transaction_read_only",
            ),
            (
                params(&[("options", "-c default_transaction_read_only=0")]),
                "default_transaction_read_only",
            ),
        ] {
            let e = check_settings(&bad).unwrap_err();
            assert!(e.contains(&format!("\"{named}\"")), "{bad:?}: {e}");
            assert!(e.contains("SET"), "{e}");
        }
        // A word boundary the server sees and Airlock might not: a vertical
        // tab, other control characters, non-ASCII bytes. (A tab is fine.)
        for hidden in [
            "-capplication_name=x\x0b-crole=app_owner",
            "-capplication_name=x\x0c-crole=app_owner",
            "-capplication_name=x\u{a0}-crole=app_owner",
            "-capplication_name=x\u{85}-crole=app_owner",
        ] {
            let e = check_settings(&params(&[("options", hidden)])).unwrap_err();
            assert!(e.contains("only printable ASCII"), "{hidden:?}: {e}");
        }
        assert_eq!(
            check_settings(&params(&[(
                "options",
                "-capplication_name=x\t-cDateStyle=ISO"
            )])),
            Ok(())
        );
        for bad in ["-d 5", "-c", "-c name", "-B 1000"] {
            assert!(
                check_settings(&params(&[("options", bad)])).is_err(),
                "{bad}"
            );
        }
    }
}
