//! Size limits, checked once where data enters the engine (a local write or a remote batch), so
//! everything past that boundary can trust what it holds.

use crate::entry::{Entry, Payload};
use crate::error::Error;

/// The largest key DESIGN.md allows: 1 KiB.
pub const KEY_BYTES_MAX: usize = 1024;
/// The default value limit: 1 MiB.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// The default metadata limit: 4 KiB.
pub const METADATA_BYTES_MAX_DEFAULT: usize = 4 << 10;

/// Configurable size limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key accepted (at most [`KEY_BYTES_MAX`]).
    pub key_bytes_max: usize,
    /// Longest value accepted.
    pub value_bytes_max: usize,
    /// Longest metadata accepted.
    pub metadata_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: KEY_BYTES_MAX,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            metadata_bytes_max: METADATA_BYTES_MAX_DEFAULT,
        }
    }
}

impl Limits {
    /// Checks a key.
    pub fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        let max = self.key_bytes_max.min(KEY_BYTES_MAX);
        if key.is_empty() {
            return Err(Error::KeyEmpty { max });
        }
        if key.len() > max {
            return Err(Error::KeyTooLarge { len: key.len(), max });
        }
        Ok(())
    }

    /// Checks a value and its metadata.
    pub fn check_value(&self, bytes: &[u8], metadata: Option<&[u8]>) -> Result<(), Error> {
        if bytes.len() > self.value_bytes_max {
            return Err(Error::ValueTooLarge { len: bytes.len(), max: self.value_bytes_max });
        }
        if let Some(m) = metadata.filter(|m| m.len() > self.metadata_bytes_max) {
            return Err(Error::MetadataTooLarge { len: m.len(), max: self.metadata_bytes_max });
        }
        Ok(())
    }

    /// Checks every size in an entry.
    pub fn check_entry(&self, entry: &Entry) -> Result<(), Error> {
        self.check_key(&entry.key)?;
        if let Payload::Value(v) = &entry.payload {
            self.check_value(&v.bytes, v.metadata.as_deref())?;
        }
        Ok(())
    }
}
