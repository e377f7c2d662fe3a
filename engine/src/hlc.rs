//! Hybrid logical clocks (Kulkarni et al. 2014, "Logical Physical Clocks").
//!
//! An [`Hlc`] is 64 bits: 48 bits of wall-clock milliseconds and a 16-bit logical counter.
//! [`HybridClock`] issues stamps for local events and absorbs remote ones. The wall clock is
//! injected ([`WallClock`]), so the engine never reads the system time itself and a simulation can
//! drive every replica's clock, skew included.
//!
//! Invariant kept here (I8 of docs/design.md): a remote stamp more than `max_drift_ms` ahead of the
//! local wall clock is rejected and never adopted; a future stamp would otherwise win every write
//! to its key for as long as the skew lasts.

use crate::error::Error;
use crate::ids::ReplicaId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;
/// The largest wall-clock value an [`Hlc`] can carry (2^48 − 1 ms, in the year 10889).
pub const HLC_WALL_MS_MAX: u64 = (1 << 48) - 1;

/// A hybrid logical clock value: 48-bit wall milliseconds, 16-bit logical counter.
///
/// Ordered as the 64-bit integer it is, so a later wall time always sorts after an earlier one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    /// A stamp not known (a cursor claim from before claims carried one,
    /// [`crate::sign::CursorClaim`]): later than every stamp there is.
    pub const UNKNOWN: Hlc = Hlc(u64::MAX);

    /// [`Hlc::UNKNOWN`] (for serde's `default`).
    #[must_use]
    pub fn unknown() -> Hlc {
        Hlc::UNKNOWN
    }

    /// Builds a value from its parts; `wall_ms` is clamped to 48 bits.
    #[must_use]
    pub fn new(wall_ms: u64, logical: u16) -> Hlc {
        Hlc((wall_ms.min(HLC_WALL_MS_MAX) << LOGICAL_BITS) | u64::from(logical))
    }

    /// The wall-clock milliseconds part.
    #[must_use]
    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter part.
    #[must_use]
    pub fn logical(self) -> u16 {
        // Masked to 16 bits first, so the cast cannot truncate.
        (self.0 & LOGICAL_MASK) as u16
    }

    /// The next value after this one: the logical counter plus one, or, when the counter is
    /// full, the next millisecond (the clock then runs at most a millisecond ahead of the wall,
    /// per 65,536 events in one millisecond).
    #[must_use]
    pub fn successor(self) -> Hlc {
        Hlc(self.0.saturating_add(1))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.logical())
    }
}

/// The LWW stamp of a write: its HLC, then its writer. The higher stamp wins; the replica id
/// breaks ties between equal clocks, so the order is total and the same everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// When the write happened, in hybrid logical time.
    pub hlc: Hlc,
    /// Who wrote it.
    pub replica: ReplicaId,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.hlc, self.replica)
    }
}

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// The engine reads time only through this trait. Production uses [`SystemClock`]; tests and
/// simulations use [`ManualClock`].
pub trait WallClock: Send + Sync {
    /// The current wall-clock time, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// A clock that only moves forward at the rate time passes and never steps (like
    /// `std::time::Instant`), in milliseconds from any origin: what the replica measures elapsed
    /// time with, so a step of the wall clock is seen as a step. The default reads the wall
    /// clock, for clocks that do not step.
    fn monotonic_ms(&self) -> u64 {
        self.now_ms()
    }
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            // A clock set before 1970 reads as 0: stamps stay monotonic through the HLC.
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_ms(&self) -> u64 {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let origin = ORIGIN.get_or_init(std::time::Instant::now);
        u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to. Cloning shares the same time.
///
/// Its monotonic reading ([`WallClock::monotonic_ms`]) follows [`ManualClock::set`] and
/// [`ManualClock::advance`] (time passing) but not [`ManualClock::step`] (the wall clock set
/// wrong, as by an operator or a bad time source).
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    wall_ms: Arc<AtomicU64>,
    /// Wall time minus monotonic time: what the steps added up to (two's complement).
    stepped_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock that reads `now_ms` until moved.
    #[must_use]
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock { wall_ms: Arc::new(AtomicU64::new(now_ms)), stepped_ms: Arc::default() }
    }

