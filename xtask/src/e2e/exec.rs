//! What users run: `proxyd exec` with pip, curl, npm and cargo, in full mode and in limited mode
//! with interception (`mitm = true`), against package indexes the harness serves on loopback: a
//! PEP 503 index (HTTP and HTTPS), an npm registry stand-in (a packument and an `npm pack`ed
//! tarball) and a cargo sparse registry (an index file and a `cargo package`d crate).
//!
//! The registries answer as [`HOST`], a `*.localhost` name (loopback without DNS, RFC 6761),
//! over TLS with a leaf from the test CA. proxyd trusts that CA through its own `SSL_CERT_FILE`;
//! the user's tools trust it through their usual variables, standing in for the system roots.
//! Under `mitm`, `proxyd exec` replaces those with its bundle (the same roots plus its CA). Reads
//! must pass in both modes, and writes (`npm publish`, `cargo publish`, a `POST`) must be refused
//! with `blocked-by-method-policy` in limited mode. Every decision proxyd logs must be about
//! [`HOST`]: nothing else (a real registry, an update check) was tried.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::Env;
use super::clients::{CLIENT_BOUND, Curl, curl_through};
use super::fixtures::{PACKAGE, StaticServer, TestCa, WHEEL, package_index};
use super::proxyd::list;
use super::support::{BOUND, Output, TempDir, client, run};

/// The registries' name, the only allowlist entry.
const HOST: &str = "registry.localhost";

/// The npm package in the registry stand-in, and the version `npm publish` tries to add.
const NPM_PACKAGE: &str = "proxyd-e2e-npm";
const NPM_VERSION: &str = "0.1.0";
const NPM_NEW_VERSION: &str = "0.2.0";
const NPM_MAIN: &str = "module.exports = 42;\n";

/// The crate in the sparse registry.
const CRATE: &str = "proxyd-e2e-crate";
const CRATE_VERSION: &str = "0.1.0";
const CRATE_NEW_VERSION: &str = "0.2.0";

/// What `curl` fetches.
const CURL_BODY: &str = "hello from the registry\n";

/// The two modes a user runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    LimitedMitm,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Full, Mode::LimitedMitm];

    fn config(self) -> String {
        let allow = list("allowed_domains", &[HOST]);
        match self {
            Mode::Full => format!("[network]\n{allow}\n"),
            Mode::LimitedMitm => format!("[network]\n{allow}\nmode = \"limited\"\nmitm = true\n"),
        }
    }

    /// The protocol of the decision that lets an HTTPS read through: the tunnel in full mode,
    /// each request inside it when intercepted.
    fn https_protocol(self) -> &'static str {
        match self {
            Mode::Full => "http-connect",
            Mode::LimitedMitm => "https",
        }
    }
}

/// One static root served as [`HOST`] over HTTPS and over plain HTTP.
struct Registry {
    ca: TestCa,
    root: PathBuf,
    https: StaticServer,
    http: StaticServer,
    dir: TempDir,
}

impl Registry {
    fn start() -> Result<Registry> {
        let dir = TempDir::new("registry")?;
        let ca = TestCa::generate_for(dir.path(), &[HOST])?;
        let root = dir.join("www");
        std::fs::create_dir(&root)?;
        let https = StaticServer::start(&root, Some(&ca))?;
        let http = StaticServer::start(&root, None)?;
        Ok(Registry { ca, root, https, http, dir })
    }

    fn https_url(&self) -> String {
        format!("https://{HOST}:{}", self.https.port)
    }

    fn http_url(&self) -> String {
        format!("http://{HOST}:{}", self.http.port)
    }

