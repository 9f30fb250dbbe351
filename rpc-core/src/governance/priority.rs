//! [`Priority`]: how important a call is to its caller, for shedding.

use crate::context::Metadata;

/// How important a call is (its criticality): under overload,
/// [`AdaptiveConcurrency`](super::AdaptiveConcurrency) sheds `Sheddable` calls first, then
/// `Default` ones, and `Critical` ones last. A caller sets it with
/// [`Call::priority`](crate::Call::priority), which sends it as the metadata pair
/// `rpc-priority: critical | default | sheddable`; a call without it (or with another
/// value) is `Default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Work that may be dropped first: prefetches, batch jobs, retries of best effort.
    Sheddable,
    /// Ordinary calls.
    #[default]
    Default,
    /// Calls a user waits on and that must not fail while anything can run.
    Critical,
}

impl Priority {
    /// The metadata key a call's priority travels under.
    pub const METADATA_KEY: &'static str = "rpc-priority";

    /// The priority's word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Sheddable => "sheddable",
            Priority::Default => "default",
            Priority::Critical => "critical",
        }
    }

    /// The priority a call's metadata names.
    pub fn of(metadata: &Metadata) -> Priority {
        match metadata.get(Priority::METADATA_KEY).map(|v| &v[..]) {
            Some(b"critical") => Priority::Critical,
            Some(b"sheddable") => Priority::Sheddable,
            _ => Priority::Default,
        }
    }

    /// The part of a concurrency limit calls of this priority may fill: lower priorities
    /// are refused while there is still room for higher ones.
    pub(crate) fn share(self, limit: usize) -> usize {
        let share = match self {
            Priority::Critical => return limit,
            Priority::Default => limit * 4 / 5,
            Priority::Sheddable => limit / 2,
        };
        share.max(1)
    }
}
