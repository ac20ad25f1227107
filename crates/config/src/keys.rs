//! The keys of `[network]` (SPEC §2.2): for each, how a written value is checked and stored.
//!
//! Every value is checked on its own where it is written, in whichever source, so an error
//! points at the file and line that holds it, even when a later source overrides the key.
//! Rules between keys (clamping, the two admin token keys) apply to the merged result and live
//! in `config.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proxyd_policy::{ListKind, Mode, Pattern};
use toml::Spanned;
use toml::de::DeValue;

use crate::config::{AdminToken, Config};
use crate::error::{ConfigError, ErrorKind};
use crate::listen;
use crate::sources::Src;

type Errors = Vec<ConfigError>;
type Apply = fn(&mut Config, &Input<'_>) -> Result<(), Errors>;

/// Every known key, in SPEC §2.2 order, with how to apply a value to a [`Config`].
pub(crate) const KEYS: &[(&str, Apply)] = &[
    ("enabled", |c, i| set(&mut c.enabled, i.bool())),
    ("proxy_url", |c, i| set(&mut c.http_addr, i.listener())),
    ("admin_url", |c, i| set(&mut c.admin_addr, i.listener())),
    ("enable_socks5", |c, i| set(&mut c.enable_socks5, i.bool())),
    ("socks_url", |c, i| set(&mut c.socks_addr, i.listener())),
    ("dns_url", |c, i| set(&mut c.dns_addr, i.optional_listener())),
    ("enable_socks5_udp", |c, i| set(&mut c.enable_socks5_udp, i.bool())),
    ("allow_upstream_proxy", |c, i| set(&mut c.allow_upstream_proxy, i.bool())),
    ("dangerously_allow_non_loopback_proxy", |c, i| {
        set(&mut c.dangerously_allow_non_loopback_proxy, i.bool())
    }),
    ("dangerously_allow_non_loopback_admin", |c, i| {
        set(&mut c.dangerously_allow_non_loopback_admin, i.bool())
    }),
    ("mode", |c, i| set(&mut c.mode, i.mode())),
    ("allowed_domains", |c, i| set(&mut c.allowed_domains, i.patterns(ListKind::Allowed))),
    ("denied_domains", |c, i| set(&mut c.denied_domains, i.patterns(ListKind::Denied))),
    ("allow_local_binding", |c, i| set(&mut c.allow_local_binding, i.bool())),
    ("allow_unix_sockets", |c, i| set(&mut c.allow_unix_sockets, i.absolute_paths())),
    ("connect_timeout", |c, i| set(&mut c.connect_timeout, i.duration(false))),
    ("dns_timeout", |c, i| set(&mut c.dns_timeout, i.duration(false))),
    ("header_read_timeout", |c, i| set(&mut c.header_read_timeout, i.duration(false))),
    ("idle_timeout", |c, i| set(&mut c.idle_timeout, i.duration(false))),
    ("response_timeout", |c, i| set(&mut c.response_timeout, i.duration(false))),
    ("decider_timeout", |c, i| set(&mut c.decider_timeout, i.duration(false))),
    ("drain_timeout", |c, i| set(&mut c.drain_timeout, i.duration(true))),
    ("max_connections", |c, i| set(&mut c.max_connections, i.count(MAX_CONNECTIONS))),
    ("admin_max_connections", |c, i| set(&mut c.admin_max_connections, i.count(MAX_CONNECTIONS))),
    ("blocked_log_size", |c, i| set(&mut c.blocked_log_size, i.count(MAX_BLOCKED_LOG))),
    ("admin_token", |c, i| set(&mut c.admin_token, i.token())),
    ("admin_token_file", |c, i| set(&mut c.admin_token_file, i.optional_path())),
    ("mitm", |c, i| set(&mut c.mitm, i.bool())),
    ("ca_dir", |c, i| set(&mut c.ca_dir, i.dir().map(Some))),
    ("on_miss", |c, i| set(&mut c.on_miss_ask, i.on_miss())),
    ("ask_timeout", |c, i| set(&mut c.ask_timeout, i.duration(false))),
    ("ask_max_pending", |c, i| set(&mut c.ask_max_pending, i.count(MAX_PENDING))),
    ("rules", |c, i| set(&mut c.rules, crate::rules::parse_rules(i.value, i.src))),
    ("credentials", |c, i| {
        set(&mut c.credentials, crate::rules::parse_credentials(i.value, i.src))
    }),
];

/// Upper bounds that catch typos (an extra digit or three) before they become memory use.
pub(crate) const MAX_CONNECTIONS: usize = 1_000_000;
pub(crate) const MAX_BLOCKED_LOG: usize = 1_000_000;
pub(crate) const MAX_PENDING: usize = 1_000;
/// The longest accepted duration: longer is almost certainly a unit typo (`5h` for `5m`),
/// and it keeps `Instant + timeout` far from overflowing.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

fn set<T>(slot: &mut T, value: Result<T, Errors>) -> Result<(), Errors> {
    *slot = value?;
    Ok(())
}

/// Applies one `key = value` of `[network]` read from `src`, recording the key's origin, or
/// adds the errors it has to `errors`.
pub(crate) fn apply(
    config: &mut Config,
    key: &Spanned<impl AsRef<str>>,
    value: &Spanned<DeValue<'_>>,
    src: &Src<'_>,
    errors: &mut Errors,
) {
    let name = key.get_ref().as_ref();
    let Some(&(known, apply)) = KEYS.iter().find(|(known, _)| *known == name) else {
        let kind = ErrorKind::UnknownKey { key: name.to_owned(), suggestion: suggest(name) };
        errors.push(ConfigError::new(src.location(key.span()), kind));
        return;
    };
    match apply(config, &Input { key: known, value, src }) {
        Ok(()) => config.set_origin(known, src.origin(key.span())),
        Err(found) => errors.extend(found),
    }
}

/// The known key nearest to `unknown` by edit distance, if it is near enough to be a typo.
pub(crate) fn suggest(unknown: &str) -> Option<&'static str> {
    nearest(unknown, KEYS.iter().map(|(known, _)| *known))
}

