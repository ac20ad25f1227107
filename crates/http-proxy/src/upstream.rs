//! Chaining to an upstream proxy named by proxyd's own environment (SPEC §7.6).
//!
//! The decision on the host name still applies before anything is sent upstream. The check of
//! resolved addresses (SPEC §5.2) cannot: the upstream proxy resolves the name, not proxyd.
//! Local targets (local IP literals and `localhost` names) never go upstream.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;
use ipnet::IpNet;
use proxyd_policy::{Host, Scheme, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BoxError;

/// Longest response head accepted from an upstream proxy's answer to `CONNECT`.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

/// One `http://` upstream proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyEndpoint {
    pub(crate) target: Target,
    /// The same, as an operator's endpoint for the egress path.
    pub(crate) endpoint: proxyd_net::OperatorEndpoint,
    /// `Proxy-Authorization` built from the URL's userinfo.
    pub(crate) authorization: Option<HeaderValue>,
}

/// The upstream proxies from the environment, and the `NO_PROXY` exceptions.
#[derive(Debug, Clone, Default)]
pub struct UpstreamProxies {
    http: Option<ProxyEndpoint>,
    https: Option<ProxyEndpoint>,
    no_proxy: NoProxy,
}

impl UpstreamProxies {
    /// Reads `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (lower-case first, as curl
    /// does). Entries that are not `http://` proxies are skipped with a warning.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> UpstreamProxies {
        UpstreamProxies::from_env_except(get, &[])
    }

    /// [`UpstreamProxies::from_env`], ignoring (with one warning each) a variable that names
    /// one of `own`, proxyd's own listeners: proxyd started in a shell whose proxy variables
    /// point at itself would otherwise fail every request. A loopback address or `localhost`
    /// name with the port of a loopback or unspecified listener counts.
    pub fn from_env_except(
        get: impl Fn(&str) -> Option<String>,
        own: &[SocketAddr],
    ) -> UpstreamProxies {
        let var = |name: &str| {
            get(&name.to_ascii_lowercase()).or_else(|| get(name)).filter(|v| !v.trim().is_empty())
        };
        let endpoint = |name: &str| {
            let value = var(name)?;
            match parse_proxy_url(&value) {
                Ok(endpoint) => match names_own_listener(&endpoint.target, own) {
                    Some(listener) => {
                        tracing::warn!(
                            variable = name,
                            "ignoring the upstream proxy {name}={value}: it names proxyd's own \
                             listener {listener} (proxyd would proxy to itself)"
                        );
                        None
                    }
                    None => Some(endpoint),
                },
                Err(why) => {
                    tracing::warn!(variable = name, "ignoring the upstream proxy: {why}");
                    None
                }
            }
        };
        let all = endpoint("ALL_PROXY");
        UpstreamProxies {
            http: endpoint("HTTP_PROXY").or_else(|| all.clone()),
            https: endpoint("HTTPS_PROXY").or(all),
            no_proxy: NoProxy::parse(&var("NO_PROXY").unwrap_or_default()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }

    /// The proxy for a request to `target`: `HTTPS_PROXY` for `https` and `CONNECT`,
    /// `HTTP_PROXY` for `http`; none for local or `NO_PROXY` targets.
    pub(crate) fn for_target(
        &self,
        tunnel_or_https: bool,
        target: &Target,
    ) -> Option<&ProxyEndpoint> {
        if target.host.is_local_literal() || self.no_proxy.matches(&target.host) {
            return None;
        }
        match tunnel_or_https {
            true => self.https.as_ref(),
            false => self.http.as_ref(),
        }
    }
}

/// The listener of `own` that `target` names, without DNS: the same address and port, or a
/// loopback address (a `localhost` name included) and the port of a loopback or unspecified
/// listener.
fn names_own_listener(target: &Target, own: &[SocketAddr]) -> Option<SocketAddr> {
    let addrs = target.host.fixed_addrs()?;
    own.iter().copied().find(|listener| {
        let ip = listener.ip();
        listener.port() == target.port
            && addrs.iter().any(|addr| {
                *addr == ip || (addr.is_loopback() && (ip.is_loopback() || ip.is_unspecified()))
            })
    })
}

/// Parses `http://[user:pass@]host:port[/]` (the scheme may be omitted).
fn parse_proxy_url(value: &str) -> Result<ProxyEndpoint, String> {
    let rest = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!("only http:// proxies are supported, not {scheme}://"));
        }
        None => value,
    };
    let rest = rest.trim_end_matches('/');
    let (userinfo, authority) = match rest.rsplit_once('@') {
        Some((userinfo, authority)) => (Some(userinfo), authority),
        None => (None, rest),
    };
    let target = Target::parse_authority(authority, Some(Scheme::Http.default_port()))
        .map_err(|err| format!("invalid proxy address: {err}"))?;
    let authorization = userinfo
        .map(|userinfo| {
            let decoded = percent_decode(userinfo);
            HeaderValue::try_from(format!("Basic {}", base64(decoded.as_bytes())))
                .map_err(|_| "invalid proxy credentials".to_owned())
        })
        .transpose()?;
    let endpoint = proxyd_net::OperatorEndpoint::from_operator_config(target.clone());
    Ok(ProxyEndpoint { target, endpoint, authorization })
}

