//! The deterministic simulation (`lethe_tests::sim`) driven by fuzzer bytes instead of a seed:
//! every choice (replica count, operation, key, fault, delay, skew) is read from the input, so
//! coverage guidance steers the cluster into new interleavings. Any invariant violation panics
//! with its description.

#![no_main]

use lethe_tests::sim::{ByteChoices, Sim, SimConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut choices = ByteChoices::new(data);
    // Steps scale with the input: two bytes per choice, a few choices per step.
    let config = SimConfig { steps: (data.len() / 4).clamp(1, 400), ..SimConfig::default() };
    let result = Sim::new(&mut choices, config).and_then(|sim| sim.run());
    if let Err(violation) = result {
        panic!("invariant violated: {violation}");
    }
});
