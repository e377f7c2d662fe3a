//! The device tier (docs/design.md §8): replicas that sync with members only, whose writes get
//! their dots from members, and whose sessions cost O(members) bytes whatever the number of
//! devices and the deletion history.
//!
//! - [`Role`]: a replica is a member (as in sections 2–3) or a device.
//! - `queue.rs`: the device's upload queue, the base vector of each queued write, its capped
//!   acknowledgement and its horizon.
//! - `records.rs`: a member's table of enrolled devices (acknowledged vector, cursor, last seen),
//!   the device lease and removal; `enrol.rs`: that table as a replica keeps it.
//! - `admit.rs`: a member admitting a device's uploads under dots of its own.
//! - `session.rs`: the device session, one state machine per side ([`DeviceSession`] on the
//!   device, [`DeviceService`] on the member), sans-IO like the member session.
//!
//! One device session, idle: `DeviceHello` (device id, vector over members, capped
//! acknowledgement, horizon) → `MemberHello` (member id, vector, `collected`, the device's
//! cursor): one round trip, about a hundred bytes each way with three members. With writes
//! queued, `Upload` chunks follow the member's handshake and each is answered by `Admitted`;
//! the download (delta, a fresh bootstrap of live entries only, or a reconciliation) runs at
//! the same time, and the device's `Ack` ends it.

pub mod message;
pub mod records;

mod admit;
mod enrol;
mod queue;
mod session;

pub use message::{Admission, DeviceHello, MemberHello, SeqProof};
pub(crate) use queue::Settle;
pub use queue::{DeviceState, OpenPoint, UNSETTLED_KEYS_MAX};
pub use records::{DEVICE_LEASE_MS_DEFAULT, DEVICES_MAX, DeviceRecord, Devices, EnrolError, TooManyDevices};
pub use session::{
    DEVICE_ANTI_ENTROPY_MIN_MS, DeviceOutcome, DeviceService, DeviceSession, DeviceStats, UPLOADS_IN_FLIGHT,
    UPLOADS_PER_SESSION_MAX, anti_entropy_device_in_process, sync_device_in_process,
};
pub(crate) use session::{cap_device_ack, capped_at, check_device_vector, known_names};

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Member => "member",
            Role::Device => "device",
        })
    }
}

/// What a replica is (docs/design.md §8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// A server or a peer of a mesh: numbers its own writes, syncs with members and serves
    /// devices.
    #[default]
    Member,
    /// A client device: syncs with members only; its writes are numbered by the member that
    /// admits them.
    Device,
}
