//! A blind byte relay between two connections (egress-allowed tunnels), ended by
//! either side closing or by `idle` without a byte either way.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Copies bytes both ways until either side closes or nothing moves for `idle`.
pub async fn relay<A, B>(mut a: A, mut b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(&mut a);
    let (mut br, mut bw) = tokio::io::split(&mut b);
    let mut abuf = vec![0u8; RELAY_BUF];
    let mut bbuf = vec![0u8; RELAY_BUF];
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        tokio::select! {
            r = ar.read(&mut abuf), if a_open => match r {
                Ok(0) | Err(_) => { a_open = false; let _ = bw.shutdown().await; }
                Ok(n) => if bw.write_all(&abuf[..n]).await.is_err() { break },
            },
            r = br.read(&mut bbuf), if b_open => match r {
                Ok(0) | Err(_) => { b_open = false; let _ = aw.shutdown().await; }
                Ok(n) => if aw.write_all(&bbuf[..n]).await.is_err() { break },
            },
            _ = tokio::time::sleep(idle) => break,
        }
    }
}

/// Relay buffer per direction.
pub const RELAY_BUF: usize = 16 * 1024;
