//! Opening an allowed Unix socket (SPEC §7.7) without a window between check and connect.
//!
//! The policy pinned each `allow_unix_sockets` entry at load: its canonical path and the
//! device, inode and birth time of the socket found there. Here the canonical path is opened `O_PATH`
//! (which pins the inode for as long as the descriptor lives), the descriptor's inode is
//! compared with the pinned one, and the connection goes through `/proc/self/fd/N`, so it
//! reaches exactly the inode that was checked, whatever happens to the path meanwhile. A
//! replaced socket, or a path retargeted through a symlink, is [`OpenError::Changed`].

use std::io;

use proxyd_policy::{FileId, UnixSocketRule};
use tokio::net::UnixStream;

pub(crate) enum OpenError {
    /// The path no longer leads to the socket the policy was loaded with.
    Changed,
    Io(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(error: io::Error) -> OpenError {
        OpenError::Io(error)
    }
}

#[cfg(target_os = "linux")]
pub(crate) async fn open(rule: &UnixSocketRule) -> Result<UnixStream, OpenError> {
    use std::os::fd::AsRawFd as _;

    use rustix::fs::{Mode, OFlags};

    let Some(pinned) = rule.socket else { return Err(OpenError::Changed) };
    let fd = rustix::fs::open(&rule.canonical, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(io::Error::from)?;
    let stat = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
    let mut found = FileId { dev: stat.st_dev, ino: stat.st_ino, birth: None };
    if pinned.birth.is_some() {
        use rustix::fs::{AtFlags, StatxFlags};
        let statx = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::BTIME)
            .map_err(io::Error::from)?;
        if statx.stx_mask & StatxFlags::BTIME.bits() != 0 {
            found.birth = Some((statx.stx_btime.tv_sec, statx.stx_btime.tv_nsec));
        }
    }
    if found != pinned {
        tracing::warn!(path = %rule.canonical.display(), "unix socket replaced since the policy was loaded");
        return Err(OpenError::Changed);
    }
    let through = format!("/proc/self/fd/{}", fd.as_raw_fd());
    // The descriptor stays open across the connect, so the inode cannot be swapped under it.
    let stream = connect(&through).await?;
    drop(fd);
    Ok(stream)
}

/// Without `/proc/self/fd`, the inode is compared before and after the connect: a swap and a
/// swap back in between would go unseen (documented in the README).
#[cfg(all(unix, not(target_os = "linux")))]
pub(crate) async fn open(rule: &UnixSocketRule) -> Result<UnixStream, OpenError> {
    use std::os::unix::fs::MetadataExt as _;

    let Some(pinned) = rule.socket else { return Err(OpenError::Changed) };
    let id = |meta: std::fs::Metadata| {
        let birth = meta.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let birth =
            birth.map(|d| (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()));
        FileId { dev: meta.dev(), ino: meta.ino(), birth }
    };
    if id(std::fs::metadata(&rule.canonical)?) != pinned {
        return Err(OpenError::Changed);
    }
    let stream = connect(&rule.canonical).await?;
    if id(std::fs::metadata(&rule.canonical)?) != pinned {
        return Err(OpenError::Changed);
    }
    Ok(stream)
}

#[expect(clippy::disallowed_methods, reason = "the one unix-socket egress (SPEC §7.7)")]
async fn connect(path: impl AsRef<std::path::Path>) -> io::Result<UnixStream> {
    UnixStream::connect(path).await
}
