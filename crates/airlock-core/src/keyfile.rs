//! Key files in the data directory: created once with owner-only permissions,
//! then loaded on every start.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Reads the key at `path`, or creates it with `generate` (mode 0600) when absent.
pub(crate) fn load_or_create(
    path: &Path,
    generate: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot read key file {}: {e}",
                path.display()
            )));
        }
    }
    let bytes = generate()?;
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(|e| {
            Error::Config(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(path).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    match written {
        Ok(()) => Ok(bytes),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path)
            .map_err(|e| Error::Config(format!("cannot read key file {}: {e}", path.display()))),
        Err(e) => Err(Error::Config(format!(
            "cannot write key file {}: {e}",
            path.display()
        ))),
    }
}

/// Creates `dir` and any missing parents readable by the owner only (on
/// Unix): the data directory holds statements, parameters and result rows
/// (masked only where a rule or detector matched), and keys. A directory
/// that already exists keeps its permissions.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
