//! Cross-crate tests for lethe: the deterministic simulation ([`sim`]) used by
//! `tests/simulation.rs`, the `lethe-sim` replay command and the `simulation` fuzz target; later,
//! multi-process clusters of real `lethe serve` processes. Tests of one crate stay next to it.

pub mod sim;
