//! What the registries (etcd, ZooKeeper) share: what they store for a server (the entry's
//! text format, and the balancer endpoint a discovering client makes of it), the bookkeeping
//! and stream of a discovering client's watch, and the shape of a registration.

use rpc_core::balance::Endpoint;

use crate::tcp::{self, TcpConnector};

mod known;
mod registration;
mod watch;

pub(crate) use known::Known;
pub(crate) use registration::{deregister_on, Background};
pub(crate) use watch::{watch_stream, Follow, Watch};

/// An entry in a registry: where a server is, its weight and its metadata.
///
/// Stored as plain text: `addr [weight] [key=value ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) addr: String,
    pub(crate) weight: u32,
    /// `key=value` words, in order (a zone: `zone=eu-west-1a`).
    pub(crate) metadata: Vec<(String, String)>,
}

impl Entry {
    /// A server at `addr`, of weight 1, without metadata.
    pub(crate) fn new(addr: impl Into<String>) -> Entry {
        Entry {
            addr: addr.into(),
            weight: 1,
            metadata: Vec::new(),
        }
    }

    /// Sets the metadata value of `key` (replacing an earlier one).
    ///
    /// # Panics
    /// If the key is empty or has `=` or white space, or the value has white space: the
    /// entry could not be read back.
    pub(crate) fn set_metadata(&mut self, registry: &str, key: &str, value: &str) {
        assert!(
            !key.is_empty()
                && !key.contains('=')
                && !key.contains(char::is_whitespace)
                && !value.contains(char::is_whitespace),
            "{registry} registration metadata must be single words, the key without `=`: {key:?}={value:?}"
        );
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value.to_string()));
    }

    /// Why the address cannot be registered (it would not read back), if it cannot.
    pub(crate) fn bad_addr(&self) -> Option<String> {
        let addr = &self.addr;
        (addr.is_empty() || addr.contains(char::is_whitespace))
            .then(|| format!("the address `{addr}` is empty or has whitespace; give `host:port`"))
    }

    /// Reads a value: `addr`, then optionally a weight, then any `key=value` words.
    pub(crate) fn parse(value: &[u8]) -> Result<Entry, String> {
        let text = std::str::from_utf8(value).map_err(|_| "it is not UTF-8".to_string())?;
        let mut words = text.split_whitespace().peekable();
        let addr = words.next().ok_or_else(|| "it is empty".to_string())?;
        let weight = match words.next_if(|word| !word.contains('=')) {
            None => 1,
            Some(word) => word
                .parse()
                .map_err(|_| format!("its weight `{word}` is not a whole number"))?,
        };
        let metadata = words
            .map(|word| match word.split_once('=') {
                Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
                _ => Err(format!(
                    "`{text}` is not `address [weight] [key=value ...]` (at `{word}`)"
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Entry {
            addr: addr.to_string(),
            weight,
            metadata,
        })
    }

    /// The value that [`parse`](Entry::parse) reads back.
    pub(crate) fn format(&self) -> String {
        let mut value = self.addr.clone();
        if self.weight != 1 || !self.metadata.is_empty() {
            value += &format!(" {}", self.weight);
        }
        for (key, v) in &self.metadata {
            value += &format!(" {key}={v}");
        }
        value
    }

    /// The balancer's endpoint for this entry, under `key` (the registry's key or path): a
    /// TCP connector to the address, with the entry's weight and metadata.
    pub(crate) fn endpoint(&self, key: String) -> Endpoint<TcpConnector> {
        let mut endpoint = Endpoint::new(key, tcp::connector(&self.addr)).weight(self.weight);
        for (k, v) in &self.metadata {
            endpoint = endpoint.metadata(k.clone(), v.clone());
        }
        endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back() {
        for (value, addr, weight) in [
            ("10.0.0.1:4000", "10.0.0.1:4000", 1),
            ("  10.0.0.1:4000\n", "10.0.0.1:4000", 1),
            ("host:1 3", "host:1", 3),
            ("host:1\t0", "host:1", 0),
            ("host:1 zone=a", "host:1", 1),
            ("host:1 2 zone=a rack=r1", "host:1", 2),
        ] {
            let entry = Entry::parse(value.as_bytes()).expect(value);
            assert_eq!((entry.addr.as_str(), entry.weight), (addr, weight));
            assert_eq!(Entry::parse(entry.format().as_bytes()), Ok(entry));
        }
        let entry = Entry::parse(b"host:1 2 zone=a rack=r1").unwrap();
        assert_eq!(
            entry.metadata,
            [("zone".into(), "a".into()), ("rack".into(), "r1".into())]
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for value in [
            &b""[..],
            b"   ",
            b"host:1 x",
            b"host:1 -1",
            b"a b c",
            b"a 1 =x",
            b"a 1 2",
            b"\xff:1",
        ] {
            assert!(Entry::parse(value).is_err(), "{value:?}");
        }
    }

    #[test]
    fn metadata_replaces_and_reads_back() {
        let mut entry = Entry::new("host:1");
        entry.set_metadata("test", "zone", "a");
        entry.set_metadata("test", "zone", "b");
        assert_eq!(entry.format(), "host:1 1 zone=b");
        assert!(Entry::new("a b").bad_addr().is_some());
        assert_eq!(Entry::new("a:1").bad_addr(), None);
    }
}
