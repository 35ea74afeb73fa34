//! The admin API's own HTTP/1 accept loop (bounded connections, slow-head cutoff),
//! feeding every request to [`routes::handle`](super::routes::handle).

use super::console::{self, Console};
use super::routes::handle;
use crate::proxy::state::State;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Largest request head accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Slow request heads are cut off after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent admin connections; beyond this new ones wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// Accepts admin connections on `listener` until `stop` flips, at most
/// [`MAX_CONNECTIONS`] at once, each served on its own task.
pub async fn run_admin_accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // The console's sign-in sessions live as long as this listener.
    let console = Arc::new(Console::new());
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let (state, console) = (state.clone(), console.clone());
        tokio::spawn(async move {
            serve_connection(state, console, stream).await;
            drop(permit);
        });
    }
}

async fn serve_connection(state: Arc<State>, console: Arc<Console>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (state, console) = (state.clone(), console.clone());
        async move {
            // `/ui/…` is the operator console; everything else the JSON API.
            let resp = if console::is_console(req.uri().path()) {
                console::handle(state, &console, req).await
            } else {
                handle(state, req).await
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}
