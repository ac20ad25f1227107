//! Review findings on the tunnel relay, over real loopback sockets on both paths.

use std::sync::Arc;

use proxyd_net::{Relay, RelayEnd, RelayPath, Side};
use rustix::net::{SendFlags, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::splice::{PATHS, pair};
use crate::support::{BOUND, bounded};

/// A client that sends a byte of TCP urgent data (`MSG_OOB`, telnet's and FTP's interrupt)
/// in the middle of its stream: every ordinary byte before and after it must still reach the
/// upstream, and the tunnel must end only at the client's real EOF. `splice(2)` from a socket
/// stops at the urgent mark (`tcp_read_sock`) and returns `EAGAIN`, then `0` once the FIN is
/// in: the relay stalled on it and then took it for EOF, dropping every byte sent after it.
/// Both are checked: the bytes after the mark arrive before the FIN, and the FIN ends it.
#[tokio::test]
async fn urgent_data_does_not_stall_or_truncate_the_tunnel() -> anyhow::Result<()> {
    for &path in PATHS {
        let relay = Arc::new(Relay::new());
        let (mut client, a) = pair().await?;
        let (b, mut upstream) = pair().await?;
        let (a, b) = match path {
            RelayPath::ZeroCopy => (Side::tcp(a), Side::tcp(b)),
            RelayPath::Copy => (Side::io(a), Side::io(b)),
        };
        let spliced =
            tokio::spawn(async move { relay.splice(a, b, BOUND, std::future::pending()).await });

        client.write_all(b"before ").await?;
        let mut buf = [0; 7];
        bounded(upstream.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"before ", "{path:?}");
        client.writable().await?;
        let sent = client
            .try_io(tokio::io::Interest::WRITABLE, || Ok(send(&client, b"!", SendFlags::OOB)?))?;
        assert_eq!(sent, 1);
        client.write_all(b"after").await?;

        // Urgent data is out of band: the byte stream the upstream reads is the rest, while
        // the client is still connected (no stall until the FIN)...
        let mut got = Vec::new();
        while !got.ends_with(b"after") {
            let mut chunk = [0u8; 64];
            let n = bounded(upstream.read(&mut chunk)).await.map_err(|_| {
                anyhow::anyhow!("{path:?}: the bytes after the urgent one stalled, got {got:?}")
            })??;
            anyhow::ensure!(n > 0, "{path:?}: EOF after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == b"after" || got == b"!after", "{path:?}: {got:?}");
        // ...and its FIN is the tunnel's EOF.
        client.shutdown().await?;
        let mut rest = Vec::new();
        bounded(upstream.read_to_end(&mut rest)).await??;
        assert_eq!(rest, b"", "{path:?}");
        upstream.shutdown().await?;
        let spliced = bounded(spliced).await??;
        assert!(matches!(spliced.end, RelayEnd::Done), "{path:?}: {:?}", spliced.end);
    }
    Ok(())
}
