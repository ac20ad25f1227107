//! Where config comes from (SPEC §2.1) and how each source is read into the merged config.

use std::ffi::OsString;
use std::io::ErrorKind as IoErrorKind;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::DeValue;

use crate::config::Config;
use crate::error::{ConfigError, ErrorKind, Location};
use crate::keys;
use crate::provenance::Origin;

/// The sources of one load, lowest precedence first: built-in defaults (always), `system`,
/// `user`, each of `files` in order, then each of `overrides` in order; `profile` chooses
/// which Codex permission profile the files' `[permissions.NAME.network]` tables come from.
///
/// `system` and `user` are read when they exist and skipped silently when they do not; a
/// missing entry of `files` is an error. Build it by hand in tests and embeddings, or with
/// [`Sources::standard`] for the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    pub system: Option<PathBuf>,
    pub user: Option<PathBuf>,
    /// `--config FILE` arguments.
    pub files: Vec<PathBuf>,
    /// `-c network.KEY=VALUE` arguments, without the `-c`.
    pub overrides: Vec<String>,
    /// `--profile NAME`: the Codex permission profile whose `[permissions.NAME.network]` is
    /// read, whatever `default_permissions` says. `None`: the last `default_permissions`.
    pub profile: Option<String>,
}

/// Codex's system-wide config file.
pub const SYSTEM_CONFIG: &str = "/etc/codex/config.toml";

impl Sources {
    /// The command line's sources: `/etc/codex/config.toml`, `$CODEX_HOME/config.toml`
    /// (`CODEX_HOME` defaults to `$HOME/.codex`), then `files` and `overrides`.
    pub fn standard(files: Vec<PathBuf>, overrides: Vec<String>) -> Sources {
        Sources::from_env(files, overrides, |name| std::env::var_os(name))
    }

    /// [`Sources::standard`] with the environment supplied by `env`, so it can be tested.
    /// An empty variable counts as unset; with neither `CODEX_HOME` nor `HOME` there is no
    /// user file.
    pub fn from_env(
        files: Vec<PathBuf>,
        overrides: Vec<String>,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Sources {
        let codex_home = codex_home(env);
        Sources {
            system: Some(PathBuf::from(SYSTEM_CONFIG)),
            user: codex_home.map(|home| home.join("config.toml")),
            files,
            overrides,
            profile: None,
        }
    }
}

/// `$CODEX_HOME`, or `$HOME/.codex`; an empty variable counts as unset.
fn codex_home(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |name: &str| env(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    var("CODEX_HOME").or_else(|| var("HOME").map(|home| home.join(".codex")))
}

/// The default `ca_dir`: `$CODEX_HOME/proxy`.
pub(crate) fn default_ca_dir(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    codex_home(env).map(|home| home.join("proxy"))
}

/// The source a value is being read from, to turn spans into origins and locations.
pub(crate) enum Src<'a> {
    /// `table` is the dotted name of the Codex table being read, `None` for `[network]`.
    File {
        path: &'a Path,
        text: &'a str,
        table: Option<&'a str>,
    },
    Override,
}

impl Src<'_> {
    pub(crate) fn line(text: &str, offset: usize) -> usize {
        let offset = offset.min(text.len());
        text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
    }

    pub(crate) fn origin(&self, span: Range<usize>) -> Origin {
        match self {
            Src::File { path, text, table } => Origin::File {
                path: path.to_path_buf(),
                line: Self::line(text, span.start),
                table: table.map(str::to_owned),
            },
            Src::Override => Origin::Override,
        }
    }

    pub(crate) fn location(&self, span: Range<usize>) -> Location {
        match self {
            Src::File { path, text, .. } => {
                Location::Line(path.to_path_buf(), Self::line(text, span.start))
            }
            Src::Override => Location::Override,
        }
    }

    /// The directory relative paths in this source are relative to.
    pub(crate) fn base_dir(&self) -> Option<&Path> {
        match self {
            Src::File { path, .. } => path.parent().filter(|dir| !dir.as_os_str().is_empty()),
            Src::Override => None,
        }
    }
}

/// Reads a config file: `Ok(None)` when it does not exist and `required` is false.
pub(crate) fn read(path: &Path, required: bool) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == IoErrorKind::NotFound && !required => Ok(None),
        Err(err) => {
            let kind = match err.kind() {
                IoErrorKind::NotFound => ErrorKind::NotFound,
                _ => ErrorKind::Read(err.to_string()),
            };
            Err(ConfigError::new(Location::File(path.to_owned()), kind))
        }
    }
}

/// Applies one `-c network.KEY=VALUE` override. `VALUE` is parsed as a TOML value and, when it
/// is not one, taken as a plain string (`-c network.mode=limited`).
pub(crate) fn apply_override(config: &mut Config, arg: &str, errors: &mut Vec<ConfigError>) {
    // Errors name the key only: the value may be a secret (`network.admin_token=…`).
    let fail = |key: &str, reason| {
        ConfigError::new(Location::Override, ErrorKind::Override(key.trim().into(), reason))
    };
    let Some((key, value)) = arg.split_once('=') else {
        errors.push(fail(arg, "expected network.KEY=VALUE"));
        return;
    };
    let Some(key) = key.trim().strip_prefix("network.") else {
        let reason = match key.trim() {
            "default_permissions" => "choose the permission profile with --profile NAME",
            _ => "only keys of the [network] table can be set, as network.KEY",
        };
        errors.push(fail(key, reason));
        return;
    };
    let value = value.trim();
    let value = DeValue::parse(value)
        .unwrap_or_else(|_| Spanned::new(0..value.len(), DeValue::String(value.into())));
    keys::apply(config, &Spanned::new(0..0, key), &value, &Src::Override, errors);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| OsString::from(v))
    }

    fn check(vars: &[(&str, &str)], user: Option<&str>) {
        let sources = Sources::from_env(vec![], vec![], env(vars));
        assert_eq!(sources.system, Some(PathBuf::from(SYSTEM_CONFIG)));
        assert_eq!(sources.user, user.map(PathBuf::from), "env {vars:?}");
    }

    #[test]
    fn user_file_follows_codex_home_then_home() {
        check(&[("CODEX_HOME", "/c"), ("HOME", "/h")], Some("/c/config.toml"));
        check(&[("HOME", "/h")], Some("/h/.codex/config.toml"));
        check(&[("CODEX_HOME", ""), ("HOME", "/h")], Some("/h/.codex/config.toml"));
        check(&[("HOME", "")], None);
        check(&[], None);
    }

    #[test]
    fn default_ca_dir_is_under_codex_home() {
        let check = |vars: &[(&str, &str)], expected: Option<&str>| {
            assert_eq!(default_ca_dir(env(vars)), expected.map(PathBuf::from), "env {vars:?}");
        };
        check(&[("CODEX_HOME", "/c"), ("HOME", "/h")], Some("/c/proxy"));
        check(&[("HOME", "/h")], Some("/h/.codex/proxy"));
        check(&[("CODEX_HOME", ""), ("HOME", "/h")], Some("/h/.codex/proxy"));
        check(&[], None);
    }

    #[test]
    fn lines_are_one_based() {
        let text = "a\nb\n\nc";
        for (offset, line) in [(0, 1), (1, 1), (2, 2), (4, 3), (5, 4), (100, 4)] {
            assert_eq!(Src::line(text, offset), line, "offset {offset}");
        }
    }
}
