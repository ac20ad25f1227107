//! Brokered credentials (`[[network.credentials]]` under `proxyd exec`): the command holds a
//! placeholder of the real token's shape, and proxyd swaps it for the real value in the
//! request headers of requests to the hosts the credential is bound to, only over TLS (unless
//! the credential says `dangerously_allow_plain_http`). Everywhere else the placeholder goes
//! out as it is, so a token sent to the wrong host leaks nothing.
//!
//! Only header values are rewritten (tokens travel in `Authorization` and API-key headers);
//! URLs and bodies are never touched. A CONNECT to a bound host is intercepted in every mode,
//! so the swap can happen inside HTTPS.

use http::{HeaderMap, HeaderValue};
use proxyd_policy::{ListKind, PatternSet, Target};

/// One brokered credential.
pub struct Credential {
    pub name: String,
    /// What the command was given instead of the token.
    pub placeholder: String,
    pub real: String,
    /// The hosts the real value may go to (allowlist pattern grammar).
    pub hosts: Vec<String>,
    pub allow_plain_http: bool,
}

struct Entry {
    name: String,
    placeholder: String,
    real: String,
    hosts: PatternSet,
    allow_plain_http: bool,
}

/// The credentials of one `proxyd exec` run.
#[derive(Default)]
pub struct Broker {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("Broker").field("credentials", &names).finish()
    }
}

impl Broker {
    /// Fails (naming the credential) when a host entry is not a valid pattern, or a
    /// placeholder or value is empty or not a valid header value.
    pub fn new(credentials: Vec<Credential>) -> Result<Broker, String> {
        let mut entries = Vec::new();
        for c in credentials {
            let hosts = PatternSet::compile(&c.hosts, ListKind::Allowed)
                .map_err(|errors| format!("credential {:?}: {errors:?}", c.name))?;
            let valid = |s: &str| !s.is_empty() && HeaderValue::from_str(s).is_ok();
            if !valid(&c.placeholder) || !valid(&c.real) {
                return Err(format!("credential {:?}: not usable in a header", c.name));
            }
            entries.push(Entry {
                name: c.name,
                placeholder: c.placeholder,
                real: c.real,
                hosts,
                allow_plain_http: c.allow_plain_http,
            });
        }
        Ok(Broker { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a CONNECT to `target` must be intercepted so a placeholder can be swapped.
    pub fn binds(&self, target: &Target) -> bool {
        self.entries.iter().any(|e| e.hosts.matches(target).is_some())
    }

    /// Swaps placeholders for real values in `headers` of a request to `target`; `tls` says
    /// whether the request leaves proxyd over TLS. Returns the names of the credentials used.
    pub(crate) fn apply(&self, target: &Target, tls: bool, headers: &mut HeaderMap) -> Vec<String> {
        let mut used = Vec::new();
        for entry in &self.entries {
            if !(tls || entry.allow_plain_http) || entry.hosts.matches(target).is_none() {
                continue;
            }
            for value in headers.values_mut() {
                let Ok(text) = value.to_str() else { continue };
                if !text.contains(&entry.placeholder) {
                    continue;
                }
                let swapped = text.replace(&entry.placeholder, &entry.real);
                if let Ok(new) = HeaderValue::from_str(&swapped) {
                    let mut new = new;
                    new.set_sensitive(true);
                    *value = new;
                    if !used.contains(&entry.name) {
                        used.push(entry.name.clone());
                    }
                }
            }
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> Broker {
        Broker::new(vec![Credential {
            name: "gh".into(),
            placeholder: "ghp_PLACEHOLDER0000".into(),
            real: "ghp_realrealreal123".into(),
            hosts: vec!["api.github.example".into()],
            allow_plain_http: false,
        }])
        .expect("broker")
    }

    #[track_caller]
    fn check(host: &str, tls: bool, expected: &str) {
        let target = Target::parse_authority(host, Some(443)).expect("target");
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("token ghp_PLACEHOLDER0000"));
        broker().apply(&target, tls, &mut headers);
        assert_eq!(headers["authorization"], expected, "{host} tls={tls}");
    }

    #[test]
    fn placeholders_become_real_only_for_bound_hosts_over_tls() {
        check("api.github.example", true, "token ghp_realrealreal123");
        check("api.github.example", false, "token ghp_PLACEHOLDER0000");
        check("evil.example", true, "token ghp_PLACEHOLDER0000");
        check("api.github.example.evil.example", true, "token ghp_PLACEHOLDER0000");
        let target = Target::parse_authority("api.github.example", Some(443)).unwrap();
        assert!(broker().binds(&target));
    }
}
