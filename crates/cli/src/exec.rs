//! `proxyd exec -- COMMAND`: run one command behind a fresh proxy on ephemeral loopback ports,
//! with the proxy environment set, and report what was blocked when it exits.
//!
//! Only programs that honour the proxy variables are confined by them: a program that ignores
//! them, or opens sockets itself, is confined only when an OS sandbox lets it reach nothing
//! but proxyd.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use proxyd_admin::BlockedEntry;

/// The environment a child gets: the standard proxy variables in both cases, and the
/// tool-specific ones that npm, yarn, pip, git and Node honour. `existing` is the parent's
/// environment lookup (to append to `GIT_CONFIG_COUNT` rather than overwrite it).
pub fn proxy_env(
    http: SocketAddr,
    socks: Option<SocketAddr>,
    allow_local_binding: bool,
    existing: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let http_url = format!("http://{http}");
    let all_url = match socks {
        Some(socks) => format!("socks5h://{socks}"),
        None => http_url.clone(),
    };
    // Local destinations go through the proxy too unless they are allowed anyway.
    let no_proxy = match allow_local_binding {
        true => "localhost,127.0.0.1,::1",
        false => "",
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| env.push((key.to_owned(), value.to_owned()));
    for (key, value) in [
        ("HTTP_PROXY", http_url.as_str()),
        ("HTTPS_PROXY", &http_url),
        ("ALL_PROXY", &all_url),
        ("NO_PROXY", no_proxy),
    ] {
        set(key, value);
        set(&key.to_ascii_lowercase(), value);
    }
    // npm and yarn (classic reads npm's), pip, Node's built-in fetch/http (Node ≥ 24 with
    // NODE_USE_ENV_PROXY) and the global-agent package.
    set("npm_config_proxy", &http_url);
    set("npm_config_https_proxy", &http_url);
    set("npm_config_noproxy", no_proxy);
    set("YARN_HTTP_PROXY", &http_url);
    set("YARN_HTTPS_PROXY", &http_url);
    set("PIP_PROXY", &http_url);
    set("NODE_USE_ENV_PROXY", "1");
    set("GLOBAL_AGENT_HTTP_PROXY", &http_url);
    set("GLOBAL_AGENT_HTTPS_PROXY", &http_url);
    set("GLOBAL_AGENT_NO_PROXY", no_proxy);
    // git: `http.proxy` through the environment's config entries, after any already there.
    let count = existing("GIT_CONFIG_COUNT").and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
    set("GIT_CONFIG_COUNT", &(count + 1).to_string());
    set(&format!("GIT_CONFIG_KEY_{count}"), "http.proxy");
    set(&format!("GIT_CONFIG_VALUE_{count}"), &http_url);
    env
}

/// The variables [`ca_env`] sets: OpenSSL's `SSL_CERT_FILE`, Python requests, Node, pip, git,
/// curl, npm (its `cafile` setting, which wins over `SSL_CERT_FILE`, in both spellings), cargo,
/// Bundler, the AWS SDKs and CLI, httplib2 and gRPC.
pub const CA_VARIABLES: [&str; 13] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "PIP_CERT",
    "GIT_SSL_CAINFO",
    "CURL_CA_BUNDLE",
    "npm_config_cafile",
    "NPM_CONFIG_CAFILE",
    "CARGO_HTTP_CAINFO",
    "BUNDLE_SSL_CA_CERT",
    "AWS_CA_BUNDLE",
    "HTTPLIB2_CA_CERTS",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
];

/// With interception: every variable through which common clients take their trusted roots
/// ([`CA_VARIABLES`]) pointed at `bundle`, the roots the child trusted anyway plus proxyd's CA.
/// `NODE_EXTRA_CA_CERTS` adds to Node's own roots, the others replace the defaults, which is
/// why the bundle carries them too.
pub fn ca_env(bundle: &Path) -> Vec<(String, String)> {
    let bundle = bundle.display().to_string();
    CA_VARIABLES.into_iter().map(|key| (key.to_owned(), bundle.clone())).collect()
}

