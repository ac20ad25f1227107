//! Allowlisted destinations through every client: the request arrives, in the right form, and
//! proxyd logs an `allow` decision for it (so the client really went through the proxy).

use anyhow::{Context, Result, ensure};

use super::Env;
use super::clients::{curl, git_clone, pip_download, urllib};
use super::fixtures::{StaticServer, TestCa, WHEEL, git_repo, package_index};
use super::proxyd::{Proxyd, list};
use super::servers::Origin;
use super::support::TempDir;

/// A TLS origin for `localhost`/`127.0.0.1` serving `/index.html` = [`TLS_BODY`].
struct Tls {
    ca: TestCa,
    server: StaticServer,
    _dir: TempDir,
}

const TLS_BODY: &str = "hello over tls\n";

impl Tls {
    fn start() -> Result<Tls> {
        let dir = TempDir::new("tls")?;
        let ca = TestCa::generate(dir.path())?;
        let root = dir.join("www");
        std::fs::create_dir(&root)?;
        std::fs::write(root.join("index.html"), TLS_BODY)?;
        let server = StaticServer::start(&root, Some(&ca))?;
        Ok(Tls { ca, server, _dir: dir })
    }

    fn cafile(&self) -> Result<&str> {
        self.ca.ca.to_str().context("non-UTF-8 temp path")
    }
}

/// `curl -x`: absolute-form `GET` and a `POST` body, forwarded in origin-form with `Via`.
pub(crate) fn curl_absolute_form(env: &Env) -> Result<()> {
    let origin = Origin::start()?;
    let proxyd = Proxyd::start(env, &list("allowed_domains", &["localhost"]))?;
    let port = origin.port();
    curl(&["-x", &proxyd.url(), &format!("http://localhost:{port}/a?b=1")])?
        .expect_ok("origin GET /a?b=1\n")?;
    curl(&["-x", &proxyd.url(), "-d", "hello=1", &format!("http://localhost:{port}/post")])?
        .expect_ok("origin POST /post\n")?;
    let requests = origin.requests();
    ensure!(requests.len() == 2, "the origin saw {requests:?}");
    ensure!(requests[0].target == "/a?b=1", "not origin-form: {:?}", requests[0]);
    ensure!(requests[0].header("via").is_some(), "no via header: {:?}", requests[0]);
    let host = format!("localhost:{port}");
    ensure!(requests[0].header("host") == Some(host.as_str()), "host: {:?}", requests[0]);
    ensure!(requests[1].body == b"hello=1", "body not forwarded: {:?}", requests[1]);
    proxyd.wait_for_decision("http", "localhost", port, "allow", "allowed")?;
    Ok(())
}

/// `--proxy-header`: credentials meant for the proxy never reach the origin, in absolute-form
/// or inside a `CONNECT` tunnel (`-p`), and TLS through a tunnel still works.
pub(crate) fn curl_proxy_header(env: &Env) -> Result<()> {
    let origin = Origin::start()?;
    let tls = Tls::start()?;
    let proxyd = Proxyd::start(env, &list("allowed_domains", &["localhost"]))?;
    let port = origin.port();
    let proxy_headers = [
        "--proxy-header",
        "Proxy-Authorization: Basic ZTJlOnNlY3JldA==",
        "--proxy-header",
        "X-E2E-Proxy: for-the-proxy",
        "-H",
        "X-E2E-Origin: for-the-origin",
    ];
    let proxy = proxyd.url();
    let mut args = vec!["-x", proxy.as_str()];
    args.extend(proxy_headers);
    let absolute = format!("http://localhost:{port}/absolute");
    curl(&[args.as_slice(), &[absolute.as_str()]].concat())?.expect_ok("origin GET /absolute\n")?;
    let tunnelled = format!("http://localhost:{port}/tunnelled");
    let response = curl(&[args.as_slice(), &["-p", tunnelled.as_str()]].concat())?;
    response.expect_ok("origin GET /tunnelled\n")?;
    ensure!(response.connect == 200, "no tunnel: {}", response.summary());
    let https = format!("https://localhost:{}/index.html", tls.server.port);
    let response = curl(&[args.as_slice(), &["--cacert", tls.cafile()?, https.as_str()]].concat())?;
    response.expect_ok(TLS_BODY)?;
    for request in origin.requests() {
        ensure!(request.header("proxy-authorization").is_none(), "leaked: {request:?}");
        ensure!(request.header("x-e2e-origin").is_some(), "origin header lost: {request:?}");
    }
    let tunnelled = &origin.requests()[1];
    ensure!(tunnelled.header("x-e2e-proxy").is_none(), "proxy header in a tunnel: {tunnelled:?}");
    proxyd.wait_for_decision("http-connect", "localhost", port, "allow", "allowed")?;
    Ok(())
}

