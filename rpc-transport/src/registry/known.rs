//! What a discovering client has been told is registered, and the changes not handed out
//! yet: the bookkeeping both registries' watches do the same way.

use std::collections::{HashMap, VecDeque};

use rpc_core::balance::Change;
use tracing::debug;

use super::Entry;
use crate::tcp::TcpConnector;

/// The servers known under a prefix or path, by key (etcd's key, ZooKeeper's node), and the
/// changes queued to tell the consumer about them.
pub(crate) struct Known {
    /// Who logs, e.g. `"etcd discovery"`.
    log: &'static str,
    /// What the consumer has been told is under the prefix or path (changes in `pending`
    /// included).
    servers: HashMap<String, Entry>,
    /// Changes not handed out yet.
    pending: VecDeque<Change<TcpConnector>>,
}

impl Known {
    /// Nothing known yet; logs as `log` (e.g. `"etcd discovery"`).
    pub(crate) fn new(log: &'static str) -> Known {
        Known {
            log,
            servers: HashMap::new(),
            pending: VecDeque::new(),
        }
    }

    /// The next change not handed out yet.
    pub(crate) fn next(&mut self) -> Option<Change<TcpConnector>> {
        self.pending.pop_front()
    }

    /// How many servers are known.
    pub(crate) fn len(&self) -> usize {
        self.servers.len()
    }

    /// Makes the known servers what was listed, queueing the changes that takes.
    pub(crate) fn sync(&mut self, now: HashMap<String, Entry>) {
        let gone: Vec<String> = (self.servers.keys())
            .filter(|key| !now.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key);
        }
        for (key, entry) in now {
            self.insert(key, entry);
        }
    }

    /// Notes the server at `key`, queueing an insert unless it is known as it is.
    pub(crate) fn insert(&mut self, key: String, entry: Entry) {
        if self.servers.get(&key) == Some(&entry) {
            return;
        }
        debug!(key = %key, addr = %entry.addr, weight = entry.weight, "{}: server in", self.log);
        self.pending
            .push_back(Change::Insert(entry.endpoint(key.clone())));
        self.servers.insert(key, entry);
    }

    /// Forgets the server at `key`, queueing a removal if it was known.
    pub(crate) fn remove(&mut self, key: &str) {
        if self.servers.remove(key).is_some() {
            debug!(key = %key, "{}: server out", self.log);
            self.pending.push_back(Change::Remove(key.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(known: &mut Known) -> Vec<String> {
        std::iter::from_fn(|| known.next())
            .map(|change| match change {
                Change::Insert(endpoint) => format!("+{}", endpoint.key()),
                Change::Remove(key) => format!("-{key}"),
            })
            .collect()
    }

    #[test]
    fn changes_are_the_difference() {
        let mut known = Known::new("test");
        known.insert("/s/a".into(), Entry::new("a:1"));
        known.insert("/s/a".into(), Entry::new("a:1"));
        known.remove("/s/b");
        assert_eq!(keys(&mut known), ["+/s/a"]);
        let now = HashMap::from([
            ("/s/a".to_string(), Entry::new("a:2")),
            ("/s/b".to_string(), Entry::new("b:1")),
        ]);
        known.sync(now.clone());
        let mut changes = keys(&mut known);
        changes.sort();
        assert_eq!(changes, ["+/s/a", "+/s/b"]);
        known.sync(now);
        assert!(keys(&mut known).is_empty());
        known.sync(HashMap::from([("/s/b".to_string(), Entry::new("b:1"))]));
        assert_eq!(keys(&mut known), ["-/s/a"]);
        assert_eq!(known.len(), 1);
    }
}
