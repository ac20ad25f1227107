//! The real clients: `curl`, Python's `urllib` with proxy environment variables, `git clone`
//! and `pip download`, each run with a clean proxy environment and a deadline.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::fixtures::{PACKAGE, git};
use super::support::{Output, TempDir, client, run};

/// Deadline of one client run (the clients' own timeouts are shorter).
pub(crate) const CLIENT_BOUND: Duration = Duration::from_secs(30);

/// The headers of one response head curl received.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) headers: Vec<(String, String)>,
}

/// What one curl run produced.
#[derive(Debug)]
pub(crate) struct Curl {
    /// curl's exit code: 0, 56 for a refused `CONNECT`, 97 for a refused SOCKS5 request.
    pub(crate) exit: i64,
    /// The final response's status (0 when there was none).
    pub(crate) code: u64,
    /// The proxy's answer to `CONNECT` (0 when no tunnel was asked for).
    pub(crate) connect: u64,
    pub(crate) heads: Vec<Head>,
    pub(crate) body: Vec<u8>,
    pub(crate) stderr: String,
}

impl Curl {
    /// A header of the last response head.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let head = self.heads.last()?;
        head.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub(crate) fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn body_json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not json: {:?}", self.body_text()))
    }

    /// Short form for failure messages.
    pub(crate) fn summary(&self) -> String {
        format!(
            "curl exit {} status {} connect {} x-proxy-error {:?} body {:?} stderr {:?}",
            self.exit,
            self.code,
            self.connect,
            self.header("x-proxy-error"),
            self.body_text(),
            self.stderr.trim()
        )
    }

    /// Succeeded with `200` and exactly `body`.
    pub(crate) fn expect_ok(&self, body: &str) -> Result<()> {
        anyhow::ensure!(
            self.exit == 0 && self.code == 200 && self.body_text() == body,
            "want 200 with {body:?}, got {}",
            self.summary()
        );
        Ok(())
    }

    /// A proxyd block (SPEC §6.1): `403`, `x-proxy-error: header`, a JSON body with `reason`.
    /// Through `CONNECT` the 403 is the tunnel's answer, whose body curl does not keep.
    pub(crate) fn expect_blocked(&self, header: &str, reason: &str) -> Result<()> {
        let tunnel = self.connect != 0;
        let status = if tunnel { self.connect } else { self.code };
        let body = self.body_json().ok();
        let body_ok = tunnel
            || body.as_ref().is_some_and(|b| b["status"] == "blocked" && b["reason"] == reason);
        anyhow::ensure!(
            status == 403 && self.header("x-proxy-error") == Some(header) && body_ok,
            "want 403 {header} {reason}, got {}",
            self.summary()
        );
        Ok(())
    }

    /// The SOCKS5 reply code of a refused request, from curl's message
    /// `Can't complete SOCKS5 connection to HOST. (2)`.
    pub(crate) fn socks_reply(&self) -> Option<u8> {
        let line = self.stderr.lines().find(|line| line.contains("SOCKS5 connection to"))?;
        let code = line.trim_end().strip_suffix(')')?.rsplit_once('(')?.1;
        code.parse().ok()
    }

    /// A SOCKS5 request refused with reply 0x02 (SPEC §6.1).
    pub(crate) fn expect_socks_not_allowed(&self) -> Result<()> {
        anyhow::ensure!(
            self.exit == 97 && self.socks_reply() == Some(2),
            "want SOCKS5 reply 0x02 (curl exit 97), got {}",
            self.summary()
        );
        Ok(())
    }
}

/// Runs `curl ARGS...` (no `.curlrc`, no proxy variables) and collects what it received.
pub(crate) fn curl(args: &[&str]) -> Result<Curl> {
    curl_through(args, |curl_args| {
        let mut cmd = client("curl");
        cmd.args(curl_args);
        run(cmd, CLIENT_BOUND)
    })
}

