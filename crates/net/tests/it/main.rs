//! Integration tests for `proxyd-net`: real sockets on loopback, every wait bounded.
//!
//! Nothing here dials outside `127.0.0.0/8` or `::1`.

mod accept;
mod dial;
mod dns;
mod lease;
mod review_relay;
mod splice;
mod support;
