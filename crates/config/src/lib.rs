//! proxyd's configuration: Codex's `config.toml` format, read from every source, merged key by
//! key, validated all at once, and turned into the inputs of the policy (SPEC §2).
//!
//! This crate owns:
//! - [`Sources`]: which files and `-c` overrides make up one load, and their precedence;
//! - the `[network]` keys, their defaults and their checks (`keys.rs`, `listen.rs`);
//! - Codex's own network tables (`[features.network_proxy]`, the selected
//!   `[permissions.NAME.network]`) and the warnings for those it does not read (`tables.rs`);
//! - [`Config`]: the validated result, with listener addresses clamped to loopback unless a
//!   `dangerously_*` flag allows otherwise, and the compiled [`proxyd_policy::Policy`];
//! - [`ConfigErrors`]: every problem of one load, each naming its file and line;
//! - provenance: where each effective value came from ([`Origin`], [`Config::render`]).
//!
//! It must not bind sockets, resolve names, print, log or exit: warnings and errors are
//! returned as data and the caller decides what to do with them. It reads files only while
//! loading (config files, `admin_token_file`, and the secrets of `[[network.rules]]` and
//! `[[network.credentials]]`, which it keeps out of `Debug` and `/config`).

mod config;
mod error;
mod keys;
mod listen;
mod provenance;
mod rules;
mod sources;
mod tables;

pub use config::{AdminToken, Config};
pub use error::{ConfigError, ConfigErrors, ErrorKind, Location};
pub use provenance::{Origin, Setting, Value};
pub use rules::{
    CredentialSpec, HeaderSpec, InjectSpec, QuerySpec, RuleAction, RuleSpec, Secret, SecretSource,
};
pub use sources::{SYSTEM_CONFIG, Sources};
pub use tables::{Profile, ProfileChoice, SourceTables, TableUse};
