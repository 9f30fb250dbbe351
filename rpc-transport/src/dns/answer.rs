//! One DNS resolution: the endpoints a name has now, and how long that answer holds.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData, Record};
use hickory_resolver::TokioResolver;

/// What a [`Dns`](super::Dns) source looks up.
#[derive(Debug, Clone)]
pub(super) enum Query {
    /// A and AAAA records of `name`, each address with `port`.
    Host { name: String, port: Option<u16> },
    /// SRV records of `name`: each target's addresses with the record's port and weight.
    Srv { name: String },
}

impl Query {
    pub(super) fn name(&self) -> &str {
        match self {
            Query::Host { name, .. } | Query::Srv { name } => name,
        }
    }
}

/// One endpoint found in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    pub(super) addr: SocketAddr,
    pub(super) weight: u32,
    pub(super) metadata: Vec<(&'static str, String)>,
}

/// A resolution that found at least one address.
#[derive(Debug)]
pub(super) struct Answer {
    /// By endpoint key, `"ip:port"`.
    pub(super) endpoints: BTreeMap<String, Found>,
    /// How long the answer holds: its shortest TTL.
    pub(super) ttl: Duration,
}

/// Why a resolution found nothing to use.
#[derive(Debug)]
pub(super) enum Failure {
    /// The lookup itself failed: no answer, a server error, a timeout.
    Lookup(NetError),
    /// The name exists in no usable form: no records, or none that resolve.
    Empty,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Lookup(err) => write!(f, "{err}"),
            Failure::Empty => f.write_str("the answer has no addresses"),
        }
    }
}

impl From<NetError> for Failure {
    fn from(err: NetError) -> Failure {
        if err.is_no_records_found() {
            Failure::Empty
        } else {
            Failure::Lookup(err)
        }
    }
}

/// Resolves `query` once.
pub(super) async fn resolve(resolver: &TokioResolver, query: &Query) -> Result<Answer, Failure> {
    let mut answer = Answer {
        endpoints: BTreeMap::new(),
        ttl: Duration::MAX,
    };
    match query {
        Query::Host { name, port } => {
            let port = port.unwrap_or_default();
            let lookup = resolver.lookup_ip(name.as_str()).await?;
            answer.expires(lookup.valid_until());
            for ip in lookup.iter() {
                answer.add(SocketAddr::new(ip, port), 1, Vec::new());
            }
        }
        Query::Srv { name } => {
            let lookup = resolver.srv_lookup(name.as_str()).await?;
            answer.expires(lookup.valid_until());
            for record in lookup.answers() {
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                // A target of "." says the service is not available there (RFC 2782).
                if srv.target.is_root() {
                    continue;
                }
                let ips = match glue(lookup.additionals(), &srv.target) {
                    Some((ips, ttl)) => {
                        answer.ttl = answer.ttl.min(ttl);
                        ips
                    }
                    None => match resolver.lookup_ip(srv.target.clone()).await {
                        Ok(ips) => {
                            answer.expires(ips.valid_until());
                            distinct(ips.iter())
                        }
                        // A target that no longer exists is no endpoint; the others are.
                        Err(err) if err.is_no_records_found() => continue,
                        Err(err) => return Err(Failure::Lookup(err)),
                    },
                };
                let metadata = vec![
                    ("dns.target", srv.target.to_string()),
                    ("dns.priority", srv.priority.to_string()),
                ];
                for ip in ips {
                    answer.add(
                        SocketAddr::new(ip, srv.port),
                        u32::from(srv.weight),
                        metadata.clone(),
                    );
                }
            }
        }
    }
    if answer.endpoints.is_empty() {
        return Err(Failure::Empty);
    }
    Ok(answer)
}

impl Answer {
    fn expires(&mut self, valid_until: Instant) {
        self.ttl = self
            .ttl
            .min(valid_until.saturating_duration_since(Instant::now()));
    }

    /// Adds an endpoint; one reached through several records gets their weights summed.
    fn add(&mut self, addr: SocketAddr, weight: u32, metadata: Vec<(&'static str, String)>) {
        self.endpoints
            .entry(addr.to_string())
            .and_modify(|found| found.weight = found.weight.saturating_add(weight))
            .or_insert(Found {
                addr,
                weight,
                metadata,
            });
    }
}

/// The addresses of `target` that came with the SRV answer (its additional section), each
/// once, and their shortest TTL; `None` if it brought none.
///
/// An address can come more than once: Consul adds a node's address to the additional
/// section for each instance of the service on that node, so two instances (two SRV
/// records, two ports) bring it twice. Counting it twice would double the weight of both.
fn glue(additionals: &[Record], target: &Name) -> Option<(Vec<IpAddr>, Duration)> {
    let mut ips = Vec::new();
    let mut ttl = u32::MAX;
    for record in additionals.iter().filter(|r| r.name == *target) {
        let ip = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        ips.push(ip);
        ttl = ttl.min(record.ttl);
    }
    (!ips.is_empty()).then(|| (distinct(ips), Duration::from_secs(u64::from(ttl))))
}

/// `ips` without repeats, in their first order.
fn distinct(ips: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut seen = Vec::new();
    for ip in ips {
        if !seen.contains(&ip) {
            seen.push(ip);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_resolver::proto::rr::rdata::{A, TXT};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    #[test]
    fn glue_takes_each_address_of_the_target_once_with_the_shortest_ttl() {
        // Consul's additional section for two instances on node web-1 and one on web-2:
        // web-1's address twice, each node's metadata as TXT.
        let web1 = name("web-1.node.dc1.consul.");
        let web2 = name("web-2.node.dc1.consul.");
        let a = |n: &Name, last: u8, ttl: u32| {
            Record::from_rdata(n.clone(), ttl, RData::A(A(Ipv4Addr::new(10, 0, 0, last))))
        };
        let txt = |n: &Name| {
            let meta = TXT::new(vec!["consul-network-segment=".to_string()]);
            Record::from_rdata(n.clone(), 0, RData::TXT(meta))
        };
        let additionals = [
            a(&web1, 1, 0),
            txt(&web1),
            a(&web2, 2, 0),
            txt(&web2),
            a(&web1, 1, 0),
            txt(&web1),
        ];
        let (ips, ttl) = glue(&additionals, &web1).expect("web-1 has glue");
        assert_eq!(ips, [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))]);
        assert_eq!(ttl, Duration::ZERO);
        assert!(glue(&additionals, &name("web-3.node.dc1.consul.")).is_none());

        let mixed = [a(&web2, 2, 30), a(&web2, 3, 10), a(&web2, 2, 30)];
        let (ips, ttl) = glue(&mixed, &web2).expect("web-2 has glue");
        assert_eq!(
            ips,
            [
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))
            ]
        );
        assert_eq!(ttl, Duration::from_secs(10));
    }
}