    /// `npm pack`s a tiny package (a `package.json` and its main file) into the root, and
    /// writes its packument at `/NAME`.
    fn npm(&self) -> Result<()> {
        let package = self.dir.join("npm-package");
        write_npm_package(&package, NPM_VERSION)?;
        let mut pack = client("npm");
        pack.current_dir(&package).env("HOME", self.dir.path());
        pack.env("npm_config_update_notifier", "false");
        pack.args(["pack", "--json", "--pack-destination"]).arg(&self.root);
        let packed = run(pack, CLIENT_BOUND)?.ok("npm pack")?;
        let packed: Value = serde_json::from_str(&packed.stdout)
            .with_context(|| format!("npm pack --json printed {:?}", packed.stdout))?;
        let packed = &packed[0];
        let filename = packed["filename"].as_str().context("npm pack: no filename")?;
        let tarball = format!("{}/{filename}", self.https_url());
        let packument = json!({
            "name": NPM_PACKAGE,
            "dist-tags": { "latest": NPM_VERSION },
            "versions": { NPM_VERSION: {
                "name": NPM_PACKAGE,
                "version": NPM_VERSION,
                "main": "index.js",
                "dist": {
                    "tarball": tarball,
                    "integrity": packed["integrity"],
                    "shasum": packed["shasum"],
                },
            } },
        });
        std::fs::write(self.root.join(NPM_PACKAGE), packument.to_string())?;
        Ok(())
    }

    /// `cargo package`s a tiny crate and lays out a sparse registry for it: `index/config.json`,
    /// the index file, and the `.crate` where `dl` says.
    fn crates(&self) -> Result<()> {
        let source = self.dir.join("crate");
        write_crate(&source, CRATE_VERSION)?;
        let target = self.dir.join("crate-target");
        let mut package = cargo_command();
        package.current_dir(&source);
        package.env("CARGO_HOME", self.dir.join("cargo-home")).env("CARGO_TARGET_DIR", &target);
        package.args(["package", "--no-verify", "--allow-dirty", "--offline", "--quiet"]);
        run(package, CLIENT_BOUND)?.ok("cargo package")?;
        let file = format!("{CRATE}-{CRATE_VERSION}.crate");
        let packaged = target.join("package").join(&file);
        let download = self.root.join(format!("api/v1/crates/{CRATE}/{CRATE_VERSION}"));
        std::fs::create_dir_all(&download)?;
        std::fs::copy(&packaged, download.join("download"))
            .with_context(|| format!("copy {}", packaged.display()))?;
        let line = json!({
            "name": CRATE,
            "vers": CRATE_VERSION,
            "deps": [],
            "cksum": sha256(&packaged)?,
            "features": {},
            "yanked": false,
        });
        let index = self.root.join("index").join(sparse_index_path(CRATE));
        std::fs::create_dir_all(index.parent().context("index path")?)?;
        std::fs::write(&index, format!("{line}\n"))?;
        let config = json!({
            "dl": format!("{}/api/v1/crates", self.https_url()),
            "api": self.https_url(),
        });
        std::fs::write(self.root.join("index/config.json"), config.to_string())?;
        Ok(())
    }
}

/// `DIR/package.json` and `DIR/index.js` of [`NPM_PACKAGE`] at `version`.
fn write_npm_package(dir: &Path, version: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let manifest = json!({ "name": NPM_PACKAGE, "version": version, "main": "index.js" });
    std::fs::write(dir.join("package.json"), manifest.to_string())?;
    std::fs::write(dir.join("index.js"), NPM_MAIN)?;
    Ok(())
}

/// A crate [`CRATE`] at `version` in `dir`, its own workspace.
fn write_crate(dir: &Path, version: &str) -> Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{CRATE}\"\nversion = \"{version}\"\nedition = \"2021\"\n\
             description = \"proxyd e2e fixture\"\nlicense = \"MIT\"\n\n[workspace]\n"
        ),
    )?;
    std::fs::write(dir.join("src/lib.rs"), "pub const VALUE: u32 = 42;\n")?;
    Ok(())
}

/// Where a sparse index keeps a crate of four or more characters: `ab/cd/abcd…`.
fn sparse_index_path(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    format!("{}/{}/{name}", &name[..2], &name[2..4])
}

