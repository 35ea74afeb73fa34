//! Compressed response bodies: arbitrary bytes under gzip / deflate / br in
//! arbitrary frames never panic or hang, and a body that ends "cleanly" never
//! carries the secret.
#![no_main]

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use keyward::body::BoxError;
use keyward::redact::{read_answer, redact_upstream, Patterns};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

const SECRET: &[u8] = b"sk-fuzz-0123456789";
const CODINGS: [&str; 4] = ["gzip", "deflate", "br", "identity"];
/// Stop collecting after this much output (the decoders are bounded per frame;
/// the whole of a bomb need not be materialised here).
const MAX_OUTPUT: usize = 16 << 20;
/// The stall limit on the upstream body (never reached: every frame is ready).
const NO_STALL: Duration = Duration::from_secs(60);

struct Frames(VecDeque<Bytes>);

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let coding = CODINGS[usize::from(sel) % CODINGS.len()];
    let piece = 1 + usize::from(sel >> 2);
    let frames: VecDeque<Bytes> = rest.chunks(piece).map(Bytes::copy_from_slice).collect();
    let mut resp = Response::new(Frames(frames).boxed());
    resp.headers_mut()
        .insert("content-encoding", HeaderValue::from_static(coding));
    let patterns = Arc::new(Patterns::new(&[SECRET]));
    // The production path; the stall limit on a streamed body needs tokio's timer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _in_rt = rt.enter();
    let Ok(answer) = rt.block_on(read_answer(resp, &patterns, false, NO_STALL)) else {
        return;
    };
    let mut body = redact_upstream(answer, patterns.clone(), None).into_body();
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                    if out.len() > MAX_OUTPUT {
                        return;
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => return,
            Poll::Ready(None) => break,
            Poll::Pending => panic!("a ready body must never be pending"),
        }
    }
    assert!(!patterns.contains_secret(&out));
});
