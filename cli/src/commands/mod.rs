//! The commands, one concept per module.

#[cfg(feature = "bench")]
pub mod bench;
pub mod device;
pub mod read;
pub mod serve;
pub mod transfer;
pub mod watch;
pub mod write;