fn sha256(path: &Path) -> Result<String> {
    let mut cmd = client("python3");
    cmd.args([
        "-c",
        "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())",
    ]);
    cmd.arg(path);
    Ok(run(cmd, BOUND)?.ok("sha256")?.stdout.trim().to_owned())
}

/// The cargo of the toolchain running the harness (`$CARGO`), not a rustup proxy.
fn cargo_command() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    client(&program.to_string_lossy())
}

/// The real interpreter behind `python3` (a pyenv shim needs a `HOME` the runs do not have).
fn python() -> Result<String> {
    let mut cmd = client("python3");
    cmd.args(["-c", "import sys; print(sys.executable)"]);
    Ok(run(cmd, BOUND)?.ok("python3 sys.executable")?.stdout.trim().to_owned())
}

/// One user's machine for one mode: an empty home, a `CODEX_HOME`, a proxyd config.
struct User<'a> {
    env: &'a Env,
    registry: &'a Registry,
    mode: Mode,
    dir: TempDir,
}

impl<'a> User<'a> {
    fn new(env: &'a Env, registry: &'a Registry, mode: Mode) -> Result<User<'a>> {
        let dir = TempDir::new("user")?;
        std::fs::create_dir(dir.join("home"))?;
        std::fs::write(dir.join("proxyd.toml"), mode.config())?;
        Ok(User { env, registry, mode, dir })
    }

    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// `proxyd --log-format json exec --config FILE -- PROGRAM` in `cwd`, with a clean
    /// environment: `PATH`, the empty home, decision events on stderr, and the test CA as
    /// both proxyd's own extra root and the roots the user's tools trust.
    fn command(&self, cwd: &Path, program: impl AsRef<OsStr>) -> Command {
        let ca = &self.registry.ca.ca;
        let mut cmd = Command::new(&self.env.proxyd);
        cmd.env_clear().current_dir(cwd).stdin(Stdio::null());
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("HOME", self.home()).env("CODEX_HOME", self.dir.path());
        cmd.env("RUST_LOG", "proxyd::decision=info");
        cmd.env("SSL_CERT_FILE", ca);
        for var in ["REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
            cmd.env(var, ca);
        }
        cmd.args(["--log-format", "json", "exec", "--config"]).arg(self.dir.join("proxyd.toml"));
        cmd.arg("--").arg(program);
        cmd
    }

    fn run(&self, cmd: Command) -> Result<Run> {
        Ok(Run { output: run(cmd, CLIENT_BOUND)?, mode: self.mode })
    }

    /// curl under `proxyd exec`.
    fn curl(&self, args: &[&str]) -> Result<Curl> {
        curl_through(args, |curl_args| {
            let mut cmd = self.command(self.dir.path(), "curl");
            cmd.args(curl_args);
            run(cmd, CLIENT_BOUND)
        })
    }

    /// `npm ARGS` against the registry stand-in, with no audit, fund or update checks and no
    /// retries.
    ///
    /// Workaround: Debian's npm ships a built-in `cafile=/etc/ssl/certs/ca-certificates.crt`,
    /// and a `cafile` replaces Node's roots, `NODE_EXTRA_CA_CERTS` included, so npm would not
    /// trust the test CA in full mode (no interception: npm talks TLS to the registry itself).
    /// `npm_config_cafile` is pointed at `SSL_CERT_FILE`, the user's roots; under `mitm`,
    /// `proxyd exec` sets both to its bundle already, so the wrapper changes nothing there.
    fn npm(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command(cwd, "sh");
        cmd.args(["-c", "npm_config_cafile=\"$SSL_CERT_FILE\" exec npm \"$@\"", "sh"]);
        cmd.args(args);
        cmd.args(["--registry", &format!("{}/", self.registry.https_url())]);
        cmd.args(["--no-audit", "--no-fund", "--no-update-notifier", "--prefer-online"]);
        cmd.args(["--fetch-retries", "0", "--fetch-timeout", "10000"]);
        cmd
    }

    /// `cargo ARGS` with its own `CARGO_HOME` (whose `config.toml` names the sparse registry
    /// `local`) and target directory, no retries.
    fn cargo(&self, cwd: &Path, args: &[&str]) -> Result<Command> {
        let cargo_home = self.dir.join("cargo-home");
        std::fs::create_dir_all(&cargo_home)?;
        let index = format!("sparse+{}/index/", self.registry.https_url());
        std::fs::write(
            cargo_home.join("config.toml"),
            format!("[registries.local]\nindex = \"{index}\"\n"),
        )?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut cmd = self.command(cwd, cargo);
        cmd.env("CARGO_HOME", &cargo_home).env("CARGO_TARGET_DIR", self.dir.join("target"));
        cmd.env("CARGO_NET_RETRY", "0").env("CARGO_HTTP_TIMEOUT", "10");
        cmd.env("CARGO_TERM_COLOR", "never");
        // The toolchain's rustc (cargo asks it for target information) behind rustup's proxy.
        let rustup_home = std::env::var_os("RUSTUP_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".rustup")));
        if let Some(rustup_home) = rustup_home.filter(|dir| dir.is_dir()) {
            cmd.env("RUSTUP_HOME", rustup_home);
        }
        if let Some(toolchain) = std::env::var_os("RUSTUP_TOOLCHAIN") {
            cmd.env("RUSTUP_TOOLCHAIN", toolchain);
        }
        cmd.args(args);
        Ok(cmd)
    }
}

