//! The interception CA's files (`mitm = true`): its certificate in `ca_dir` for clients to
//! trust, and the per-run trust bundle `proxyd exec` hands its child.
//!
//! The CA's private key is never written: it lives in the proxy's memory only, and a new CA
//! is made at every start (README "Limited mode and HTTPS" explains the trade-off). Files are
//! written whole under a temporary name and renamed into place, so a reader never sees half a
//! file; `ca_dir` is created private to the user (0700).

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The certificate's file name inside `ca_dir`.
pub const CERT_FILE: &str = "ca.pem";

/// Where a running `proxyd` writes its CA certificate.
pub fn cert_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join(CERT_FILE)
}

/// Writes the CA certificate to `ca_dir/ca.pem` (mode 0644: it is public) and returns its path.
pub fn write_cert(ca_dir: &Path, pem: &str) -> anyhow::Result<PathBuf> {
    let path = cert_path(ca_dir);
    write_atomically(&path, pem.as_bytes(), 0o644)?;
    // Which process holds the key: `proxyd ca export` refuses a CA whose proxyd has stopped.
    write_atomically(&ca_dir.join(PID_FILE), std::process::id().to_string().as_bytes(), 0o644)?;
    Ok(path)
}

const PID_FILE: &str = "ca.pid";

/// Whether the proxyd that wrote the CA in `ca_dir` is still running (its key lives only in
/// that process's memory). `Err` says why not.
fn owner_running(ca_dir: &Path) -> anyhow::Result<()> {
    let pid_file = ca_dir.join(PID_FILE);
    let text = std::fs::read_to_string(&pid_file).with_context(|| {
        format!("reading {} (written with the certificate)", pid_file.display())
    })?;
    let pid: i32 =
        text.trim().parse().with_context(|| format!("{} holds no pid", pid_file.display()))?;
    let alive = rustix::process::Pid::from_raw(pid)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
    // A reused pid would be another program: on Linux, check it is a proxyd.
    let is_proxyd = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_or(!cfg!(target_os = "linux"), |comm| comm.trim() == "proxyd");
    if alive && is_proxyd {
        return Ok(());
    }
    anyhow::bail!(
        "the proxyd that made this interception CA (pid {pid}) is not running: its key died with it, \
         so the certificate is useless; start proxyd with network.mitm = true and export again"
    )
}

/// Writes the trust bundle for `proxyd exec`'s child: the roots it would trust anyway, then
/// proxyd's CA. The name carries the process id, so concurrent runs (each with its own CA) do
/// not overwrite each other's bundle; the caller removes it when the child is done.
pub fn write_bundle(
    ca_dir: &Path,
    ca_pem: &str,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<PathBuf> {
    let mut bundle = base_roots(env);
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca_pem);
    let path = ca_dir.join(format!("exec-{}-ca-bundle.pem", std::process::id()));
    write_atomically(&path, bundle.as_bytes(), 0o644)?;
    Ok(path)
}

/// Well-known system bundles (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, macOS/BSD).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The PEM roots a child would trust without proxyd: the file its `SSL_CERT_FILE` names (it
/// replaces the system roots for OpenSSL programs, and the child's is about to be replaced),
/// else the system bundle, else the platform roots as rustls-native-certs reads them.
fn base_roots(env: impl Fn(&str) -> Option<String>) -> String {
    let named = env("SSL_CERT_FILE").filter(|path| !path.is_empty());
    for path in named.iter().map(String::as_str).chain(SYSTEM_BUNDLES.iter().copied()) {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
    }
    let native = rustls_native_certs::load_native_certs();
    native.certs.iter().map(|der| pem("CERTIFICATE", der)).collect()
}

/// Writes `bytes` to a temporary file beside `path` created with `mode`, then renames it
/// over `path`. The parent directory is created with mode 0700 if missing.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    check_private_dir(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        // `create_new` refuses to follow a planted symlink or reuse someone else's file.
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|err| {
        let _ = std::fs::remove_file(&temp);
        anyhow::Error::new(err).context(format!("writing {}", path.display()))
    })
}

/// Refuses a directory whose files another user could replace: a symlink (it may point
/// anywhere), one owned by someone else, or one that group or others may write. Whoever trusts
/// `ca.pem` from it must be sure proxyd wrote it.
pub fn check_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let euid = rustix::process::geteuid().as_raw();
    if meta.file_type().is_symlink() {
        anyhow::bail!("{} is a symlink: ca_dir must be a real directory", dir.display());
    }
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    if meta.uid() != euid {
        anyhow::bail!("{} belongs to uid {}, not to this user ({euid})", dir.display(), meta.uid());
    }
    if meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} is writable by group or others (mode {:o}): use a private ca_dir (chmod 700)",
            dir.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// Reads `ca.pem` from `ca_dir` after the same checks as writing: a private directory, and a
