//! [`DnsServer`]: a tiny authoritative DNS server on a loopback port (UDP, and TCP on the
//! same port), whose records, TTLs and behaviour the test sets and changes while clients
//! resolve against it.
//!
//! It answers A, AAAA and SRV questions from its records (with the targets' addresses in
//! the additional section of an SRV answer, as Kubernetes' and Consul's DNS do, unless told
//! not to), and `NXDOMAIN` for a name it has nothing for. It can also be made to fail
//! (`SERVFAIL`) or to stop answering (timeouts).
//!
//! For answers like Consul's it can also rotate the SRV records of each answer (Consul
//! shuffles them), add a TXT record of node metadata beside each target's addresses, and
//! cut UDP answers to a few records, with or without the truncation flag (Consul's
//! `dns_config.enable_truncate`); over TCP it always answers in full.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
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

/// One SRV record: a target name, its port, weight and priority.
#[derive(Debug, Clone)]
pub struct SrvTarget {
    pub target: String,
    pub port: u16,
    pub weight: u16,
    pub priority: u16,
}

/// How many SRV records a UDP answer may carry, and whether a cut answer says so.
#[derive(Debug, Clone, Copy)]
struct UdpLimit {
    records: usize,
    truncation_flag: bool,
}

struct Zone {
    /// Addresses per name (lowercase, fully qualified) and their TTL.
    hosts: BTreeMap<String, (Vec<IpAddr>, u32)>,
    /// SRV records per name and their TTL.
    services: BTreeMap<String, (Vec<SrvTarget>, u32)>,
    mode: Mode,
    glue: bool,
    /// A TXT record of node metadata beside each target's addresses, as Consul adds.
    glue_txt: bool,
    /// Rotate each SRV answer by one record more than the one before.
    rotate: bool,
    udp_limit: Option<UdpLimit>,
    /// SRV answers given so far (what the rotation turns on).
    srv_answers: usize,
    /// Questions received, over UDP and over TCP.
    udp_questions: usize,
    tcp_questions: usize,
}

/// A running DNS server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
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
    /// Starts a server with no records on a port of 127.0.0.1 free for both UDP and TCP.
    pub async fn start() -> DnsServer {
        let (socket, listener) = bind().await;
        let addr = socket.local_addr().expect("local_addr");
        let zone = Arc::new(Mutex::new(Zone {
            hosts: BTreeMap::new(),
            services: BTreeMap::new(),
            mode: Mode::Answer,
            glue: true,
            glue_txt: false,
            rotate: false,
            udp_limit: None,
            srv_answers: 0,
            udp_questions: 0,
            tcp_questions: 0,
        }));
        let udp = tokio::spawn(serve_udp(socket, Arc::clone(&zone)));
        let tcp = tokio::spawn(serve_tcp(listener, Arc::clone(&zone)));
        DnsServer {
            addr,
            zone,
            udp,
            tcp,
        }
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

    /// Whether each target's addresses in an SRV answer come with a TXT record of node
    /// metadata (`consul-network-segment=`), as Consul sends them; off by default.
    pub fn set_glue_txt(&self, txt: bool) {
        self.zone().glue_txt = txt;
    }

    /// Whether each SRV answer starts one record further than the one before (off by
    /// default): a different order every time, as Consul's shuffled answers have.
    pub fn set_rotate(&self, rotate: bool) {
        self.zone().rotate = rotate;
    }

    /// Cuts SRV answers over UDP to their first `records` records (and those targets'
    /// additional records), setting the truncation flag if `truncation_flag`: Consul does
    /// this with an answer too long for UDP, and sets the flag only with
    /// `dns_config.enable_truncate`. Answers over TCP stay whole.
    pub fn set_udp_limit(&self, records: usize, truncation_flag: bool) {
        self.zone().udp_limit = Some(UdpLimit {
            records,
            truncation_flag,
        });
    }

    /// Questions received over UDP so far.
    pub fn udp_questions(&self) -> usize {
        self.zone().udp_questions
    }

    /// Questions received over TCP so far.
    pub fn tcp_questions(&self) -> usize {
        self.zone().tcp_questions
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.udp.abort();
        self.tcp.abort();
    }
}

/// A UDP socket and a TCP listener on one port of 127.0.0.1.
async fn bind() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = socket.local_addr().expect("local_addr");
        // The port is free for UDP; TCP may have it taken: then try another.
        if let Ok(listener) = TcpListener::bind(addr).await {
            return (socket, listener);
        }
    }
    panic!("no port of 127.0.0.1 free for both UDP and TCP");
}

/// The response to one question (`None`: no answer at all), counting it.
fn respond(zone: &Mutex<Zone>, request: &Message, over_udp: bool) -> Option<Message> {
    let mut zone = zone.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if over_udp {
        zone.udp_questions += 1;
    } else {
        zone.tcp_questions += 1;
    }
    match zone.mode {
        Mode::Silent => None,
        Mode::ServFail => Some(reply(request, ResponseCode::ServFail)),
        Mode::Answer => Some(answer(&mut zone, request, over_udp)),
    }
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        // Not a DNS message: nothing to answer.
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let response = respond(&zone, &request, true);
        if let Some(bytes) = response.and_then(|message| message.to_vec().ok()) {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_connection(stream, Arc::clone(&zone)));
    }
}

/// Answers the questions of one TCP connection (each message after its two-byte length,
/// RFC 1035 4.2.2) until the client closes it.
async fn serve_tcp_connection(mut stream: TcpStream, zone: Arc<Mutex<Zone>>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Ok(request) = Message::from_vec(&buf) else {
            return;
        };
        let Some(bytes) = respond(&zone, &request, false).and_then(|m| m.to_vec().ok()) else {
            continue;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&bytes).await.is_err() {
            return;
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

fn answer(zone: &mut Zone, request: &Message, over_udp: bool) -> Message {
    let Some(query) = request.queries.first() else {
        return reply(request, ResponseCode::FormErr);
    };
    let asked = query.name().to_ascii();
    let asked = key(&asked);
    // How far this SRV answer is rotated: by one more than the one before.
    let turn = zone.srv_answers;
    if query.query_type() == RecordType::SRV {
        zone.srv_answers += 1;
    }
    let zone = &*zone;
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
                let mut targets = targets.clone();
                if zone.rotate && !targets.is_empty() {
                    let by = turn % targets.len();
                    targets.rotate_left(by);
                }
                if let Some(limit) = zone.udp_limit.filter(|_| over_udp) {
                    if targets.len() > limit.records {
                        targets.truncate(limit.records);
                        response.metadata.truncation = limit.truncation_flag;
                    }
                }
                for target in &targets {
                    let data = SRV::new(
                        target.priority,
                        target.weight,
                        target.port,
                        name(&key(&target.target)),
                    );
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
                        if zone.glue_txt {
                            let meta = TXT::new(vec!["consul-network-segment=".to_string()]);
                            response.additionals.push(Record::from_rdata(
                                name(&key(&target.target)),
                                *ttl,
                                RData::TXT(meta),
                            ));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    response
}
