//! Who may change the policy of a running proxyd through its config files (README "Reload
//! trust boundary"): a reload re-reads files, so a file that someone other than its owner can
//! write would let them lift the policy. Such files are warned about at start and make every
//! reload fail (the running config stays in force).

use std::path::{Path, PathBuf};

use proxyd_config::Sources;

/// The config files a reload would read that exist now.
fn files(sources: &Sources) -> Vec<PathBuf> {
    let optional = [&sources.system, &sources.user].into_iter().flatten().filter(|p| p.exists());
    optional.chain(&sources.files).cloned().collect()
}

/// Why each file is not trusted for a reload (empty when all are).
pub(crate) fn untrusted(sources: &Sources) -> Vec<String> {
    files(sources).iter().filter_map(|path| why_untrusted(path)).collect()
}

#[cfg(unix)]
fn why_untrusted(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    let me = rustix::process::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "{}: writable by group or others (mode {mode:04o}): a reload would let them change \
             the policy; run `chmod go-w {}`",
            path.display(),
            path.display()
        ));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "{}: owned by uid {}, not by proxyd's user ({me}) or root: a reload would let that \
             user change the policy",
            path.display(),
            meta.uid()
        ));
    }
    None
}

#[cfg(not(unix))]
fn why_untrusted(_: &Path) -> Option<String> {
    None
}