/// Like [`curl`], but `runner` runs curl with the arguments it is given (e.g. under `proxyd
/// exec`); curl's own stderr is whatever `runner` returns as stderr.
pub(crate) fn curl_through(
    args: &[&str],
    runner: impl FnOnce(&[OsString]) -> Result<Output>,
) -> Result<Curl> {
    let dir = TempDir::new("curl")?;
    let (head_file, body_file) = (dir.join("head"), dir.join("body"));
    // `-q` must come first: it skips any .curlrc.
    let mut curl_args: Vec<OsString> =
        ["-q", "-sS", "--max-time", "10", "-w", "%{json}", "-D"].map(OsString::from).into();
    curl_args.extend([head_file.clone().into(), "-o".into(), body_file.clone().into()]);
    curl_args.extend(args.iter().map(OsString::from));
    let output = runner(&curl_args)?;
    let stats: Value = serde_json::from_str(&output.stdout).with_context(|| {
        format!("curl {args:?} printed {:?}, stderr {:?}", output.stdout, output.stderr)
    })?;
    let number = |key: &str| stats[key].as_u64().unwrap_or(0);
    let heads = std::fs::read(&head_file).map(|bytes| parse_heads(&bytes)).unwrap_or_default();
    Ok(Curl {
        exit: stats["exitcode"].as_i64().unwrap_or(-1),
        code: number("http_code"),
        connect: number("http_connect"),
        heads,
        body: std::fs::read(&body_file).unwrap_or_default(),
        stderr: output.stderr,
    })
}

/// Splits curl's `-D` output into its response heads.
fn parse_heads(bytes: &[u8]) -> Vec<Head> {
    let text = String::from_utf8_lossy(bytes);
    let mut heads = Vec::new();
    for block in text.split("\r\n\r\n").filter(|b| !b.trim().is_empty()) {
        // The first line is the status line.
        let headers = block
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        heads.push(Head { headers });
    }
    heads
}

/// Fetches a URL with `urllib.request.urlopen`, proxies from the environment; prints JSON.
const URLLIB: &str = r#"
import json, ssl, sys, urllib.error, urllib.parse, urllib.request

url = sys.argv[1]
cafile = sys.argv[2] if len(sys.argv) > 2 else None
host = urllib.parse.urlsplit(url).hostname
out = {"proxies": urllib.request.getproxies(), "bypass": bool(urllib.request.proxy_bypass(host))}
context = ssl.create_default_context(cafile=cafile) if cafile else None
try:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        out.update(status=response.status, body=response.read().decode())
except urllib.error.HTTPError as error:
    out.update(status=error.code, x_proxy_error=error.headers.get("x-proxy-error"),
               body=error.read().decode())
except OSError as error:
    out.update(status=0, error=str(getattr(error, "reason", error)))
print(json.dumps(out))
"#;

/// What `urllib` saw: `status` (0 when the request failed without a response, e.g. a refused
/// tunnel, with `error` set), `body`, `x_proxy_error`, and the proxies it used.
pub(crate) fn urllib(proxy: &str, url: &str, cafile: Option<&Path>) -> Result<Value> {
    let mut cmd = client("python3");
    // Both spellings: urllib prefers the lower-case one. `no_proxy` set empty on purpose, so
    // nothing (localhost included) bypasses the proxy.
    for var in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"] {
        cmd.env(var, proxy);
    }
    cmd.env("no_proxy", "").env("NO_PROXY", "");
    cmd.args(["-c", URLLIB, url]);
    if let Some(cafile) = cafile {
        cmd.arg(cafile);
    }
    let output = run(cmd, CLIENT_BOUND)?.ok("python3 urllib")?;
    let result: Value = serde_json::from_str(&output.stdout)
        .with_context(|| format!("urllib printed {:?}", output.stdout))?;
    let want = serde_json::json!({ "http": proxy, "https": proxy });
    anyhow::ensure!(
        result["proxies"] == want && result["bypass"] == false,
        "urllib would not use the proxy for {url}: {result}"
    );
    Ok(result)
}

/// `git -c http.proxy=PROXY clone URL DEST`.
pub(crate) fn git_clone(dir: &TempDir, proxy: &str, url: &str, dest: &Path) -> Result<Output> {
    let mut cmd = git(dir.path());
    cmd.args(["-c", &format!("http.proxy={proxy}"), "-c", "http.lowSpeedTime=10"]);
    cmd.args(["clone", "-q", url]).arg(dest);
    run(cmd, CLIENT_BOUND)
}

/// `python3 -m pip download --no-deps` of [`PACKAGE`] from `index` through `proxy` into `dest`.
pub(crate) fn pip_download(proxy: &str, index: &str, dest: &Path) -> Result<Output> {
    let mut cmd = client("python3");
    cmd.env("PIP_CONFIG_FILE", "/dev/null").env("no_proxy", "").env("NO_PROXY", "");
    cmd.args(["-m", "pip", "download", "--no-deps", "--no-cache-dir", "--no-input"]);
    cmd.args(["--disable-pip-version-check", "--timeout", "10", "--retries", "0"]);
    cmd.args(["--index-url", index, "--proxy", proxy, "-d"]).arg(dest).arg(PACKAGE);
    run(cmd, CLIENT_BOUND)
}