/// One finished `proxyd exec` run.
struct Run {
    output: Output,
    mode: Mode,
}

impl Run {
    fn ok(self, what: &str) -> Result<Run> {
        ensure!(
            self.output.status.success(),
            "{what} in {:?} mode failed ({}): {}{}",
            self.mode,
            self.output.status,
            self.output.stderr.trim(),
            self.output.stdout.trim()
        );
        Ok(self)
    }

    fn reads(&self, protocol: &str) -> Result<()> {
        reads(&self.output.stderr, self.mode, protocol)
    }
}

/// The decision events proxyd logged (JSON lines among the command's own stderr).
fn decisions(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["fields"]["message"] == "decision")
        .map(|event| event["fields"].clone())
        .collect()
}

/// Everything proxyd decided was about [`HOST`] and allowed, in `mode`, and at least one
/// `GET` (or, for a tunnel, its `CONNECT`) was allowed over `protocol`.
fn reads(stderr: &str, mode: Mode, protocol: &str) -> Result<()> {
    let events = decisions(stderr);
    let mode_name = match mode {
        Mode::Full => "full",
        Mode::LimitedMitm => "limited",
    };
    for event in &events {
        ensure!(
            event["host"] == HOST && event["decision"] == "allow" && event["mode"] == mode_name,
            "proxyd decided {event} (want only allowed {mode_name}-mode requests to {HOST})"
        );
    }
    let method = if protocol == "http-connect" { "CONNECT" } else { "GET" };
    ensure!(
        events.iter().any(|e| e["protocol"] == protocol && e["method"] == method),
        "no allowed {method} over {protocol} among proxyd's decisions {events:?}; stderr:\n{stderr}"
    );
    Ok(())
}

/// proxyd logged a `method_not_allowed` block of `method` over intercepted HTTPS.
fn write_refused(stderr: &str, method: &str) -> Result<()> {
    let events = decisions(stderr);
    ensure!(
        events.iter().any(|e| e["protocol"] == "https"
            && e["method"] == method
            && e["decision"] == "block"
            && e["reason"] == "method_not_allowed"),
        "no method_not_allowed block of {method} among {events:?}"
    );
    ensure!(stderr.contains("method_not_allowed via https"), "no blocked summary: {stderr}");
    Ok(())
}