/// The entry of `known` nearest to `unknown` by edit distance, if it is near enough to be a
/// typo.
pub(crate) fn nearest(
    unknown: &str,
    known: impl Iterator<Item = &'static str>,
) -> Option<&'static str> {
    known
        .map(|known| (levenshtein(unknown, known), known))
        .filter(|(distance, known)| *distance <= (known.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// Edit distance (insertions, deletions, substitutions) between two strings, by character.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// One written value of a known key, with what is needed to report errors about it.
pub(crate) struct Input<'a> {
    key: &'static str,
    value: &'a Spanned<DeValue<'a>>,
    src: &'a Src<'a>,
}

impl Input<'_> {
    fn invalid(&self, span: std::ops::Range<usize>, reason: impl Into<String>) -> Errors {
        let kind = ErrorKind::Invalid { key: self.key, reason: reason.into() };
        vec![ConfigError::new(self.src.location(span), kind)]
    }

    fn wrong_type(&self, value: &Spanned<DeValue<'_>>, expected: &'static str) -> Errors {
        let kind = ErrorKind::WrongType {
            key: format!("network.{}", self.key),
            expected,
            found: value.get_ref().type_str(),
        };
        vec![ConfigError::new(self.src.location(value.span()), kind)]
    }

    fn bool(&self) -> Result<bool, Errors> {
        self.value.get_ref().as_bool().ok_or_else(|| self.wrong_type(self.value, "a boolean"))
    }

    fn str(&self, expected: &'static str) -> Result<&str, Errors> {
        self.value.get_ref().as_str().ok_or_else(|| self.wrong_type(self.value, expected))
    }

    fn listener(&self) -> Result<std::net::SocketAddr, Errors> {
        let text = self.str("a string such as \"http://127.0.0.1:3128\"")?;
        listen::parse(text).map_err(|reason| self.invalid(self.value.span(), reason))
    }

    /// `on_miss`: `"deny"` (the default) or `"ask"`.
    fn on_miss(&self) -> Result<bool, Errors> {
        match self.str("\"deny\" or \"ask\"")? {
            "deny" => Ok(false),
            "ask" => Ok(true),
            other => Err(self.invalid(
                self.value.span(),
                format!("expected \"deny\" or \"ask\", found {other:?}"),
            )),
        }
    }

    /// `dns_url`: an address like the other listeners', or `""` for none.
    fn optional_listener(&self) -> Result<Option<std::net::SocketAddr>, Errors> {
        match self.str("a string such as \"127.0.0.1:5353\", or \"\" for none")? {
            "" => Ok(None),
            text => listen::parse(text)
                .map(Some)
                .map_err(|reason| self.invalid(self.value.span(), reason)),
        }
    }

    fn mode(&self) -> Result<Mode, Errors> {
        let text = self.str("\"full\" or \"limited\"")?;
        Mode::parse(text).ok_or_else(|| {
            self.invalid(
                self.value.span(),
                format!("expected \"full\" or \"limited\", found {text:?}"),
            )
        })
    }

    /// A duration such as `"500ms"`, `"10s"` or `"5m"`. Zero is refused except where it has a
    /// meaning (`drain_timeout = "0s"`: close connections at once on shutdown): a zero
    /// connect, read or idle timeout would fail every connection.
    fn duration(&self, zero_ok: bool) -> Result<Duration, Errors> {
        let text = self.str("a duration string such as \"10s\"")?;
        let fail = |reason: String| self.invalid(self.value.span(), reason);
        let duration = humantime::parse_duration(text)
            .map_err(|err| fail(format!("invalid duration {text:?}: {err}")))?;
        if duration.is_zero() && !zero_ok {
            return Err(fail("must be longer than zero".into()));
        }
        if duration > MAX_DURATION {
            return Err(fail(format!("{text:?} is longer than the maximum of 24h")));
        }
        Ok(duration)
    }

    /// A positive integer up to `max`: zero connections or a zero-entry log would make the
    /// proxy useless, so they are errors rather than a way to switch something off.
    fn count(&self, max: usize) -> Result<usize, Errors> {
        let Some(int) = self.value.get_ref().as_integer() else {
            return Err(self.wrong_type(self.value, "a positive integer"));
        };
        match i64::from_str_radix(int.as_str(), int.radix()).map(usize::try_from) {
            Ok(Ok(n)) if (1..=max).contains(&n) => Ok(n),
            _ => Err(self.invalid(self.value.span(), format!("must be between 1 and {max}"))),
        }
    }

    /// The entries of an array of strings, each with its span, checked by `check`; the
    /// errors of every entry are reported, not just the first.
    fn strings<T>(&self, check: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, Errors> {
        const EXPECTED: &str = "an array of strings";
        let Some(array) = self.value.get_ref().as_array() else {
            return Err(self.wrong_type(self.value, EXPECTED));
        };
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        for item in array.iter() {
            match item.get_ref().as_str().map(&check) {
                Some(Ok(entry)) => entries.push(entry),
                Some(Err(reason)) => errors.extend(self.invalid(item.span(), reason)),
                None => errors.extend(self.wrong_type(item, EXPECTED)),
            }
        }
        match errors.is_empty() {
            true => Ok(entries),
            false => Err(errors),
        }
    }

    /// A pattern list, every entry checked (SPEC §4.3) and each bad one reported at its line.
    fn patterns(&self, list: ListKind) -> Result<Vec<String>, Errors> {
        self.strings(|entry| match Pattern::parse(entry, list) {
            Ok(_) => Ok(entry.to_owned()),
            Err(err) => Err(err.to_string()),
        })
    }

    fn absolute_paths(&self) -> Result<Vec<PathBuf>, Errors> {
        self.strings(|entry| match Path::new(entry).is_absolute() {
            true => Ok(PathBuf::from(entry)),
            false => Err(format!("{entry:?} is not an absolute path")),
        })
    }

    /// `admin_token`: an empty string means "not set", so a later source can clear a token an
    /// earlier one set.
    fn token(&self) -> Result<Option<AdminToken>, Errors> {
        let text = self.str("a string")?;
        if text.is_empty() {
            return Ok(None);
        }
        AdminToken::new(text).map(Some).map_err(|reason| self.invalid(self.value.span(), reason))
    }

    /// `ca_dir`: a directory, relative like [`Input::optional_path`]; empty names nothing.
    fn dir(&self) -> Result<PathBuf, Errors> {
        match self.optional_path()? {
            Some(dir) => Ok(dir),
            None => Err(self.invalid(self.value.span(), "an empty path names no directory")),
        }
    }

    /// `admin_token_file`: a relative path is relative to the directory of the file that
    /// names it (as `-c` has no file, relative to the working directory); empty means unset.
    fn optional_path(&self) -> Result<Option<PathBuf>, Errors> {
        let text = self.str("a path string")?;
        if text.is_empty() {
            return Ok(None);
        }
        let path = Path::new(text);
        Ok(Some(match self.src.base_dir() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(unknown: &str, expected: Option<&str>) {
        assert_eq!(suggest(unknown), expected, "suggestion for {unknown:?}");
    }

    #[test]
    fn suggests_the_nearest_key() {
        check("alowed_domains", Some("allowed_domains"));
        check("allowed_domain", Some("allowed_domains"));
        check("denied_domain", Some("denied_domains"));
        check("Mode", Some("mode"));
        check("proxy_ur", Some("proxy_url"));
        check("sock_url", Some("socks_url"));
        check("enable_socks", Some("enable_socks5"));
        check("conect_timeout", Some("connect_timeout"));
        check("admin_tokn", Some("admin_token"));
        check("mitn", Some("mitm"));
        check("ca_dirs", Some("ca_dir"));
        check("completely_unrelated", None);
        check("x", None);
    }

    #[test]
    fn settings_list_the_keys_in_table_order() {
        let table: Vec<&str> = KEYS.iter().map(|(key, _)| *key).collect();
        let settings: Vec<&str> = Config::default().settings().iter().map(|s| s.key).collect();
        assert_eq!(settings, table);
    }

    #[test]
    fn levenshtein_distances() {
        for (a, b, d) in [("", "", 0), ("a", "", 1), ("", "ab", 2), ("kitten", "sitting", 3)] {
            assert_eq!(levenshtein(a, b), d, "{a:?} {b:?}");
            assert_eq!(levenshtein(b, a), d, "{b:?} {a:?}");
        }
    }
}
