//! The blocked-request log (SPEC §8.1): a bounded ring with monotonically increasing ids and a
//! running total. Recording takes a short uncontended lock and never waits on I/O, so it never
//! delays the request path.

use std::collections::VecDeque;
use std::sync::Mutex;

/// One blocked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedEntry {
    pub id: u64,
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub host: String,
    pub port: u16,
    /// `http`, `https`, `http-connect`, `socks5`, `socks5-udp`, `unix-socket`.
    pub protocol: String,
    pub method: Option<String>,
    pub reason: String,
    pub client: Option<String>,
    pub mode: String,
    /// The request rule that denied it (`rule_denied`).
    pub rule: Option<String>,
    /// What a person needs to fix it: what a name resolved to, and the entry to add.
    pub detail: Option<String>,
}

impl BlockedEntry {
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "id": self.id,
            "timestamp": self.timestamp,
            "host": self.host,
            "port": self.port,
            "protocol": self.protocol,
            "method": self.method,
            "reason": self.reason,
            "client": self.client,
            "mode": self.mode,
        });
        if let Some(rule) = &self.rule {
            json["rule"] = rule.clone().into();
        }
        if let Some(detail) = &self.detail {
            json["detail"] = detail.clone().into();
        }
        json
    }
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<BlockedEntry>,
    next_id: u64,
}

/// The ring of the last `capacity` blocked requests.
#[derive(Debug)]
pub struct BlockedLog {
    capacity: usize,
    ring: Mutex<Ring>,
}

impl BlockedLog {
    pub fn new(capacity: usize) -> BlockedLog {
        BlockedLog {
            capacity: capacity.max(1),
            ring: Mutex::new(Ring { entries: VecDeque::new(), next_id: 1 }),
        }
    }

    /// Appends an entry, assigning its id (the `id` given is ignored); returns the id.
    pub fn push(&self, mut entry: BlockedEntry) -> u64 {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        entry.id = ring.next_id;
        ring.next_id += 1;
        if ring.entries.len() == self.capacity {
            ring.entries.pop_front();
        }
        ring.entries.push_back(entry);
        ring.next_id - 1
    }

    /// Entries newer than `since` (all when `None`), oldest first, and the total ever recorded.
    pub fn since(&self, since: Option<u64>) -> (Vec<BlockedEntry>, u64) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let entries =
            ring.entries.iter().filter(|e| since.is_none_or(|s| e.id > s)).cloned().collect();
        (entries, ring.next_id - 1)
    }

    /// Every entry held, oldest first.
    pub fn entries(&self) -> Vec<BlockedEntry> {
        self.since(None).0
    }

    /// The number of blocks ever recorded.
    pub fn total(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).next_id - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str) -> BlockedEntry {
        BlockedEntry {
            id: 0,
            timestamp: "2026-01-01T00:00:00Z".into(),
            host: host.into(),
            port: 80,
            protocol: "http".into(),
            method: Some("GET".into()),
            reason: "not_allowed".into(),
            client: None,
            mode: "full".into(),
            rule: None,
            detail: None,
        }
    }

    #[test]
    fn ring_keeps_the_newest_with_increasing_ids() {
        let log = BlockedLog::new(3);
        for host in ["a", "b", "c", "d", "e"] {
            log.push(entry(host));
        }
        let (entries, total) = log.since(None);
        assert_eq!(total, 5);
        let hosts: Vec<_> = entries.iter().map(|e| (e.id, e.host.as_str())).collect();
        assert_eq!(hosts, [(3, "c"), (4, "d"), (5, "e")]);
        assert_eq!(log.since(Some(4)).0.len(), 1);
        assert_eq!(log.since(Some(5)).0.len(), 0);
        assert_eq!(log.since(Some(0)).0.len(), 3);
        assert_eq!(log.entries().len(), 3, "reading never removes entries");
    }
}