/// `NO_PROXY`: names (which also cover their subdomains), `.suffix`, `*.suffix`, IPs, CIDRs
/// and `*` (everything).
#[derive(Debug, Clone, Default)]
struct NoProxy {
    all: bool,
    names: Vec<String>,
    nets: Vec<IpNet>,
}

impl NoProxy {
    fn parse(value: &str) -> NoProxy {
        let mut no_proxy = NoProxy::default();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                no_proxy.all = true;
            } else if let Ok(net) = entry.parse::<IpNet>() {
                no_proxy.nets.push(net);
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                no_proxy.nets.push(IpNet::from(ip));
            } else {
                let name = entry.trim_start_matches('*').trim_start_matches('.');
                // A port on a NO_PROXY entry is ignored: the exception is per host.
                let name = name.split(':').next().unwrap_or(name);
                no_proxy.names.push(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        no_proxy
    }

    fn matches(&self, host: &Host) -> bool {
        if self.all {
            return true;
        }
        match host {
            Host::Ip(ip) => self.nets.iter().any(|net| net.contains(ip)),
            Host::Name(name) => self.names.iter().any(|suffix| {
                name.as_ref() == suffix
                    || name.strip_suffix(suffix.as_str()).is_some_and(|head| head.ends_with('.'))
            }),
        }
    }
}

/// Opens a `CONNECT` tunnel through the upstream proxy to `target`. Returns the stream and any
/// bytes the proxy sent after its response head (they belong to the tunnel).
pub(crate) async fn connect_via(
    mut stream: TcpStream,
    proxy: &ProxyEndpoint,
    target: &Target,
) -> Result<(TcpStream, Vec<u8>), BoxError> {
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.authorization {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth.to_str().unwrap_or_default());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() >= MAX_CONNECT_HEAD {
            return Err("upstream proxy response head too long".into());
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("upstream proxy closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status = std::str::from_utf8(&buf[..end])
        .ok()
        .and_then(|head| head.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok((stream, buf[end..].to_vec())),
        Some(code) => Err(format!("upstream proxy answered {code} to connect").into()),
        None => Err("upstream proxy sent an invalid response".into()),
    }
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding (RFC 4648 §4), for `Proxy-Authorization: Basic`.
fn base64(input: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    fn target(s: &str) -> Target {
        Target::parse_authority(s, Some(443)).expect("target")
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn proxy_urls() {
        let p = parse_proxy_url("http://user:p%40ss@proxy.corp:8080/").expect("parses");
        assert_eq!(p.target.to_string(), "proxy.corp:8080");
        assert_eq!(p.authorization.expect("auth"), "Basic dXNlcjpwQHNz");
        assert_eq!(
            parse_proxy_url("127.0.0.1:3129").expect("parses").target.to_string(),
            "127.0.0.1:3129"
        );
        assert_eq!(parse_proxy_url("http://proxy").expect("parses").target.port, 80);
        assert!(parse_proxy_url("socks5://proxy:1080").is_err());
        assert!(parse_proxy_url("https://proxy:443").is_err());
        assert!(parse_proxy_url("http://127.1:80").is_err());
    }

    #[test]
    fn selection_and_no_proxy() {
        let proxies = UpstreamProxies::from_env(env(&[
            ("http_proxy", "http://10.0.0.1:3128"),
            ("HTTPS_PROXY", "http://10.0.0.2:3128"),
            (
                "NO_PROXY",
                "internal.corp, .svc.local,*.cluster.example, 192.0.2.0/24, 198.51.100.7, [2001:db8::1]",
            ),
        ]));
        let via =
            |tunnel, t: &str| proxies.for_target(tunnel, &target(t)).map(|p| p.target.to_string());
        assert_eq!(via(false, "example.com:80").as_deref(), Some("10.0.0.1:3128"));
        assert_eq!(via(true, "example.com").as_deref(), Some("10.0.0.2:3128"));
        assert_eq!(via(false, "internal.corp"), None);
        assert_eq!(via(false, "a.internal.corp"), None);
        assert_eq!(via(false, "xinternal.corp").as_deref(), Some("10.0.0.1:3128"));
        assert_eq!(via(false, "a.svc.local"), None);
        assert_eq!(via(false, "b.cluster.example"), None);
        assert_eq!(via(false, "93.184.216.34").as_deref(), Some("10.0.0.1:3128"));
        assert_eq!(via(false, "198.51.100.7"), None);
        assert_eq!(via(false, "localhost"), None);
        assert_eq!(via(false, "127.0.0.1"), None);
        assert_eq!(via(false, "[::1]"), None);
        assert_eq!(via(false, "10.1.1.1"), None);
    }

    #[test]
    fn a_variable_naming_an_own_listener_is_ignored() {
        let own: Vec<SocketAddr> = ["127.0.0.1:3128", "0.0.0.0:8081", "[::1]:9000", "10.0.0.9:7"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        for (proxy, ignored) in [
            ("http://127.0.0.1:3128", true),
            ("http://localhost:3128", true),
            ("http://LOCALHOST:3128/", true),
            ("http://a.localhost:3128", true),
            ("http://127.0.0.2:3128", true),
            ("http://[::1]:3128", true),
            ("http://127.0.0.1:8081", true),
            ("http://localhost:9000", true),
            ("http://10.0.0.9:7", true),
            ("http://127.0.0.1:3129", false),
            ("http://10.0.0.9:3128", false),
            ("http://10.0.0.8:7", false),
            ("http://proxy.corp:3128", false),
        ] {
            let endpoint = parse_proxy_url(proxy).expect("parses");
            assert_eq!(names_own_listener(&endpoint.target, &own).is_some(), ignored, "{proxy}");
        }
        let get = |name: &str| match name {
            "HTTP_PROXY" => Some("http://localhost:3128".to_owned()),
            "ALL_PROXY" => Some("http://10.0.0.3:1".to_owned()),
            _ => None,
        };
        let proxies = UpstreamProxies::from_env_except(get, &own);
        // HTTP_PROXY is ignored, so ALL_PROXY is the fallback for http too.
        assert_eq!(proxies.for_target(false, &target("a.com")).map(|p| p.target.port), Some(1));
        let proxies = UpstreamProxies::from_env(get);
        assert_eq!(proxies.for_target(false, &target("a.com")).map(|p| p.target.port), Some(3128));
    }

    #[test]
    fn all_proxy_is_the_fallback_and_star_disables() {
        let proxies = UpstreamProxies::from_env(env(&[("ALL_PROXY", "http://10.0.0.3:1")]));
        assert_eq!(proxies.for_target(true, &target("a.com")).map(|p| p.target.port), Some(1));
        assert_eq!(proxies.for_target(false, &target("a.com")).map(|p| p.target.port), Some(1));
        let none = UpstreamProxies::from_env(env(&[
            ("ALL_PROXY", "http://10.0.0.3:1"),
            ("no_proxy", "*"),
        ]));
        assert!(none.for_target(true, &target("a.com")).is_none());
        assert!(UpstreamProxies::from_env(env(&[])).is_empty());
    }
}
