//! Asking a person instead of failing (`on_miss = "ask"`): an allowlist miss is held while the
//! question waits for an answer from the admin API (`GET /pending`, `POST /pending/ID`) or from
//! `proxyd exec --ask`'s terminal prompt.
//!
//! - Only allowlist misses are asked (the only thing [`proxyd_policy::Verdict::Consult`]
//!   yields): denylist and local blocks never are.
//! - Identical questions (same host and port) are asked once; every request waiting on it gets
//!   the one answer.
//! - At most `max_pending` questions wait at once; past that a miss is denied at once
//!   (`ask_queue_full`), so a flood of new names cannot pile up held requests.
//! - An unanswered question is denied after `ask_timeout` (`ask_timeout`).
//! - "Allow always" holds for the rest of the run (this process), for that host and port.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use proxyd_policy::Protocol;
use tokio::sync::{broadcast, watch};

/// A person's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// These requests (every one waiting on the question).
    AllowOnce,
    /// These and every later request to the host and port, until proxyd stops.
    AllowAlways,
    Deny,
}

impl Answer {
    pub fn parse(text: &str) -> Option<Answer> {
        match text {
            "allow-once" => Some(Answer::AllowOnce),
            "allow-always" => Some(Answer::AllowAlways),
            "deny" => Some(Answer::Deny),
            _ => None,
        }
    }
}

/// A question waiting for an answer.
#[derive(Debug, Clone)]
pub struct Question {
    pub id: u64,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub method: Option<String>,
    pub client: Option<SocketAddr>,
    pub asked_at: Instant,
    /// Requests waiting on it.
    pub waiting: usize,
}

/// Why a held request was not allowed; the code is its deny reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unanswered {
    Denied,
    TimedOut,
    QueueFull,
}

impl Unanswered {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Unanswered::Denied => "ask_denied",
            Unanswered::TimedOut => "ask_timeout",
            Unanswered::QueueFull => "ask_queue_full",
        }
    }
}

/// The pending questions of one proxy.
pub struct Asker {
    state: Mutex<State>,
    timeout: Duration,
    max_pending: usize,
    asked: broadcast::Sender<Question>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    pending: HashMap<(String, u16), Pending>,
    always: HashSet<(String, u16)>,
}

struct Pending {
    question: Question,
    answer: watch::Sender<Option<Answer>>,
}

impl Asker {
    /// `timeout` bounds each question; at most `max_pending` wait at once.
    pub fn new(timeout: Duration, max_pending: usize) -> Asker {
        Asker {
            state: Mutex::new(State { next_id: 1, ..State::default() }),
            timeout,
            max_pending: max_pending.max(1),
            asked: broadcast::channel(64).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The questions waiting now, oldest first.
    pub fn pending(&self) -> Vec<Question> {
        let mut questions: Vec<Question> =
            self.state().pending.values().map(|p| p.question.clone()).collect();
        questions.sort_by_key(|q| q.id);
        questions
    }

    /// Answers question `id`; `false` when there is no such question (answered, timed out).
    pub fn answer(&self, id: u64, answer: Answer) -> bool {
        let mut state = self.state();
        let Some(key) =
            state.pending.iter().find(|(_, p)| p.question.id == id).map(|(k, _)| k.clone())
        else {
            return false;
        };
        if answer == Answer::AllowAlways {
            state.always.insert(key.clone());
        }
        if let Some(pending) = state.pending.remove(&key) {
            pending.answer.send_replace(Some(answer));
        }
        true
    }

    /// New questions as they are asked (for a terminal prompt).
    pub fn subscribe(&self) -> broadcast::Receiver<Question> {
        self.asked.subscribe()
    }

    /// Holds a request until its question is answered, or denies it.
    pub(crate) async fn ask(
        &self,
        protocol: Protocol,
        host: &str,
        port: u16,
        method: Option<&str>,
        client: Option<SocketAddr>,
    ) -> Result<(), Unanswered> {
        let key = (host.to_owned(), port);
        let mut answer = {
            let mut state = self.state();
            if state.always.contains(&key) {
                return Ok(());
            }
            let full = state.pending.len() >= self.max_pending;
            match state.pending.get_mut(&key) {
                Some(pending) => {
                    pending.question.waiting += 1;
                    pending.answer.subscribe()
                }
                None if full => return Err(Unanswered::QueueFull),
                None => {
                    let id = state.next_id;
                    state.next_id += 1;
                    let question = Question {
                        id,
                        protocol,
                        host: host.to_owned(),
                        port,
                        method: method.map(str::to_owned),
                        client,
                        asked_at: Instant::now(),
                        waiting: 1,
                    };
                    let (tx, rx) = watch::channel(None);
                    state
                        .pending
                        .insert(key.clone(), Pending { question: question.clone(), answer: tx });
                    // Nobody listening (no terminal prompt) is fine: the admin API lists it.
                    let _ = self.asked.send(question);
                    rx
                }
            }
        };
        let waited = tokio::time::timeout(self.timeout, answer.wait_for(Option::is_some)).await;
        let result = match waited {
            Ok(Ok(answer)) => match *answer {
                Some(Answer::AllowOnce | Answer::AllowAlways) => Ok(()),
                _ => Err(Unanswered::Denied),
            },
            Ok(Err(_closed)) => Err(Unanswered::Denied),
            Err(_elapsed) => Err(Unanswered::TimedOut),
        };
        if result == Err(Unanswered::TimedOut) {
            // The first waiter to time out takes the question down; the others see it closed.
            self.state().pending.remove(&key);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identical_questions_are_asked_once_and_answered_together() {
        let asker = std::sync::Arc::new(Asker::new(Duration::from_secs(5), 4));
        let ask = |asker: std::sync::Arc<Asker>| async move {
            asker.ask(Protocol::Http, "a.example", 80, Some("GET"), None).await
        };
        let first = tokio::spawn(ask(asker.clone()));
        let second = tokio::spawn(ask(asker.clone()));
        while asker.pending().first().is_none_or(|q| q.waiting < 2) {
            tokio::task::yield_now().await;
        }
        assert_eq!(asker.pending().len(), 1);
        let id = asker.pending()[0].id;
        assert!(asker.answer(id, Answer::AllowAlways));
        assert_eq!(first.await.unwrap(), Ok(()));
        assert_eq!(second.await.unwrap(), Ok(()));
        assert!(!asker.answer(id, Answer::Deny), "answered questions are gone");
        // Always: no question the next time.
        assert_eq!(ask(asker.clone()).await, Ok(()));
        assert!(asker.pending().is_empty());
    }

    #[tokio::test]
    async fn questions_are_bounded_and_time_out() {
        let asker = std::sync::Arc::new(Asker::new(Duration::from_millis(100), 1));
        let held = tokio::spawn({
            let asker = asker.clone();
            async move { asker.ask(Protocol::Http, "a.example", 80, None, None).await }
        });
        while asker.pending().is_empty() {
            tokio::task::yield_now().await;
        }
        let refused = asker.ask(Protocol::Http, "b.example", 80, None, None).await;
        assert_eq!(refused, Err(Unanswered::QueueFull));
        assert_eq!(held.await.unwrap(), Err(Unanswered::TimedOut));
        assert!(asker.pending().is_empty());
    }
}
