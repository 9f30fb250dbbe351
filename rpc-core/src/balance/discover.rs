//! Where a balancing client learns its endpoints: the [`Discover`] trait, and
//! [`StaticList`], the simplest source.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use super::{Change, Endpoint};
use crate::connect::Connect;

/// A source of endpoint changes for a balancing client: what
/// [`ClientBuilder::discover`](crate::ClientBuilder::discover) takes.
///
/// A source turns into a stream of [`Change`]s: each adds an endpoint (or replaces the one
/// with its key) or removes one. The client follows the stream for as long as it lives; its
/// calls wait for the first change, and when the stream ends the endpoints stay as they are.
///
/// Every `Stream` of changes is a source, so a channel works as it is. A source that is not
/// a stream itself (a DNS name, a registry to watch) implements the trait and makes its
/// stream in [`into_changes`](Discover::into_changes), when the client starts.
///
/// ```
/// use futures::stream::{self, BoxStream, StreamExt};
/// use rpc_core::balance::{Change, Discover, Endpoint};
/// use rpc_transport::tcp::TcpConnector;
///
/// /// Endpoints read from a comma-separated list, such as an environment variable.
/// struct CommaList(String);
///
/// impl Discover for CommaList {
///     type Connector = TcpConnector;
///     type Changes = BoxStream<'static, Change<TcpConnector>>;
///
///     fn into_changes(self) -> Self::Changes {
///         let changes: Vec<_> = self
///             .0
///             .split(',')
///             .map(|addr| Change::Insert(Endpoint::new(addr, rpc_transport::tcp::connector(addr))))
///             .collect();
///         // Then stay open: an ended stream would be no different, but says nothing more.
///         stream::iter(changes).chain(stream::pending()).boxed()
///     }
/// }
///
/// fn assert_discover(_: impl Discover) {}
/// assert_discover(CommaList("10.0.0.1:4000,10.0.0.2:4000".into()));
/// // A channel of changes is a source too.
/// let (_tx, rx) = futures::channel::mpsc::unbounded::<Change<TcpConnector>>();
/// assert_discover(rx);
/// ```
pub trait Discover: Send + 'static {
    /// How the client connects to the endpoints this source finds.
    type Connector: Connect;
    /// The changes, in the order the client should apply them.
    type Changes: Stream<Item = Change<Self::Connector>> + Send + 'static;

    /// Starts the source; called once, by the client, within its tokio runtime.
    fn into_changes(self) -> Self::Changes;
}

impl<S, K> Discover for S
where
    S: Stream<Item = Change<K>> + Send + 'static,
    K: Connect,
{
    type Connector = K;
    type Changes = S;

    fn into_changes(self) -> S {
        self
    }
}

/// A fixed list of endpoints as a [`Discover`] source: it inserts each endpoint, then stays
/// open with nothing more to say.
///
/// [`ClientBuilder::balance`](crate::ClientBuilder::balance) does the same with less; a
/// static list is for code that takes any [`Discover`] source, such as configuration that
/// names either fixed addresses or a DNS name.
///
/// ```
/// use rpc_core::balance::{Discover, Endpoint, StaticList};
/// use rpc_core::{service, Server};
///
/// #[service]
/// pub trait Echo {
///     async fn echo(&self, text: String) -> String;
/// }
/// struct Parrot;
/// impl Echo for Parrot {
///     async fn echo(&self, text: String) -> String { text }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), rpc_core::RpcError> {
/// let (listener, connector) = rpc_transport::memory::listener();
/// tokio::spawn(Server::new().add_service(EchoServer::new(Parrot)).serve(listener));
///
/// let endpoints = StaticList::new([Endpoint::new("local", connector).metadata("zone", "a")]);
/// assert_eq!(endpoints.endpoints()[0].get_metadata("zone"), Some("a"));
/// let client = EchoClient::builder().discover(endpoints);
/// assert_eq!(client.echo("hi".into()).await?, "hi");
/// # Ok(()) }
/// ```
pub struct StaticList<K> {
    endpoints: Vec<Endpoint<K>>,
}

impl<K> StaticList<K> {
    /// A source that inserts `endpoints`, in order.
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint<K>>) -> StaticList<K> {
        StaticList {
            endpoints: endpoints.into_iter().collect(),
        }
    }

    /// The endpoints it inserts.
    pub fn endpoints(&self) -> &[Endpoint<K>] {
        &self.endpoints
    }
}

impl<K: Clone> Clone for StaticList<K> {
    fn clone(&self) -> StaticList<K> {
        StaticList {
            endpoints: self.endpoints.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for StaticList<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticList")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl<K: Connect> Discover for StaticList<K> {
    type Connector = K;
    type Changes = StaticChanges<K>;

    fn into_changes(self) -> StaticChanges<K> {
        StaticChanges {
            inserts: self.endpoints.into_iter(),
        }
    }
}

/// The changes of a [`StaticList`]: an insert per endpoint, then none, without ending.
pub struct StaticChanges<K> {
    inserts: std::vec::IntoIter<Endpoint<K>>,
}

// Never pinned structurally: the iterator is only moved out of by `&mut`.
impl<K> Unpin for StaticChanges<K> {}

impl<K> fmt::Debug for StaticChanges<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticChanges")
            .field("inserts_left", &self.inserts.len())
            .finish()
    }
}

impl<K> Stream for StaticChanges<K> {
    type Item = Change<K>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Change<K>>> {
        match self.get_mut().inserts.next() {
            Some(endpoint) => Poll::Ready(Some(Change::Insert(endpoint))),
            // Stays open: nothing will ever wake it, like `std::future::pending`.
            None => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.inserts.len(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn connector() -> impl Connect {
        || async { Err::<Box<dyn crate::Transport>, _>(std::io::Error::other("unused")) }
    }

    #[tokio::test]
    async fn a_static_list_inserts_in_order_then_stays_open() {
        let list = StaticList::new([
            Endpoint::new("a", connector()),
            Endpoint::new("b", connector()).weight(2),
        ]);
        let mut changes = list.into_changes();
        let keys: Vec<String> = (&mut changes)
            .take(2)
            .map(|change| match change {
                Change::Insert(endpoint) => endpoint.key,
                Change::Remove(key) => panic!("removed {key}"),
            })
            .collect()
            .await;
        assert_eq!(keys, ["a", "b"]);
        assert!(futures::poll!(changes.next()).is_pending());
    }
}