/// `pip download` from the PEP 503 index over HTTP and HTTPS.
pub(crate) fn pip(env: &Env) -> Result<()> {
    let registry = Registry::start()?;
    package_index(&registry.root)?;
    let want = std::fs::read(registry.root.join("packages").join(WHEEL))?;
    let python = python()?;
    for mode in Mode::ALL {
        let user = User::new(env, &registry, mode)?;
        let indexes =
            [(registry.http_url(), "http"), (registry.https_url(), mode.https_protocol())];
        for (n, (base, protocol)) in indexes.into_iter().enumerate() {
            let dest = user.dir.join(&format!("downloads-{n}"));
            let mut cmd = user.command(user.dir.path(), &python);
            cmd.env("PIP_CONFIG_FILE", "/dev/null");
            cmd.args(["-m", "pip", "download", "--no-deps", "--no-cache-dir", "--no-input"]);
            cmd.args(["--disable-pip-version-check", "--timeout", "10", "--retries", "0"]);
            cmd.args(["--index-url", &format!("{base}/simple/"), "-d"]).arg(&dest).arg(PACKAGE);
            if protocol == "http" {
                // pip takes only `localhost` itself as a secure origin over plain HTTP.
                cmd.args(["--trusted-host", HOST]);
            }
            let what = format!("pip download from {base}");
            let run = user.run(cmd)?.ok(&what)?;
            let got = std::fs::read(dest.join(WHEEL)).with_context(|| what.clone())?;
            ensure!(got == want, "{what}: the downloaded wheel differs from the served one");
            run.reads(protocol).context(what)?;
        }
    }
    Ok(())
}

/// `curl` `GET`s over HTTP and HTTPS; a `POST` reaches the origin in full mode (which
/// answers `501`) and is refused in limited mode.
pub(crate) fn curl(env: &Env) -> Result<()> {
    let registry = Registry::start()?;
    std::fs::write(registry.root.join("hello.txt"), CURL_BODY)?;
    for mode in Mode::ALL {
        let user = User::new(env, &registry, mode)?;
        let bases = [(registry.http_url(), "http"), (registry.https_url(), mode.https_protocol())];
        for (base, protocol) in bases {
            let url = format!("{base}/hello.txt");
            let got = user.curl(&[&url])?;
            got.expect_ok(CURL_BODY).with_context(|| format!("{mode:?}: GET {url}"))?;
            reads(&got.stderr, mode, protocol).with_context(|| format!("GET {url}"))?;
            let post = user.curl(&["-d", "x=1", &url])?;
            let what = format!("{mode:?}: POST {url}");
            match mode {
                Mode::Full => ensure!(
                    post.code == 501 && post.header("x-proxy-error").is_none(),
                    "{what}: want the origin's 501, got {}",
                    post.summary()
                ),
                Mode::LimitedMitm => {
                    let body = post.body_json().context(what.clone())?;
                    ensure!(
                        post.code == 403
                            && post.header("x-proxy-error") == Some("blocked-by-method-policy")
                            && body["reason"] == "method_not_allowed",
                        "{what}: want 403 blocked-by-method-policy, got {}",
                        post.summary()
                    );
                }
            }
        }
    }
    Ok(())
}

