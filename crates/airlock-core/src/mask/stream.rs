//! Masking byte streams whose chunk boundaries can split a match.

use std::fmt;

use regex_automata::hybrid::dfa::Cache;

use super::Masker;
use super::detect::{self, Hit, LOOKBEHIND, MAX_SPAN, PEM_LIMIT};
use crate::{Error, MaskCounts, Result};

/// Above this many held bytes the stream releases everything it holds, as
/// at the end of the stream. No built-in verifier needs that much (the
/// longest wait is a private-key block, 64 KiB), so this only bounds memory
/// against pathological custom rules.
const HOLD_CAP: usize = PEM_LIMIT + 2 * MAX_SPAN;

/// Masks a byte stream (a terminal, `kubectl logs -f`) chunk by chunk.
///
/// Output equals masking the whole stream at once, wherever the chunks are
/// cut. To get there it holds back only the bytes a possible match in
/// progress needs and releases everything before them at once:
///
/// * a trailing word of up to 64 characters (it could be the local part of
///   an e-mail address whose `@` has not arrived), a trailing number (a card
///   number, a phone number, an IP address still being written), the start
///   of a trigger such as `AKI` or `-----BEG`, or of a held credential;
/// * a candidate whose verifier has not seen its end: a `password=` value,
///   a token, a JWT (at most 8 KiB), a private-key block until its `-----END`
///   line (at most 64 KiB);
/// * for custom rules, the last 1 KiB positions where a match may still be
///   under way.
///
/// In an interactive terminal that means a word being typed is echoed when
/// it ends (space, Enter, punctuation), not letter by letter. Connectors can
/// call [`StreamMasker::flush`] when the stream has been idle for a moment
/// to show the rest, at the cost of masking a value split across that pause
/// only in part.
pub struct StreamMasker {
    masker: Masker,
    /// Released bytes kept as context (at most `LOOKBEHIND`), then held bytes.
    buf: Vec<u8>,
    /// Where the held bytes start in `buf`.
    from: usize,
    hits: Vec<Hit>,
    /// Lazy-DFA caches of the custom rules, for `detect::viable`.
    caches: Vec<Option<Cache>>,
}

impl fmt::Debug for StreamMasker {
    // Never prints the held bytes: they may be a secret in progress.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamMasker")
            .field("profile", &self.masker.profile())
            .field("held", &self.held())
            .finish_non_exhaustive()
    }
}

impl StreamMasker {
    pub(crate) fn new(masker: Masker) -> StreamMasker {
        let caches = masker
            .shared
            .custom
            .iter()
            .map(|c| c.dfa.as_ref().map(|dfa| dfa.create_cache()))
            .collect();
        StreamMasker {
            masker,
            buf: Vec::new(),
            from: 0,
            hits: Vec::new(),
            caches,
        }
    }

    /// Adds `chunk` and appends to `out` every byte that can be released
    /// (masked).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>, counts: &mut MaskCounts) {
        if chunk.is_empty() {
            return;
        }
        self.buf.extend_from_slice(chunk);
        self.release(false, out, counts);
    }

    /// Ends the stream: releases everything still held. The masker can then
    /// start a new stream.
    pub fn finish(&mut self, out: &mut Vec<u8>, counts: &mut MaskCounts) {
        self.release(true, out, counts);
        self.buf.clear();
        self.from = 0;
    }

    /// Releases everything held now, as if the stream ended here, but keeps
    /// going. For idle pauses in interactive sessions; see the type's docs.
    pub fn flush(&mut self, out: &mut Vec<u8>, counts: &mut MaskCounts) {
        self.release(true, out, counts);
    }

    /// How many bytes are held back right now.
    pub fn held(&self) -> usize {
        self.buf.len() - self.from
    }

    fn release(&mut self, eof: bool, out: &mut Vec<u8>, counts: &mut MaskCounts) {
        let m = &self.masker;
        self.hits.clear();
        let mut hold = detect::scan(
            &m.shared,
            &m.profile.plan,
            &self.buf,
            self.from,
            eof,
            Some(&mut self.caches),
            &mut self.hits,
        );
        if !eof && self.buf.len() - hold > HOLD_CAP {
            self.hits.clear();
            hold = detect::scan(
                &m.shared,
                &m.profile.plan,
                &self.buf,
                self.from,
                true,
                None,
                &mut self.hits,
            );
        }
        // A span not complete before the cut waits, from where its scan
        // started, for the next round; that may move the cut back again.
        loop {
            let back = self
                .hits
                .iter()
                .filter(|h| h.end > hold)
                .map(|h| h.origin.min(h.start))
                .min();
            match back {
                Some(b) if b < hold => hold = b.max(self.from),
                _ => break,
            }
        }
        self.hits.retain(|h| h.end <= hold);
        detect::merge(&mut self.hits);
        let hits = &self.hits;
        m.render(&self.buf, self.from, hold, hits, out, counts);
        self.from = hold;
        // Keep only LOOKBEHIND bytes of released context; trim in batches
        // so that the move is rare.
        if self.from > 32 * 1024 {
            let cut = self.from - LOOKBEHIND;
            self.buf.drain(..cut);
            self.from -= cut;
        }
    }
}

/// Masks `input` to `output` through the streaming masker, writing and
/// flushing masked bytes as soon as they are released (so `airlock mask`
/// works on a live `tail -f`). Returns what was masked, per detector.
pub fn mask_stream(
    masker: &Masker,
    mut input: impl std::io::Read,
    mut output: impl std::io::Write,
) -> Result<MaskCounts> {
    let mut counts = MaskCounts::new();
    let mut stream = masker.stream();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(chunk.len() + 1024);
    let write = |out: &mut Vec<u8>, output: &mut dyn std::io::Write| -> Result<()> {
        if !out.is_empty() {
            output
                .write_all(out)
                .and_then(|()| output.flush())
                .map_err(|e| Error::Internal(format!("cannot write the masked output: {e}")))?;
            out.clear();
        }
        Ok(())
    };
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Internal(format!(
                    "cannot read the input to mask: {e}"
                )));
            }
        };
        stream.push(&chunk[..n], &mut out, &mut counts);
        write(&mut out, &mut output)?;
    }
    stream.finish(&mut out, &mut counts);
    write(&mut out, &mut output)?;
    Ok(counts)
}
