//! Zone-aware routing: a balancing client prefers the endpoints of its own zone.

use super::metadata_value;

/// The metadata key an endpoint's zone is read from ([`Endpoint::metadata`]).
///
/// [`Endpoint::metadata`]: super::Endpoint::metadata
pub const ZONE: &str = "zone";

/// Keeps a balancing client's calls in its own zone (an availability zone, a rack, a
/// datacenter: whatever endpoints carry as their [`ZONE`] metadata) while the zone can
/// take them, and spills over to the other zones when it cannot.
///
/// A call goes to an endpoint of the client's zone when at least
/// [`min_endpoints`](Zone::min_endpoints) of them are usable: connected, not ejected by
/// failure accrual, and not reporting a utilization at or above
/// [`spill_utilization`](Zone::spill_utilization) (see [load reports](crate::load)).
/// Endpoints being connected for the first time count too, so that a client that has just
/// started waits for its zone rather than spilling over; one that lost its connection does
/// not.
/// Otherwise (the zone's servers are partitioned away, failing, overloaded, or too few)
/// calls go to every usable endpoint, the zone's own included, as the client's
/// [`Strategy`](super::Strategy) picks; they come back as soon as the zone recovers.
/// Endpoints without a zone count as remote.
///
/// With a [`Subset`](super::Subset), the client connects to a subset of its zone's
/// endpoints and to one of the others', so that spilling over finds connections ready.
///
/// ```
/// use rpc_core::balance::{Endpoint, Zone};
///
/// let zone = Zone::new("eu-west-1a").min_endpoints(2);
/// assert_eq!(zone.name(), "eu-west-1a");
/// let endpoint = Endpoint::new("10.0.0.1:4000", rpc_transport::tcp::connector("10.0.0.1:4000"))
///     .metadata(rpc_core::balance::ZONE, "eu-west-1a");
/// assert_eq!(endpoint.get_metadata("zone"), Some("eu-west-1a"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    name: String,
    min_endpoints: usize,
    spill_utilization: f64,
}

impl Zone {
    /// Prefers the endpoints whose zone is `name`; spills over when none of them is usable
    /// or all of them report a utilization of 0.9 or more.
    pub fn new(name: impl Into<String>) -> Zone {
        Zone {
            name: name.into(),
            min_endpoints: 1,
            spill_utilization: 0.9,
        }
    }

    /// Spills over when fewer than `count` of the zone's endpoints are usable (at least 1).
    pub fn min_endpoints(mut self, count: usize) -> Zone {
        self.min_endpoints = count.max(1);
        self
    }

    /// An endpoint reporting at least this utilization does not count as usable for
    /// keeping calls in the zone (it still takes calls once they spill over).
    pub fn spill_utilization(mut self, utilization: f64) -> Zone {
        self.spill_utilization = utilization;
        self
    }

    /// The zone's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether an endpoint with this metadata is in the zone.
    pub(crate) fn is_local(&self, metadata: &[(String, String)]) -> bool {
        metadata_value(metadata, ZONE) == Some(self.name.as_str())
    }

    pub(crate) fn min_count(&self) -> usize {
        self.min_endpoints
    }

    /// Whether a reported utilization is too high to keep calls in the zone.
    pub(crate) fn too_busy(&self, utilization: f64) -> bool {
        utilization >= self.spill_utilization
    }
}
