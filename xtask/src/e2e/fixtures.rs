//! Hermetic fixtures built with the real tools: a test CA and a `localhost` leaf (`openssl`), a
//! static file server with optional TLS (`python3` `http.server`), a bare git repository served
//! over the dumb HTTP protocol, a PEP 503 package index holding one hand-written wheel, and a
//! name from `/etc/hosts` that maps to loopback.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::support::{BOUND, Background, TempDir, client, run};

/// The `/etc/hosts` name `.ci/run` adds for the loopback-name scenario.
pub(crate) const HOSTS_NAME: &str = "proxyd-e2e.test";

/// The package in the local index.
pub(crate) const PACKAGE: &str = "proxyd-e2e-pkg";
pub(crate) const WHEEL: &str = "proxyd_e2e_pkg-0.1.0-py3-none-any.whl";

/// Serves a directory on `127.0.0.1:0`, with TLS when given a certificate chain and key, and
/// prints the port once bound.
const STATIC_SERVER: &str = r#"
import functools, http.server, ssl, sys

class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

handler = functools.partial(Quiet, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
if len(sys.argv) > 3:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Writes a pure-Python wheel (PEP 427) and a PEP 503 simple index for it under `sys.argv[1]`.
const WHEEL_INDEX: &str = r#"
import base64, hashlib, os, sys, zipfile

root, project, wheel = sys.argv[1], sys.argv[2], sys.argv[3]
dist = "proxyd_e2e_pkg-0.1.0.dist-info"
files = {
    "proxyd_e2e_pkg/__init__.py": b"VALUE = 42\n",
    dist + "/METADATA": b"Metadata-Version: 2.1\nName: proxyd-e2e-pkg\nVersion: 0.1.0\n",
    dist + "/WHEEL": b"Wheel-Version: 1.0\nGenerator: proxyd-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
def digest(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{name},sha256={digest(data)},{len(data)}\n" for name, data in files.items())
files[dist + "/RECORD"] = (record + dist + "/RECORD,,\n").encode()
os.makedirs(os.path.join(root, "packages"))
os.makedirs(os.path.join(root, "simple", project))
path = os.path.join(root, "packages", wheel)
with zipfile.ZipFile(path, "w") as archive:
    for name, data in files.items():
        archive.writestr(name, data)
sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
with open(os.path.join(root, "simple", "index.html"), "w") as index:
    index.write(f'<!DOCTYPE html><html><body><a href="{project}/">{project}</a></body></html>\n')
with open(os.path.join(root, "simple", project, "index.html"), "w") as index:
    index.write(f'<!DOCTYPE html><html><body><a href="../../packages/{wheel}#sha256={sha}">{wheel}</a></body></html>\n')
"#;

/// A CA and a leaf signed by it, for `localhost`, `127.0.0.1` and any other names asked for.
pub(crate) struct TestCa {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl TestCa {
    pub(crate) fn generate(dir: &Path) -> Result<TestCa> {
        TestCa::generate_for(dir, &[])
    }

    /// The leaf also names each of `names` (DNS names).
    pub(crate) fn generate_for(dir: &Path, names: &[&str]) -> Result<TestCa> {
        let path = |name: &str| dir.join(name);
        let ext = path("leaf.ext");
        let extra: String = names.iter().map(|name| format!(", DNS:{name}")).collect();
        std::fs::write(
            &ext,
            format!(
                "basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = serverAuth\n\
                 subjectAltName = DNS:localhost{extra}, IP:127.0.0.1\n"
            ),
        )?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = client("openssl");
        ca.args(["req", "-x509"]).args(ec).args(["-days", "2", "-subj", "/CN=proxyd e2e test CA"]);
        ca.args(["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca.args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        ca.arg("-keyout").arg(path("ca.key")).arg("-out").arg(path("ca.pem"));
        run(ca, BOUND)?.ok("openssl req (CA)")?;
        let mut csr = client("openssl");
        csr.arg("req").args(ec).args(["-subj", "/CN=localhost"]);
        csr.arg("-keyout").arg(path("leaf.key")).arg("-out").arg(path("leaf.csr"));
        run(csr, BOUND)?.ok("openssl req (leaf)")?;
        let mut sign = client("openssl");
        sign.args(["x509", "-req", "-days", "2", "-set_serial", "2"]);
        sign.arg("-in").arg(path("leaf.csr")).arg("-CA").arg(path("ca.pem"));
        sign.arg("-CAkey").arg(path("ca.key")).arg("-extfile").arg(&ext);
        sign.arg("-out").arg(path("leaf.pem"));
        run(sign, BOUND)?.ok("openssl x509 (sign the leaf)")?;
        Ok(TestCa { ca: path("ca.pem"), cert: path("leaf.pem"), key: path("leaf.key") })
    }
}

/// `python3` serving `root` on `127.0.0.1:0`; dropping it stops the server.
pub(crate) struct StaticServer {
    pub(crate) port: u16,
    _process: Background,
}

impl StaticServer {
    pub(crate) fn start(root: &Path, tls: Option<&TestCa>) -> Result<StaticServer> {
        let mut cmd = client("python3");
        cmd.args(["-c", STATIC_SERVER]).arg(root);
        if let Some(ca) = tls {
            cmd.arg(&ca.cert).arg(&ca.key);
        }
        let (process, line) = Background::start(cmd, "the python3 http.server")?;
        let port = line.trim().parse().with_context(|| format!("port line {line:?}"))?;
        Ok(StaticServer { port, _process: process })
    }
}

/// `git` with no system or global config and no prompts.
pub(crate) fn git(home: &Path) -> Command {
    let mut cmd = client("git");
    cmd.env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(["-c", "user.name=proxyd e2e", "-c", "user.email=e2e@proxyd.invalid"])
        .args(["-c", "init.defaultBranch=main"]);
    cmd
}

/// Creates `root/repo.git`, a bare repository with one commit holding `README` =
/// `readme`, prepared for the dumb HTTP protocol (`git update-server-info`).
pub(crate) fn git_repo(dir: &TempDir, root: &Path, readme: &str) -> Result<()> {
    let work = dir.join("work");
    let mut init = git(dir.path());
    init.args(["init", "-q"]).arg(&work);
    run(init, BOUND)?.ok("git init")?;
    std::fs::write(work.join("README"), readme)?;
    let mut add = git(dir.path());
    add.current_dir(&work).args(["add", "README"]);
    run(add, BOUND)?.ok("git add")?;
    let mut commit = git(dir.path());
    commit.current_dir(&work).args(["commit", "-q", "-m", "e2e fixture"]);
    run(commit, BOUND)?.ok("git commit")?;
    let bare = root.join("repo.git");
    let mut clone = git(dir.path());
    clone.args(["clone", "-q", "--bare"]).arg(&work).arg(&bare);
    run(clone, BOUND)?.ok("git clone --bare")?;
    let mut info = git(dir.path());
    info.current_dir(&bare).arg("update-server-info");
    run(info, BOUND)?.ok("git update-server-info")?;
    Ok(())
}

/// Writes the wheel and its simple index under `root` (`root/simple/`, `root/packages/`).
pub(crate) fn package_index(root: &Path) -> Result<()> {
    let mut cmd = client("python3");
    cmd.args(["-c", WHEEL_INDEX]).arg(root).args([PACKAGE, WHEEL]);
    run(cmd, BOUND)?.ok("write the package index")?;
    Ok(())
}

/// A name other than `localhost` that `/etc/hosts` maps to an IPv4 loopback address:
/// [`HOSTS_NAME`] when present (`.ci/run` adds it), else the first such name.
pub(crate) fn loopback_hosts_name() -> Result<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").context("read /etc/hosts")?;
    let mut names = Vec::new();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<Ipv4Addr>) else { continue };
        if !ip.is_loopback() {
            continue;
        }
        for name in fields {
            let name = name.to_ascii_lowercase();
            let localhost = name == "localhost" || name.ends_with(".localhost");
            let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !localhost && plain {
                names.push(name);
            }
        }
    }
    if names.iter().any(|n| n == HOSTS_NAME) {
        return Ok(HOSTS_NAME.to_owned());
    }
    match names.into_iter().next() {
        Some(name) => Ok(name),
        None => bail!(
            "no name but localhost maps to 127.0.0.1 in /etc/hosts; add `127.0.0.1 {HOSTS_NAME}` \
             (.ci/run does)"
        ),
    }
}