/// `https://` through `CONNECT`, verified against the test CA, by name and by IP literal.
pub(crate) fn curl_https_connect(env: &Env) -> Result<()> {
    let tls = Tls::start()?;
    let proxyd = Proxyd::start(env, &list("allowed_domains", &["localhost", "127.0.0.1"]))?;
    let port = tls.server.port;
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{port}/index.html");
        let response = curl(&["-x", &proxyd.url(), "--cacert", tls.cafile()?, &url])?;
        response.expect_ok(TLS_BODY)?;
        ensure!(response.connect == 200, "CONNECT answered {}", response.summary());
        proxyd.wait_for_decision("http-connect", host, port, "allow", "allowed")?;
    }
    Ok(())
}

/// `--socks5` (curl resolves: IPv4 address type) and `--socks5-hostname` (domain type), plain
/// HTTP and TLS.
pub(crate) fn curl_socks5(env: &Env) -> Result<()> {
    let origin = Origin::start()?;
    let tls = Tls::start()?;
    let proxyd = Proxyd::start(env, &list("allowed_domains", &["localhost", "127.0.0.1"]))?;
    let socks = proxyd.socks.to_string();
    let port = origin.port();
    curl(&["--socks5", &socks, &format!("http://127.0.0.1:{port}/ip")])?
        .expect_ok("origin GET /ip\n")?;
    proxyd.wait_for_decision("socks5", "127.0.0.1", port, "allow", "allowed")?;
    curl(&["--socks5-hostname", &socks, &format!("http://localhost:{port}/name")])?
        .expect_ok("origin GET /name\n")?;
    proxyd.wait_for_decision("socks5", "localhost", port, "allow", "allowed")?;
    let https = format!("https://localhost:{}/index.html", tls.server.port);
    curl(&["--socks5-hostname", &socks, "--cacert", tls.cafile()?, &https])?.expect_ok(TLS_BODY)?;
    Ok(())
}

/// Python's `urllib` with `HTTP_PROXY`/`HTTPS_PROXY` (and `no_proxy` empty): plain HTTP
/// forwarded, HTTPS tunnelled, and a block surfaced as an `HTTPError`.
pub(crate) fn python_urllib(env: &Env) -> Result<()> {
    let origin = Origin::start()?;
    let tls = Tls::start()?;
    let proxyd = Proxyd::start(env, &list("allowed_domains", &["localhost"]))?;
    let proxy = proxyd.url();
    let port = origin.port();
    let got = urllib(&proxy, &format!("http://localhost:{port}/py"), None)?;
    ensure!(got["status"] == 200 && got["body"] == "origin GET /py\n", "urllib got {got}");
    ensure!(origin.requests()[0].header("via").is_some(), "not proxied: {:?}", origin.requests());
    let https = format!("https://localhost:{}/index.html", tls.server.port);
    let got = urllib(&proxy, &https, Some(&tls.ca.ca))?;
    ensure!(got["status"] == 200 && got["body"] == TLS_BODY, "urllib https got {got}");
    proxyd.wait_for_decision("http-connect", "localhost", tls.server.port, "allow", "allowed")?;
    let got = urllib(&proxy, "http://unknown.test/", None)?;
    ensure!(
        got["status"] == 403 && got["x_proxy_error"] == "blocked-by-allowlist",
        "urllib on a miss got {got}"
    );
    Ok(())
}

/// `git clone` over the dumb HTTP protocol from a local server, through `http.proxy`.
pub(crate) fn git_clone_http(env: &Env) -> Result<()> {
    let dir = TempDir::new("git")?;
    let root = dir.join("www");
    std::fs::create_dir(&root)?;
    git_repo(&dir, &root, "hello from git\n")?;
    let server = StaticServer::start(&root, None)?;
    let proxyd = Proxyd::start(env, &list("allowed_domains", &["localhost"]))?;
    let dest = dir.join("clone");
    let url = format!("http://localhost:{}/repo.git", server.port);
    git_clone(&dir, &proxyd.url(), &url, &dest)?.ok("git clone through proxyd")?;
    let readme = std::fs::read_to_string(dest.join("README")).context("cloned README")?;
    ensure!(readme == "hello from git\n", "cloned README is {readme:?}");
    proxyd.wait_for_decision("http", "localhost", server.port, "allow", "allowed")?;
    Ok(())
}

/// `pip download` from a local PEP 503 index, through `--proxy`.
pub(crate) fn pip_download_index(env: &Env) -> Result<()> {
    let dir = TempDir::new("pip")?;
    let root = dir.join("www");
    std::fs::create_dir(&root)?;
    package_index(&root)?;
    let server = StaticServer::start(&root, None)?;
    let proxyd = Proxyd::start(env, &list("allowed_domains", &["localhost"]))?;
    let dest = dir.join("downloads");
    let index = format!("http://localhost:{}/simple/", server.port);
    pip_download(&proxyd.url(), &index, &dest)?.ok("pip download through proxyd")?;
    let got = std::fs::read(dest.join(WHEEL)).context("the downloaded wheel")?;
    let want = std::fs::read(root.join("packages").join(WHEEL)).context("the served wheel")?;
    ensure!(got == want, "the downloaded wheel differs from the served one");
    proxyd.wait_for_decision("http", "localhost", server.port, "allow", "allowed")?;
    Ok(())
}
