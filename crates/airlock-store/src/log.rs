//! The audit log: append-only segment files holding every record's bytes.
//!
//! The log is the store's source of truth; sled only indexes it. A segment is
//! named after the sequence number of its first record
//! (`log/00000000000000000001.log`) and holds frames:
//! `u32 LE body length | 32-byte SHA-256 of body | body`. A frame is written
//! with one `write` (and one `fdatasync` in `fsync` mode) per batch, which is
//! what makes a record stored. A torn frame at the very end (a crash
//! mid-write) was never acknowledged and is cut off when the store opens.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use airlock_core::audit::Hash;

use crate::error::{Error, Result, io};

/// Bytes before a frame's body.
pub(crate) const HEADER: u64 = 36;

/// Frames longer than this are checked against the file's size before their
/// body is read.
const LARGE_FRAME: u32 = 1 << 20;

/// Where a frame starts: its segment (named by first sequence number) and
/// byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    pub(crate) fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Position> {
        Some(Position {
            segment: u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            offset: u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?),
        })
    }
}

/// One frame read back.
pub(crate) struct Frame {
    pub hash: Hash,
    pub body: Vec<u8>,
    /// Where the next frame starts in the same segment.
    pub next: u64,
}

/// The log directory.
#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
}

impl Log {
    pub(crate) fn open(data_dir: &Path) -> Result<Log> {
        let dir = data_dir.join("log");
        airlock_core::create_private_dir(&dir).map_err(io(format!(
            "cannot create the audit log directory {}",
            dir.display()
        )))?;
        Ok(Log { dir })
    }

    pub(crate) fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:020}.log"))
    }

    /// Every segment, oldest first.
    pub(crate) fn segments(&self) -> Result<Vec<u64>> {
        let entries = std::fs::read_dir(&self.dir).map_err(io(format!(
            "cannot list the audit log {}",
            self.dir.display()
        )))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("cannot list the audit log"))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            out.push(id);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The segment after `segment`, if there is one.
    pub(crate) fn next_segment(&self, segment: u64) -> Result<Option<u64>> {
        Ok(self.segments()?.into_iter().find(|s| *s > segment))
    }

    pub(crate) fn open_segment(&self, segment: u64) -> Result<Option<File>> {
        match File::open(self.path(segment)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                what: format!("cannot open the audit log segment {}", segment),
                source: e,
            }),
        }
    }

    /// Opens a segment for appending, creating it if needed, and makes its
    /// directory entry durable. Also when it already exists: a segment
    /// created by an earlier attempt whose directory sync failed, or by a
    /// gateway that crashed right after creating it, may not be in the
    /// directory on disk yet, and records acknowledged in it as on disk
    /// (`fsync` durability) would go with it. It happens at start and once
    /// per segment.
    pub(crate) fn append_to(&self, segment: u64) -> Result<File> {
        let path = self.path(segment);
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        // The records are for the owner only, as the directory is.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(io(format!(
            "cannot open the audit log segment {}",
            path.display()
        )))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync the audit log directory"))?;
        Ok(file)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Appends one frame per body to `out`, returning each frame's offset
/// relative to the start of `out`.
pub(crate) fn encode_frames<'a>(
    bodies: impl Iterator<Item = (&'a Hash, &'a [u8])>,
    out: &mut Vec<u8>,
) -> Result<Vec<u64>> {
    let mut offsets = Vec::new();
    for (hash, body) in bodies {
        offsets.push(out.len() as u64);
        let len = u32::try_from(body.len())
            .map_err(|_| Error::Corrupt("an audit record is larger than 4 GiB".into()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&hash.0);
        out.extend_from_slice(body);
    }
    Ok(offsets)
}

/// Reads the frame at `offset`; `None` at the end of the file or where a
/// frame is incomplete (a torn write).
pub(crate) fn read_frame(file: &File, offset: u64) -> Result<Option<Frame>> {
    let mut header = [0u8; HEADER as usize];
    match file.read_exact_at(&mut header, offset) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io("cannot read the audit log")(e)),
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let Some(hash) = Hash::from_slice(&header[4..]) else {
        return Ok(None);
    };
    // A damaged length must not allocate gigabytes for a body that is not
    // there.
    if len > LARGE_FRAME {
        let size = file
            .metadata()
            .map_err(io("cannot read the audit log"))?
            .len();
        if offset + HEADER + u64::from(len) > size {
            return Ok(None);
        }
    }
    let mut body = vec![0u8; len as usize];
    match file.read_exact_at(&mut body, offset + HEADER) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io("cannot read the audit log")(e)),
    }
    Ok(Some(Frame {
        hash,
        body,
        next: offset + HEADER + u64::from(len),
    }))
}

/// The offset just after the frame at `offset`, reading only its header.
pub(crate) fn skip_frame(file: &File, offset: u64) -> Result<Option<u64>> {
    let mut len = [0u8; 4];
    match file.read_exact_at(&mut len, offset) {
        Ok(()) => Ok(Some(offset + HEADER + u64::from(u32::from_le_bytes(len)))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(io("cannot read the audit log")(e)),
    }
}

/// Writes `bytes` at the end of `file` and, in `fsync` mode, syncs it.
/// On failure the file is cut back to `len`, so no partial batch remains;
/// the error says whether that worked (`true`: the file is as before).
pub(crate) fn write_batch(
    file: &mut File,
    len: u64,
    bytes: &[u8],
    sync: bool,
) -> std::result::Result<(), (std::io::Error, bool)> {
    let written = file
        .write_all(bytes)
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
    written.map_err(|e| (e, file.set_len(len).is_ok()))
}

/// The offset of the first whole frame whose body matches its hash at or
/// after `from` in `tail` (the segment's bytes from `base` on), if any.
///
/// A write interrupted by a crash leaves at most one batch at the end of
/// the log, after which nothing is valid; a record altered in place leaves
/// valid records after it. Every offset is tried, since an altered length
/// would lead a frame-by-frame walk astray. Bodies are JSON objects, so
/// only an offset whose body would start with `{` is hashed.
pub(crate) fn valid_frame_in(tail: &[u8], base: u64, from: u64) -> Option<u64> {
    let header = HEADER as usize;
    let start = usize::try_from(from.checked_sub(base)?).ok()?;
    (start..tail.len().saturating_sub(header)).find_map(|at| {
        let len = u32::from_le_bytes(tail[at..at + 4].try_into().ok()?) as usize;
        let body = tail.get(at + header..(at + header).checked_add(len)?)?;
        let hash = Hash::from_slice(&tail[at + 4..at + header])?;
        (body.first() == Some(&b'{') && Hash::of(body) == hash).then_some(base + at as u64)
    })
}
