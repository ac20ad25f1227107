//! The DNS listener: one UDP socket and one TCP listener on the same address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use proxyd_lifecycle::{Connections, accept_loop};
use proxyd_net::{Attempt, Engine, Refusal};
use proxyd_policy::{Host, Protocol, Reason, Target};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// The TTL of every answer, in seconds.
pub const ANSWER_TTL: u32 = 30;
/// Queries answered at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// Queries one client IP may have in flight at once, so one client cannot take them all.
pub const CLIENT_IN_FLIGHT: usize = 64;
/// The classic UDP answer limit (RFC 1035 §4.2.1); EDNS is not offered.
const MAX_UDP_ANSWER: usize = 512;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bounds reading one TCP query and writing its answer.
    pub tcp_timeout: Duration,
    pub max_connections: usize,
}

/// The DNS service.
#[derive(Clone)]
pub struct DnsServer {
    engine: Engine,
    settings: Settings,
    in_flight: Arc<Semaphore>,
    per_client: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
    connections: Connections,
}

/// One query's slot: global and per client; released on drop.
struct Slot {
    _global: tokio::sync::OwnedSemaphorePermit,
    per_client: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.per_client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl DnsServer {
    pub fn new(engine: Engine, settings: Settings) -> DnsServer {
        DnsServer {
            engine,
            settings,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            per_client: Arc::default(),
            connections: Connections::new(),
        }
    }

    /// Open TCP connections (for metrics).
    pub fn connections(&self) -> Connections {
        self.connections.clone()
    }

    /// Serves both sockets until the lifecycle stops.
    pub async fn serve(&self, udp: UdpSocket, tcp: TcpListener) {
        let lifecycle = self.engine.lifecycle().clone();
        let udp = Arc::new(udp);
        let server = self.clone();
        let udp_loop = async {
            let mut buf = vec![0u8; 4096];
            let stopping = lifecycle.stopping();
            tokio::pin!(stopping);
            loop {
                let (n, from) = tokio::select! {
                    () = &mut stopping => return,
                    received = udp.recv_from(&mut buf) => match received {
                        Ok(received) => received,
                        Err(error) => {
                            tracing::debug!(%error, "dns receive failed");
                            continue;
                        }
                    },
                };
                let query = buf[..n].to_vec();
                let (server, udp) = (server.clone(), udp.clone());
                let tracked = lifecycle.track();
                tokio::spawn(async move {
                    let _tracked = tracked;
                    if let Some(answer) = server.answer(&query, from, true).await {
                        reply(&udp, &answer, from).await;
                    }
                });
            }
        };
        let server = self.clone();
        let handler = move |stream: TcpStream, peer: SocketAddr| {
            let server = server.clone();
            async move { server.tcp_connection(stream, peer).await }
        };
        let tcp_loop = accept_loop(
            tcp,
            self.settings.max_connections,
            &lifecycle,
            self.connections.clone(),
            handler,
        );
        tokio::join!(udp_loop, tcp_loop);
    }

    /// RFC 1035 §4.2.2: two-byte length, message; several queries may follow on one
    /// connection.
    async fn tcp_connection(&self, mut stream: TcpStream, peer: SocketAddr) {
        let limit = self.settings.tcp_timeout;
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(limit, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if !matches!(
                tokio::time::timeout(limit, stream.read_exact(&mut query)).await,
                Ok(Ok(_))
            ) {
                return;
            }
            let Some(answer) = self.answer(&query, peer, false).await else { return };
            let Ok(len) = u16::try_from(answer.len()) else { return };
            let write = async {
                stream.write_all(&len.to_be_bytes()).await?;
                stream.write_all(&answer).await
            };
            if !matches!(tokio::time::timeout(limit, write).await, Ok(Ok(()))) {
                return;
            }
        }
    }

    /// The answer to one message; `None` when nothing can be answered (not even an id).
    async fn answer(&self, bytes: &[u8], client: SocketAddr, udp: bool) -> Option<Vec<u8>> {
        let query = match Message::from_vec(bytes) {
            Ok(query) => query,
            Err(_) => return formerr(bytes),
        };
        if query.metadata.message_type != MessageType::Query {
            return None;
        }
        let respond = |code: ResponseCode, answers: Vec<Record>| {
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            reply.metadata.response_code = code;
            for question in query.queries.iter().take(1) {
                reply.add_query(question.clone());
            }
            for answer in answers {
                reply.add_answer(answer);
            }
            encode(reply, udp)
        };
        if query.metadata.op_code != OpCode::Query || query.queries.len() != 1 {
            return respond(ResponseCode::FormErr, Vec::new());
        }
        let question = &query.queries[0];
        let name = question.name().to_ascii();
        let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
        let Ok(host) = Host::parse(&name) else {
            return respond(ResponseCode::Refused, Vec::new());
        };
        // Port 0: the name on any port (see the crate docs).
        let target = Target { host, port: 0 };
        let attempt = Attempt::new(Protocol::Dns, target, Some(client));
        let kind = question.query_type();
        if question.query_class() != DNSClass::IN
            || !matches!(kind, RecordType::A | RecordType::AAAA)
        {
            let _ = self.engine.refuse(attempt, Reason::UnsupportedQuery);
            return respond(ResponseCode::Refused, Vec::new());
        }
        let Some(_slot) = self.slot(client.ip()) else {
            let _ = self.engine.refuse(attempt, Reason::Decider("dns_busy".into()));
            return respond(ResponseCode::Refused, Vec::new());
        };
        match self.resolve(attempt).await {
            Ok(ips) => {
                let answers = ips
                    .into_iter()
                    .filter_map(|ip| match (ip, kind) {
                        (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(v4))),
                        (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(v6))),
                        _ => None,
                    })
                    .map(|data| Record::from_rdata(question.name().clone(), ANSWER_TTL, data))
                    .collect();
                respond(ResponseCode::NoError, answers)
            }
            Err(Refusal::Blocked { .. }) => respond(ResponseCode::Refused, Vec::new()),
            Err(Refusal::Failed { .. }) => respond(ResponseCode::ServFail, Vec::new()),
        }
    }

    /// A slot for one query from `ip`, unless the service or that client is at its bound.
    fn slot(&self, ip: IpAddr) -> Option<Slot> {
        let ip = ip.to_canonical();
        let mut counts = self.per_client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(ip).or_insert(0);
        if *count >= CLIENT_IN_FLIGHT {
            return None;
        }
        let global = self.in_flight.clone().try_acquire_owned().ok()?;
        *count += 1;
        Some(Slot { _global: global, per_client: self.per_client.clone(), ip })
    }

    /// The whole admission for a name: decide, resolve, check every answer (one event).
    async fn resolve(&self, attempt: Attempt) -> Result<Vec<IpAddr>, Refusal> {
        let mut admission = self.engine.admit(attempt).await?;
        let checked = admission.resolve().await?;
        let ips = checked.addrs().iter().map(SocketAddr::ip).collect();
        match admission.admit() {
            Ok(_lease) => Ok(ips),
            Err(refusal) => Err(refusal),
        }
    }
}

/// FORMERR for a message that does not parse, echoing its id when it has one.
fn formerr(bytes: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
    let mut reply = Message::response(id, OpCode::Query);
    reply.metadata.response_code = ResponseCode::FormErr;
    reply.to_vec().ok()
}

/// Encodes `reply`; over UDP, one that does not fit is sent truncated, without answers.
fn encode(reply: Message, udp: bool) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    if !udp || bytes.len() <= MAX_UDP_ANSWER {
        return Some(bytes);
    }
    let mut truncated = Message::response(reply.metadata.id, reply.metadata.op_code);
    truncated.metadata = reply.metadata;
    truncated.metadata.truncation = true;
    for question in &reply.queries {
        truncated.add_query(Query::clone(question));
    }
    truncated.to_vec().ok()
}

#[expect(clippy::disallowed_methods, reason = "the DNS service answers the client that asked")]
async fn reply(udp: &UdpSocket, answer: &[u8], to: SocketAddr) {
    if let Err(error) = udp.send_to(answer, to).await {
        tracing::debug!(%error, %to, "dns reply failed");
    }
}
