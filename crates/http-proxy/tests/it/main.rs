//! Integration tests of the HTTP proxy listener: a real `HttpProxy` on `127.0.0.1:0` against
//! real upstream servers from `proxyd-test-support`, driven by a raw client (SPEC §6, §7).
//!
//! Blocked cases point at a [`proxyd_test_support::Canary`] and assert it was never reached.

mod harness;

mod blocked;
mod connect;
mod events;
mod exchange;
mod forward;
mod lifecycle;
mod limited;
mod mitm;
mod review2;
mod review_retry;
mod rules;
mod tls;
#[cfg(unix)]
mod unix;
mod upgrade;
mod upstream;