/// regular file owned by this user.
pub fn read_cert(ca_dir: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    check_private_dir(ca_dir)?;
    let path = cert_path(ca_dir);
    let meta = std::fs::symlink_metadata(&path).with_context(|| {
        format!(
            "reading {} (proxyd writes it when it starts with network.mitm = true)",
            path.display()
        )
    })?;
    if !meta.is_file() || meta.uid() != rustix::process::geteuid().as_raw() {
        anyhow::bail!("{} is not a regular file owned by this user", path.display());
    }
    owner_running(ca_dir)?;
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// PEM armour (RFC 7468): base64 in 64-column lines.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn pem_is_base64_in_lines() {
        let check = |der: &[u8], body: &str| {
            assert_eq!(pem("X", der), format!("-----BEGIN X-----\n{body}-----END X-----\n"));
        };
        check(b"", "");
        check(b"f", "Zg==\n");
        check(b"fo", "Zm8=\n");
        check(b"foo", "Zm9v\n");
        check(b"foobar", "Zm9vYmFy\n");
        check(&[0xff; 48], &format!("{}\n", "/".repeat(64)));
        check(&[0; 49], &format!("{}\n{}\n", "A".repeat(64), "AA=="));
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("proxyd-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn files_are_written_whole_with_their_mode() {
        let dir = temp("write").join("nested");
        let path = write_cert(&dir, "CERT\n").expect("write");
        assert_eq!(path, dir.join("ca.pem"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "CERT\n");
        assert_eq!(mode(&path), 0o644);
        assert_eq!(mode(&dir), 0o700, "ca_dir is private to the user");
        write_cert(&dir, "NEW\n").expect("overwrite");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "NEW\n");
        let secret = dir.join("secret");
        write_atomically(&secret, b"s", 0o600).expect("write");
        assert_eq!(mode(&secret), 0o600);
        let names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(
            names.len(),
            3,
            "ca.pem, ca.pid and secret; no temporary file left behind: {names:?}"
        );
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn shared_or_foreign_ca_dirs_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp("private-check");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_private_dir(&dir).is_ok());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_private_dir(&dir).expect_err("world-writable");
        assert!(err.to_string().contains("writable by group or others"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = dir.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = check_private_dir(&link).expect_err("symlink");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(write_atomically(&link.join("ca.pem"), b"x", 0o644).is_err());
        std::fs::remove_file(&link).unwrap();
    }

    #[test]
    fn the_bundle_keeps_the_childs_roots_and_adds_the_ca() {
        let dir = temp("bundle");
        std::fs::create_dir_all(&dir).unwrap();
        let own = dir.join("own.pem");
        std::fs::write(&own, "OWN ROOTS").unwrap();
        let own_env = own.display().to_string();
        let env = |key: &str| (key == "SSL_CERT_FILE").then(|| own_env.clone());
        let bundle = write_bundle(&dir, "PROXYD CA\n", env).expect("bundle");
        assert_eq!(std::fs::read_to_string(&bundle).unwrap(), "OWN ROOTS\nPROXYD CA\n");
        // Without SSL_CERT_FILE: the system roots, then the CA.
        let bundle = write_bundle(&dir, "PROXYD CA\n", |_| None).expect("bundle");
        let text = std::fs::read_to_string(&bundle).unwrap();
        assert!(text.ends_with("PROXYD CA\n"), "{text}");
        if let Some(system) = SYSTEM_BUNDLES.iter().find_map(|p| std::fs::read_to_string(p).ok()) {
            assert!(text.starts_with(&system), "the system bundle comes first");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn export_refuses_a_ca_whose_proxyd_stopped() {
        let dir = std::env::temp_dir().join(format!("proxyd-ca-pid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let mut exited = std::process::Command::new("true").spawn().unwrap();
        let dead = exited.id();
        exited.wait().unwrap();
        std::fs::write(dir.join(PID_FILE), dead.to_string()).unwrap();
        let err = owner_running(&dir).unwrap_err().to_string();
        assert!(err.contains("is not running") && err.contains(&dead.to_string()), "{err}");
        std::fs::remove_file(dir.join(PID_FILE)).unwrap();
        assert!(owner_running(&dir).is_err(), "no pid file: not trusted either");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
