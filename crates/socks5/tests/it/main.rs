//! The SOCKS5 listener on `127.0.0.1:0`, against real upstreams from `proxyd-test-support`,
//! driven by a hand-written RFC 1928 client (exact bytes) and by curl.

mod client;
mod connect;
mod curl;
mod handshake;
mod lifecycle;
mod support;
mod udp;
