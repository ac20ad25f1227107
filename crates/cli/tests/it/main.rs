//! Integration tests for the built `proxyd` binary, driven from outside: a temporary config,
//! the binary as a child process (its address read from its start-up log), and real `curl`.
//!
//! Nothing here dials outside `127.0.0.0/8`; every port is chosen by the kernel and every wait
//! is bounded, so a hang fails in seconds.

mod admin_api;
mod admin_support;
mod admission;
mod ask;
mod blocks;
mod codex_config;
mod curl;
mod dns;
mod exec;
mod faults;
mod faults_admin;
mod faults_change;
mod faults_limits;
mod faults_origin;
mod library;
mod metrics;
mod mitm;
mod process;
mod regressions;
mod reload;
mod review;
mod rules;
mod support;
mod ux;
