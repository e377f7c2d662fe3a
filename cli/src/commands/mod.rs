//! The commands, one concept per module.

pub mod bench;
pub mod read;
pub mod serve;
pub mod transfer;
pub mod watch;
pub mod write;
