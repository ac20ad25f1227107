//! A DNS server on `127.0.0.1:0` (UDP) for resolver tests: answers `A` queries for the names
//! it was given, stays silent for the names it was told to ignore (a server that never
//! answers), and answers everything else `NXDOMAIN`. It records every query it received.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// The test DNS server. Stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
    task: JoinHandle<()>,
}

impl DnsServer {
    /// `answers` maps names (lower case, no trailing dot) to their `A` address; names that
    /// start with one of `silent_prefixes` are never answered.
    #[expect(
        clippy::disallowed_methods,
        reason = "a test server's own socket, not proxyd's egress"
    )]
    pub async fn start(
        answers: &[(&str, Ipv4Addr)],
        silent_prefixes: &[&str],
    ) -> anyhow::Result<DnsServer> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.context("bind dns")?;
        let addr = socket.local_addr().context("dns address")?;
        let answers: HashMap<String, Ipv4Addr> =
            answers.iter().map(|(n, ip)| ((*n).to_owned(), *ip)).collect();
        let silent: Vec<String> = silent_prefixes.iter().map(|p| (*p).to_owned()).collect();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let Some(question) = query.queries.first().cloned() else { continue };
                let name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
                lock(&seen).push((name.clone(), question.query_type()));
                if silent.iter().any(|p| name.starts_with(p.as_str())) {
                    continue;
                }
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.message_type = MessageType::Response;
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.add_query(question.clone());
                match answers.get(&name) {
                    Some(ip) => {
                        if question.query_type() == RecordType::A {
                            let record =
                                Record::from_rdata(question.name().clone(), 60, RData::A(A(*ip)));
                            reply.add_answer(record);
                        }
                    }
                    None => reply.metadata.response_code = ResponseCode::NXDomain,
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Ok(DnsServer { addr, queries, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every query received so far: name and type.
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        lock(&self.queries).clone()
    }

    /// How many distinct names were asked for whose name starts with `prefix`.
    pub fn distinct_names(&self, prefix: &str) -> usize {
        let mut names: Vec<String> =
            self.queries().into_iter().map(|(n, _)| n).filter(|n| n.starts_with(prefix)).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