/// The one line `proxyd exec` prints on stderr when the command runs with interception.
pub fn interception_notice(bundle: &Path) -> String {
    format!(
        "proxyd: https interception is on: the command trusts proxyd's CA through {} \
         (SSL_CERT_FILE, npm_config_cafile, NODE_EXTRA_CA_CERTS and {} more)\n",
        bundle.display(),
        CA_VARIABLES.len() - 3
    )
}

/// A request that failed for a reason that is not a policy decision (the name did not
/// resolve, the connection was refused, the client did not trust the interception CA…), kept
/// for `proxyd exec`'s summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRequest {
    /// The destination host.
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// `http`, `http-connect`, `socks5`…
    pub protocol: String,
    /// The failure's code: `dns_failed`, `connect_refused`, `mitm_handshake_failed`…
    pub reason: String,
}

/// What a user can do about a failure, for the codes that need a hint.
fn failure_hint(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "dns_failed" => "the name did not resolve",
        "connect_refused" => "nothing accepted the connection there",
        "connect_unreachable" => "the address is unreachable",
        "connect_timeout" => "connecting timed out (connect_timeout)",
        "upstream_proxy_failed" => {
            "the upstream proxy of proxyd's HTTP_PROXY/HTTPS_PROXY/ALL_PROXY failed"
        }
        "upstream_tls_failed" => "the TLS handshake with the origin failed",
        "mitm_handshake_failed" => {
            "the command's TLS client did not accept proxyd's CA: point it at the bundle"
        }
        "mitm_ca_scope" => "the interception CA does not cover this name",
        _ => return None,
    })
}

/// A few lines for stderr: each failed destination once, with its code, a hint and a count,
/// apart from the blocks. `total` is the number ever recorded, which the ring may not all hold.
pub fn failed_summary(entries: &[FailedRequest], total: u64) -> Option<String> {
    if total == 0 {
        return None;
    }
    let mut counts: BTreeMap<(String, &str, &str), usize> = BTreeMap::new();
    for entry in entries {
        let target = match entry.host.contains(':') {
            true => format!("[{}]:{}", entry.host, entry.port),
            false => format!("{}:{}", entry.host, entry.port),
        };
        *counts.entry((target, &entry.reason, &entry.protocol)).or_default() += 1;
    }
    let mut out = format!("proxyd: {total} request(s) failed (not blocked by the policy):\n");
    for ((target, reason, protocol), count) in counts {
        let times = if count > 1 { format!(" ({count} times)") } else { String::new() };
        let hint = failure_hint(reason).map(|h| format!(": {h}")).unwrap_or_default();
        out.push_str(&format!("  {target} {reason} via {protocol}{times}{hint}\n"));
    }
    let older = total.saturating_sub(entries.len() as u64);
    if older > 0 {
        out.push_str(&format!("  ({older} older not shown)\n"));
    }
    Some(out)
}

/// How a command that could not be started ends, as a shell has it: 127 when there is no
/// such command, 126 when it cannot be executed; the message for stderr.
pub fn spawn_failure(program: &str, err: &std::io::Error) -> (u8, String) {
    match err.kind() {
        std::io::ErrorKind::NotFound => (127, format!("proxyd: {program}: command not found")),
        std::io::ErrorKind::PermissionDenied => {
            (126, format!("proxyd: {program}: permission denied (not executable)"))
        }
        _ => (126, format!("proxyd: {program}: cannot execute: {err}")),
    }
}

/// Quotes a command line for display and for the decider's `command` (POSIX shell style).
/// `proxyd exec --ask`: asks on the terminal (`/dev/tty`, not the command's stdout or stderr)
/// about each allowlist miss, one question at a time, on a thread of its own. The answer is
/// `o` (allow once), `a` (allow always, for this run) or `d` (deny); anything else asks again.
pub fn prompt_on_tty(
    asker: std::sync::Arc<proxyd_net::Asker>,
    command: String,
) -> std::io::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let mut questions = asker.subscribe();
    std::thread::Builder::new().name("proxyd-ask".into()).spawn(move || {
        let mut reader = std::io::BufReader::new(match tty.try_clone() {
            Ok(tty) => tty,
            Err(_) => return,
        });
        let mut out = tty;
        while let Ok(question) = questions.blocking_recv() {
            let method = question.method.as_deref().map(|m| format!("{m} ")).unwrap_or_default();
            loop {
                let _ = write!(
                    out,
                    "\r\nproxyd: `{command}` wants {method}{}:{} ({}). Allow [o]nce, [a]lways, [d]eny? ",
                    question.host,
                    question.port,
                    question.protocol.as_str()
                );
                let _ = out.flush();
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let answer = match line.trim() {
                    "o" | "once" => proxyd_net::Answer::AllowOnce,
                    "a" | "always" => proxyd_net::Answer::AllowAlways,
                    "d" | "deny" => proxyd_net::Answer::Deny,
                    _ => continue,
                };
                if !asker.answer(question.id, answer) {
                    let _ = writeln!(out, "proxyd: that question had already expired\r");
                }
                break;
            }
        }
    })?;
    Ok(())
}

