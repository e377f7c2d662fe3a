//! Cross-crate tests for lethe live in this crate's `tests/` directory: the deterministic
//! simulation of many replicas under faults (sync issue) and multi-process clusters of real
//! `lethe serve` processes (node issue). Tests of one crate stay next to that crate.