/// `npm install` of a package from the registry stand-in; `npm publish` refused in limited
/// mode.
pub(crate) fn npm(env: &Env) -> Result<()> {
    let registry = Registry::start()?;
    registry.npm()?;
    for mode in Mode::ALL {
        let user = User::new(env, &registry, mode)?;
        let app = user.dir.join("app");
        std::fs::create_dir(&app)?;
        let manifest = json!({
            "name": "proxyd-e2e-app",
            "version": "1.0.0",
            "private": true,
            "dependencies": { NPM_PACKAGE: NPM_VERSION },
        });
        std::fs::write(app.join("package.json"), manifest.to_string())?;
        let run = user.run(user.npm(&app, &["install"]))?.ok("npm install")?;
        let installed = app.join("node_modules").join(NPM_PACKAGE).join("index.js");
        let main = std::fs::read_to_string(&installed)
            .with_context(|| format!("{mode:?}: {}", installed.display()))?;
        ensure!(main == NPM_MAIN, "{mode:?}: installed index.js is {main:?}");
        run.reads(mode.https_protocol()).context("npm install")?;
        if mode == Mode::LimitedMitm {
            let new = user.dir.join("publish");
            write_npm_package(&new, NPM_NEW_VERSION)?;
            // A token, so that npm sends the `PUT` instead of asking for a login.
            let npmrc = user.dir.join("npmrc");
            let registry_key = registry.https_url().replacen("https:", "", 1);
            std::fs::write(&npmrc, format!("{registry_key}/:_authToken=e2e-not-a-token\n"))?;
            let mut publish = user.npm(&new, &["publish"]);
            publish.arg("--userconfig").arg(&npmrc);
            let run = user.run(publish)?;
            let stderr = &run.output.stderr;
            ensure!(
                !run.output.status.success() && stderr.contains("403"),
                "npm publish in limited mode: want a 403 failure, got {:?}",
                run.output
            );
            write_refused(stderr, "PUT").context("npm publish")?;
        }
    }
    Ok(())
}

/// `cargo fetch` of a crate from the sparse registry (the lockfile is generated and the
/// `.crate` downloaded); `cargo publish` refused in limited mode.
pub(crate) fn cargo(env: &Env) -> Result<()> {
    let registry = Registry::start()?;
    registry.crates()?;
    for mode in Mode::ALL {
        let user = User::new(env, &registry, mode)?;
        let consumer = user.dir.join("consumer");
        std::fs::create_dir_all(consumer.join("src"))?;
        std::fs::write(
            consumer.join("Cargo.toml"),
            format!(
                "[package]\nname = \"proxyd-e2e-consumer\"\nversion = \"0.1.0\"\n\
                 edition = \"2021\"\n\n[dependencies]\n\
                 {CRATE} = {{ version = \"{CRATE_VERSION}\", registry = \"local\" }}\n\n\
                 [workspace]\n"
            ),
        )?;
        std::fs::write(consumer.join("src/lib.rs"), "")?;
        let run = user.run(user.cargo(&consumer, &["fetch"])?)?.ok("cargo fetch")?;
        let lock = std::fs::read_to_string(consumer.join("Cargo.lock")).context("Cargo.lock")?;
        ensure!(lock.contains(&format!("name = \"{CRATE}\"")), "{mode:?}: Cargo.lock is {lock}");
        let cache = user.dir.join("cargo-home/registry/cache");
        let file = format!("{CRATE}-{CRATE_VERSION}.crate");
        ensure!(
            find_file(&cache, &file)?,
            "{mode:?}: cargo fetch downloaded no {file} under {}",
            cache.display()
        );
        run.reads(mode.https_protocol()).context("cargo fetch")?;
        if mode == Mode::LimitedMitm {
            let new = user.dir.join("publish");
            write_crate(&new, CRATE_NEW_VERSION)?;
            let mut publish = user.cargo(&new, &["publish", "--registry", "local"])?;
            publish.args(["--no-verify", "--allow-dirty"]);
            publish.env("CARGO_REGISTRIES_LOCAL_TOKEN", "e2e-not-a-token");
            let run = user.run(publish)?;
            ensure!(
                !run.output.status.success() && run.output.stderr.contains("403"),
                "cargo publish in limited mode: want a 403 failure, got {:?}",
                run.output
            );
            write_refused(&run.output.stderr, "PUT").context("cargo publish")?;
        }
    }
    Ok(())
}

/// Whether `dir` has a file called `name` one level down (`dir/*/name`).
fn find_file(dir: &Path, name: &str) -> Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(err) => bail!("read {}: {err}", dir.display()),
    };
    for entry in entries {
        if entry?.path().join(name).is_file() {
            return Ok(true);
        }
    }
    Ok(false)
}