/// A placeholder of the same shape as a real token: the same length, the same prefix up to and
/// including the last `_` or `-` within its first 12 characters (`ghp_`, `github_pat_`,
/// `sk-`, `xoxb-`), and random letters and digits for the rest, so a tool that checks a
/// token's format accepts it. `random` yields random bytes.
pub fn placeholder(real: &str, mut random: impl FnMut() -> u8) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let head: String = real.chars().take(12).collect();
    let prefix_len = head.rfind(['_', '-']).map_or(0, |i| i + 1);
    let prefix = &real[..prefix_len];
    let rest = real.chars().count().saturating_sub(prefix.chars().count()).max(16);
    let mut out = String::from(prefix);
    while out.len() < prefix.len() + rest {
        // Rejection sampling keeps every character equally likely.
        let byte = random();
        if usize::from(byte) < 256 - 256 % ALNUM.len() {
            out.push(char::from(ALNUM[usize::from(byte) % ALNUM.len()]));
        }
    }
    out
}

/// `args` as one line a POSIX shell would split back into the same words (quoted where needed).
pub fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
            match plain {
                true => arg.clone(),
                false => format!("'{}'", arg.replace('\'', r"'\''")),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A few lines for stderr: each blocked destination still in the log once, with its reason
/// and count. `total` is the number ever blocked, which the bounded log may not all hold.
pub fn blocked_summary(entries: &[BlockedEntry], total: u64) -> Option<String> {
    if total == 0 {
        return None;
    }
    let mut counts: BTreeMap<(String, String, String, Option<String>), usize> = BTreeMap::new();
    for entry in entries {
        let target = match entry.host.contains(':') {
            true => format!("[{}]:{}", entry.host, entry.port),
            false => format!("{}:{}", entry.host, entry.port),
        };
        let why = entry.detail.clone().or_else(|| entry.rule.as_ref().map(|r| format!("rule {r}")));
        *counts.entry((target, entry.reason.clone(), entry.protocol.clone(), why)).or_default() +=
            1;
    }
    let mut out = format!("proxyd: blocked {total} request(s):\n");
    for ((target, reason, protocol, why), count) in counts {
        let times = if count > 1 { format!(" ({count} times)") } else { String::new() };
        out.push_str(&format!("  {target} {reason} via {protocol}{times}\n"));
        if let Some(why) = why {
            out.push_str(&format!("    {why}\n"));
        }
    }
    let older = total.saturating_sub(entries.len() as u64);
    if older > 0 {
        out.push_str(&format!("  ({older} older not shown: raise blocked_log_size)\n"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_keep_the_shape_of_the_token() {
        let mut n = 0u8;
        let mut random = || {
            n = n.wrapping_add(37);
            n
        };
        let gh = placeholder("ghp_abcdefghijklmnopqrstuvwxyz0123456789", &mut random);
        assert!(gh.starts_with("ghp_") && gh.len() == 40, "{gh}");
        assert_ne!(gh, "ghp_abcdefghijklmnopqrstuvwxyz0123456789");
        let pat = placeholder("github_pat_11ABCDEFG0123456789", &mut random);
        assert!(pat.starts_with("github_pat_") && pat.len() == 30, "{pat}");
        let sk = placeholder("sk-proj-abcdefghijklmnop", &mut random);
        assert!(sk.starts_with("sk-proj-") && sk.len() == 24, "{sk}");
        // Short or prefix-less tokens still get 16 random characters.
        let short = placeholder("abc", &mut random);
        assert_eq!(short.len(), 16);
        assert!(short.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn environment_for_children() {
        let http: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let socks: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let env =
            proxy_env(http, Some(socks), false, |k| (k == "GIT_CONFIG_COUNT").then(|| "2".into()));
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HTTP_PROXY"), Some("http://127.0.0.1:4000"));
        assert_eq!(get("https_proxy"), Some("http://127.0.0.1:4000"));
        assert_eq!(get("ALL_PROXY"), Some("socks5h://127.0.0.1:4001"));
        assert_eq!(get("NO_PROXY"), Some(""));
        assert_eq!(get("no_proxy"), Some(""));
        assert_eq!(get("GIT_CONFIG_COUNT"), Some("3"));
        assert_eq!(get("GIT_CONFIG_KEY_2"), Some("http.proxy"));
        assert_eq!(get("PIP_PROXY"), Some("http://127.0.0.1:4000"));
        let local = proxy_env(http, None, true, |_| None);
        let get = |k: &str| local.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("NO_PROXY"), Some("localhost,127.0.0.1,::1"));
        assert_eq!(get("all_proxy"), Some("http://127.0.0.1:4000"));
        assert_eq!(get("GIT_CONFIG_KEY_0"), Some("http.proxy"));
    }

    #[test]
    fn ca_variables_point_at_the_bundle() {
        let env = ca_env(Path::new("/c/bundle.pem"));
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        for key in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "PIP_CERT",
            "GIT_SSL_CAINFO",
            "CURL_CA_BUNDLE",
            "npm_config_cafile",
            "NPM_CONFIG_CAFILE",
            "CARGO_HTTP_CAINFO",
            "BUNDLE_SSL_CA_CERT",
            "AWS_CA_BUNDLE",
            "HTTPLIB2_CA_CERTS",
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert!(env.iter().all(|(_, v)| v == "/c/bundle.pem"));
    }

    #[test]
    fn failures_are_summarised_with_hints() {
        let entry = |host: &str, reason: &str| FailedRequest {
            host: host.into(),
            port: 443,
            protocol: "http-connect".into(),
            reason: reason.into(),
        };
        assert_eq!(failed_summary(&[], 0), None);
        let summary = failed_summary(
            &[entry("a.test", "dns_failed"), entry("a.test", "dns_failed"), entry("::1", "x")],
            4,
        )
        .expect("summary");
        assert_eq!(
            summary,
            "proxyd: 4 request(s) failed (not blocked by the policy):\n  \
             [::1]:443 x via http-connect\n  \
             a.test:443 dns_failed via http-connect (2 times): the name did not resolve\n  \
             (1 older not shown)\n"
        );
    }

    #[test]
    fn spawn_failures_exit_like_a_shell() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(spawn_failure("nope", &missing).0, 127);
        assert!(spawn_failure("nope", &missing).1.contains("nope: command not found"));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(spawn_failure("x", &denied).0, 126);
    }

    #[test]
    fn summary_counts_what_the_ring_dropped() {
        let entry = |host: &str| BlockedEntry {
            id: 0,
            timestamp: String::new(),
            host: host.into(),
            port: 80,
            protocol: "http".into(),
            method: Some("GET".into()),
            reason: "not_allowed".into(),
            client: None,
            mode: "full".into(),
            rule: None,
            detail: None,
        };
        assert_eq!(blocked_summary(&[], 0), None);
        let summary = blocked_summary(&[entry("c.test"), entry("c.test")], 3).expect("summary");
        assert_eq!(
            summary,
            "proxyd: blocked 3 request(s):\n  c.test:80 not_allowed via http (2 times)\n  \
             (1 older not shown: raise blocked_log_size)\n"
        );
    }

    #[test]
    fn command_lines_are_quoted() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shell_join(&args(&["curl", "-sS", "https://x.test/a?b=1"])),
            "curl -sS 'https://x.test/a?b=1'"
        );
        assert_eq!(shell_join(&args(&["echo", "it's"])), r"echo 'it'\''s'");
        assert_eq!(shell_join(&args(&["a", ""])), "a ''");
    }
}
