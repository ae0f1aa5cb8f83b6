//! Masking (placeholder; being built).

use std::borrow::Cow;

use serde::Deserialize;

use crate::{Identity, MaskCounts, Result};

/// `[masking]` configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {}

/// The compiled masking configuration.
#[derive(Debug)]
pub struct MaskEngine {}

impl MaskEngine {
    /// Compiles the configuration.
    pub fn new(_config: &MaskConfig, _held: Vec<String>, _key: [u8; 32]) -> Result<Self> {
        Ok(MaskEngine {})
    }
    /// The masker for one session.
    pub fn masker(&self, _target: &str, _identity: &Identity) -> Masker {
        Masker {}
    }
}

/// Masks values for one session.
#[derive(Clone, Debug)]
pub struct Masker {}

impl Masker {
    /// Masks one value.
    pub fn mask_str<'a>(
        &self,
        _field: Option<&str>,
        s: &'a str,
        _counts: &mut MaskCounts,
    ) -> Cow<'a, str> {
        Cow::Borrowed(s)
    }
}

/// Loads the key (placeholder).
pub fn load_or_create_key(_d: &std::path::Path) -> Result<[u8; 32]> {
    Ok([0; 32])
}