    /// Sets the time (it may go backwards, as real clocks do); the monotonic reading moves with
    /// it.
    pub fn set(&self, now_ms: u64) {
        self.wall_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms` (wall and monotonic).
    pub fn advance(&self, ms: u64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Steps the wall clock by `delta_ms` (ahead or back) while no time passes: the monotonic
    /// reading stays where it is.
    pub fn step(&self, delta_ms: i64) {
        let delta = delta_ms.cast_unsigned();
        self.wall_ms.fetch_add(delta, Ordering::SeqCst);
        self.stepped_ms.fetch_add(delta, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.wall_ms.load(Ordering::SeqCst)
    }

    fn monotonic_ms(&self) -> u64 {
        self.now_ms().wrapping_sub(self.stepped_ms.load(Ordering::SeqCst))
    }
}

/// The clock state of one replica: the last HLC value it issued or absorbed.
///
/// Pure: every method takes the wall time as an argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HybridClock {
    last: Hlc,
    max_drift_ms: u64,
}

impl HybridClock {
    /// A clock that has seen nothing yet and rejects remote stamps more than `max_drift_ms` ahead.
    #[must_use]
    pub fn new(max_drift_ms: u64) -> HybridClock {
        HybridClock { last: Hlc(0), max_drift_ms }
    }

    /// A clock resumed from the last value it issued before a restart, so that it never issues a
    /// stamp at or below one it issued before.
    #[must_use]
    pub fn resume(last: Hlc, max_drift_ms: u64) -> HybridClock {
        HybridClock { last, max_drift_ms }
    }

    /// The last value issued or absorbed.
    #[must_use]
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// The tolerated lead of a remote stamp over the local wall clock.
    #[must_use]
    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// A stamp for a local event at wall time `wall_ms`: greater than every value seen so far.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        let wall = Hlc::new(wall_ms, 0);
        self.last = if wall > self.last { wall } else { self.last.successor() };
        self.last
    }

    /// Checks that a remote stamp is within `max_drift_ms` of the wall clock, without adopting it.
    pub fn check(&self, remote: Hlc, wall_ms: u64) -> Result<(), Error> {
        if remote.wall_ms() > wall_ms.saturating_add(self.max_drift_ms) {
            return Err(Error::ClockDrift {
                remote_ms: remote.wall_ms(),
                local_ms: wall_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        Ok(())
    }

    /// Absorbs a remote stamp received at wall time `wall_ms`: afterwards every local stamp is
    /// greater than it. A stamp beyond the tolerated drift is rejected and the clock is unchanged.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> Result<(), Error> {
        self.check(remote, wall_ms)?;
        // Taking the maximum of the three and then counting past it is the HLC receive rule
        // (l' = max(l, l_m, pt); c = the matching counter + 1), expressed on whole 64-bit values:
        // a value strictly above both the local and remote counters at the same wall millisecond.
        let wall = Hlc::new(wall_ms, 0);
        let top = self.last.max(remote);
        self.last = if wall > top { wall } else { top.successor() };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_48_bit_wall_and_16_bit_counter() {
        let h = Hlc::new(1_700_000_000_000, 7);
        assert_eq!(h.wall_ms(), 1_700_000_000_000);
        assert_eq!(h.logical(), 7);
        assert_eq!(Hlc::new(u64::MAX, 0).wall_ms(), HLC_WALL_MS_MAX);
    }

    #[test]
    fn local_stamps_strictly_increase_even_when_the_wall_stands_still_or_goes_back() {
        let mut c = HybridClock::new(1000);
        let a = c.now(5000);
        let b = c.now(5000);
        let d = c.now(4000);
        assert!(a < b && b < d);
        assert_eq!(b.wall_ms(), 5000);
        assert_eq!(b.logical(), 1);
        assert_eq!(d.wall_ms(), 5000);
    }

    #[test]
    fn a_full_logical_counter_rolls_into_the_next_millisecond() {
        let mut c = HybridClock::resume(Hlc::new(5000, u16::MAX), 1000);
        let h = c.now(5000);
        assert_eq!((h.wall_ms(), h.logical()), (5001, 0));
    }

    #[test]
    fn observing_a_remote_stamp_moves_past_it() {
        let mut c = HybridClock::new(1000);
        c.now(5000);
        let remote = Hlc::new(5500, 3);
        c.observe(remote, 5000).unwrap();
        assert!(c.now(5000) > remote);
    }

    #[test]
    fn a_stamp_beyond_max_drift_is_rejected_and_not_adopted() {
        let mut c = HybridClock::new(1000);
        let before = c.now(5000);
        let err = c.observe(Hlc::new(6001, 0), 5000).unwrap_err();
        assert!(matches!(err, Error::ClockDrift { remote_ms: 6001, local_ms: 5000, max_drift_ms: 1000 }));
        assert_eq!(c.last(), before);
        // Exactly at the limit is accepted.
        c.observe(Hlc::new(6000, 0), 5000).unwrap();
    }
}
