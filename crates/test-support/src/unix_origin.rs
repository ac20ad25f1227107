//! The HTTP origin on a Unix-domain socket, for `x-unix-socket` requests (SPEC §7.7).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::UnixListener;

use crate::record::{RecordedRequest, Recorder};
use crate::routes;
use crate::server::{ServerTask, serve_http1, spawn_accept_loop};

/// An HTTP/1.1 origin on a Unix socket, with the same routes and recording as
/// [`crate::HttpOrigin`].
///
/// Stops and removes its socket file when dropped.
#[derive(Debug)]
pub struct UnixOrigin {
    path: PathBuf,
    recorder: Arc<Recorder>,
    _task: ServerTask,
}

impl UnixOrigin {
    /// Binds a new socket at `path` (which must not exist yet).
    pub async fn start(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("bind unix origin at {}", path.display()))?;
        let recorder = Arc::<Recorder>::default();
        let conn_recorder = Arc::clone(&recorder);
        let task = spawn_accept_loop("unix-origin", listener, move |io| {
            let recorder = Arc::clone(&conn_recorder);
            serve_http1(io, move |req| routes::origin(req, Arc::clone(&recorder)))
        });
        Ok(UnixOrigin { path, recorder, _task: task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Request heads received so far.
    pub fn hits(&self) -> usize {
        self.recorder.hits()
    }

    /// Requests whose bodies were read in full, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.recorder.requests()
    }

    /// Waits (at most [`crate::TIMEOUT`]) until `n` request heads arrived.
    pub async fn wait_for_hits(&self, n: usize) -> anyhow::Result<()> {
        self.recorder.wait_for_hits(n).await
    }
}

impl Drop for UnixOrigin {
    fn drop(&mut self) {
        // Best effort: the directory may already be gone with its `TempDir`.
        let _ = std::fs::remove_file(&self.path);
    }
}
