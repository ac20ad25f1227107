//! Unique temporary directories removed on drop (std only).

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

/// A directory under the system temp dir, removed with its contents when dropped.
///
/// Derefs to [`Path`], so `dir.join("ca.pem")` works.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

/// Creates a fresh, empty directory named `{prefix}-{pid}-{nanos}-{n}` in the system temp dir.
pub fn temp_dir(prefix: &str) -> anyhow::Result<TempDir> {
    TempDir::new(prefix)
}

impl TempDir {
    /// See [`temp_dir`].
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let pid = std::process::id();
        let mut last_error = None;
        for _ in 0..16 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{prefix}-{pid}-{nanos}-{n}"));
            // `create_dir` fails on an existing path, so the directory is ours alone.
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    last_error = Some(error);
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("create {}", path.display()));
                }
            }
        }
        Err(last_error.map_or_else(|| anyhow::anyhow!("no attempt made"), anyhow::Error::from))
            .with_context(|| format!("no free temporary directory name for {prefix:?}"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temp dir is harmless.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::temp_dir;

    #[test]
    fn unique_and_removed_on_drop() -> anyhow::Result<()> {
        let a = temp_dir("proxyd-test")?;
        let b = temp_dir("proxyd-test")?;
        assert_ne!(a.path(), b.path());
        assert!(a.is_dir() && b.is_dir());
        std::fs::write(a.join("file"), b"x")?;
        let path = a.to_path_buf();
        drop(a);
        assert!(!path.exists(), "{} should be removed", path.display());
        Ok(())
    }
}
