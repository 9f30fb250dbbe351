//! What a reconnecting or balancing client reports about itself.

/// A snapshot of a reconnecting or balancing client; see [`Client::stats`](crate::Client::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Calls made.
    pub calls: u64,
    /// Retries made (a call sent again after its request may have reached a server).
    pub retries: u64,
    /// Retries not made because the retry budget was spent.
    pub retries_refused: u64,
    /// Hedges sent: extra requests for calls still unanswered after the hedging delay (see
    /// [`Hedge`](super::Hedge)).
    pub hedges: u64,
    /// Calls a hedge answered first (the earlier request was cancelled).
    pub hedges_won: u64,
    /// Hedges not sent because the retry budget was spent.
    pub hedges_refused: u64,
    /// Every endpoint, in no particular order.
    pub endpoints: Vec<EndpointStats>,
}

/// One endpoint of a [`ClientStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// The key it was added under.
    pub key: String,
    /// Its weight.
    pub weight: u32,
    /// Its connection.
    pub state: EndpointState,
    /// Ejected by failure accrual (or being probed).
    pub ejected: bool,
    /// Calls in progress on it.
    pub in_flight: usize,
    /// Requests sent to it, retries included.
    pub calls: u64,
    /// The server's latest [load report](crate::load), while it is fresh.
    pub reported: Option<crate::load::ServerLoad>,
}

/// Where an endpoint's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointState {
    /// Connecting.
    Connecting,
    /// Connected: calls can go to it.
    Ready,
    /// The last attempt to connect failed; another comes after a backoff.
    Down,
}
