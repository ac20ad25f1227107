//! Config errors: each names where it was found, and one load reports all of them.

use std::fmt;
use std::path::PathBuf;

/// Where an error was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A whole file (it could not be read).
    File(PathBuf),
    /// A 1-based line of a file.
    Line(PathBuf, usize),
    /// A `-c network.KEY=VALUE` override.
    Override,
    /// The merged configuration as a whole (a rule between keys whose values came from
    /// built-in defaults).
    Effective,
    /// A command-line flag other than `-c` (`--profile`).
    Flag(&'static str),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Line(path, line) => write!(f, "{}:{line}", path.display()),
            Location::Override => f.write_str("-c"),
            Location::Effective => f.write_str("config"),
            Location::Flag(flag) => f.write_str(flag),
        }
    }
}

/// One problem with the configuration, displayed as `LOCATION: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {kind}")]
pub struct ConfigError {
    pub location: Location,
    pub kind: ErrorKind,
}

/// What is wrong. Every variant is the author's fault: the caller reports it and exits 2 at
/// start-up, or keeps the running config on reload (SPEC §2.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("config file not found")]
    NotFound,
    #[error("cannot read config file: {0}")]
    Read(String),
    #[error("invalid toml: {0}")]
    Syntax(String),
    /// A `-c` argument that is not `network.KEY=VALUE`; it names the key part only, as the
    /// value may be a secret.
    #[error("invalid override {0:?}: {1}")]
    Override(String, &'static str),
    #[error("unknown key network.{key}{}", suggestion.map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownKey { key: String, suggestion: Option<&'static str> },
    /// `key` is the dotted name (`network.mode`, or `network` itself).
    #[error("{key}: expected {expected}, found {found}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    /// A value of the right type that is refused; `key` is the name inside `[network]`.
    #[error("network.{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// A value refused in one of Codex's tables, named as written there: `table` is dotted
    /// (`permissions.workspace.network`), `key` is the key inside it (`domains`).
    #[error("{table}.{key}: {reason}")]
    InTable { table: String, key: String, reason: String },
    /// `--profile NAME` names a permission profile no source defines.
    #[error("{0}")]
    Profile(String),
}

impl ConfigError {
    pub(crate) fn new(location: Location, kind: ErrorKind) -> ConfigError {
        ConfigError { location, kind }
    }

    fn line(&self) -> usize {
        match self.location {
            Location::Line(_, line) => line,
            _ => 0,
        }
    }
}

/// Every error of one load, in source order; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Sorts the errors found in one document by line, so they read top to bottom whatever order
/// the keys were visited in.
pub(crate) fn sort_by_line(errors: &mut [ConfigError]) {
    errors.sort_by_key(ConfigError::line);
}
