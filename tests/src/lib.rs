//! Cross-crate tests for lethe: the deterministic simulation ([`sim`]) used by
//! `tests/simulation.rs`, the `lethe-sim` replay command and the `simulation` fuzz target; and
//! the harness ([`cluster`]) for multi-process clusters of real `lethe serve` processes
//! (`tests/cluster.rs`); and a redb backend that fails on demand like a full disk
//! ([`failing_disk`], `tests/store_failure.rs`); and a clock-stepping `LD_PRELOAD` shim for
//! `lethe serve` processes ([`clock_shim`]), and one that stalls or fills their disk ([`disk_shim`]). Tests of one crate stay next to it.

pub mod clock_shim;
pub mod cluster;
pub mod disk_shim;
pub mod failing_disk;
pub mod sim;
pub mod tmpfs;
