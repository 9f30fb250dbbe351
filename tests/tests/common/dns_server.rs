//! [`DnsServer`]: a tiny authoritative DNS server on a loopback UDP port, whose records,
//! TTLs and behaviour the test sets and changes while clients resolve against it.
//!
//! It answers A, AAAA and SRV questions from its records (with the targets' addresses in
//! the additional section of an SRV answer, as Kubernetes' DNS does, unless told not to),
//! and `NXDOMAIN` for a name it has nothing for. It can also be made to fail (`SERVFAIL`)
//! or to stop answering (timeouts).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// How the server treats questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers from its records.
    Answer,
    /// Answers every question with `SERVFAIL`.
    ServFail,
    /// Reads questions and answers none: the client's lookups time out.
    Silent,
}

/// One SRV record: a target name, its port and weight (priority 0).
#[derive(Debug, Clone)]
pub struct SrvTarget {
    pub target: String,
    pub port: u16,
    pub weight: u16,
}

struct Zone {
    /// Addresses per name (lowercase, fully qualified) and their TTL.
    hosts: BTreeMap<String, (Vec<IpAddr>, u32)>,
    /// SRV records per name and their TTL.
    services: BTreeMap<String, (Vec<SrvTarget>, u32)>,
    mode: Mode,
    glue: bool,
}

/// A running DNS server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: JoinHandle<()>,
}

fn key(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("a valid test name")
}

impl DnsServer {
    /// Starts a server with no records on a free UDP port of 127.0.0.1.
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = socket.local_addr().expect("local_addr");
        let zone = Arc::new(Mutex::new(Zone {
            hosts: BTreeMap::new(),
            services: BTreeMap::new(),
            mode: Mode::Answer,
            glue: true,
        }));
        let task = tokio::spawn(serve(socket, Arc::clone(&zone)));
        DnsServer { addr, zone, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        self.zone
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the A/AAAA records of `name` (none removes the name).
    pub fn set_addresses(&self, name: &str, ips: &[IpAddr], ttl: u32) {
        let mut zone = self.zone();
        if ips.is_empty() {
            zone.hosts.remove(&key(name));
        } else {
            zone.hosts.insert(key(name), (ips.to_vec(), ttl));
        }
    }

    /// Sets the SRV records of `name` (none removes the name).
    pub fn set_srv(&self, name: &str, targets: &[SrvTarget], ttl: u32) {
        let mut zone = self.zone();
        if targets.is_empty() {
            zone.services.remove(&key(name));
        } else {
            zone.services.insert(key(name), (targets.to_vec(), ttl));
        }
    }

    /// Whether SRV answers carry their targets' addresses (the default) or leave the
    /// client to look them up.
    pub fn set_glue(&self, glue: bool) {
        self.zone().glue = glue;
    }

    pub fn set_mode(&self, mode: Mode) {
        self.zone().mode = mode;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        // Not a DNS message: nothing to answer.
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let response = {
            let zone = zone.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match zone.mode {
                Mode::Silent => None,
                Mode::ServFail => Some(reply(&request, ResponseCode::ServFail)),
                Mode::Answer => Some(answer(&zone, &request)),
            }
        };
        if let Some(bytes) = response.and_then(|message| message.to_vec().ok()) {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

fn reply(request: &Message, code: ResponseCode) -> Message {
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.authoritative = true;
    response.metadata.recursion_available = true;
    response.metadata.response_code = code;
    response.queries = request.queries.clone();
    response.edns = request.edns.clone();
    response
}

fn answer(zone: &Zone, request: &Message) -> Message {
    let Some(query) = request.queries.first() else {
        return reply(request, ResponseCode::FormErr);
    };
    let asked = query.name().to_ascii();
    let asked = key(&asked);
    let known = zone.hosts.contains_key(&asked) || zone.services.contains_key(&asked);
    let mut response = reply(
        request,
        if known {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        },
    );
    let addresses = |host: &str, kind: RecordType| -> Vec<Record> {
        let Some((ips, ttl)) = zone.hosts.get(&key(host)) else {
            return Vec::new();
        };
        ips.iter()
            .filter_map(|ip| match (ip, kind) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
                _ => None,
            })
            .map(|data| Record::from_rdata(name(host), *ttl, data))
            .collect()
    };
    match query.query_type() {
        kind @ (RecordType::A | RecordType::AAAA) => {
            response.answers = addresses(&asked, kind);
        }
        RecordType::SRV => {
            if let Some((targets, ttl)) = zone.services.get(&asked) {
                for target in targets {
                    let data = SRV::new(0, target.weight, target.port, name(&key(&target.target)));
                    response
                        .answers
                        .push(Record::from_rdata(name(&asked), *ttl, RData::SRV(data)));
                    if zone.glue {
                        response
                            .additionals
                            .extend(addresses(&target.target, RecordType::A));
                        response
                            .additionals
                            .extend(addresses(&target.target, RecordType::AAAA));
                    }
                }
            }
        }
        _ => {}
    }
    response
}
