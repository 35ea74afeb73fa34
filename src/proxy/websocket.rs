//! A WebSocket after `101`: agent → upstream bytes are relayed as they are; every
//! upstream → agent frame is parsed and its payload redacted, like an HTTP response
//! body. Compression extensions are never negotiated (the pipeline drops
//! `Sec-WebSocket-Extensions` from the handshake), so payloads are plain; a frame
//! that still claims one (RSV bits), a masked server frame or a malformed header
//! ends the connection.
//!
//! Data messages are re-fragmented as they stream (RFC 6455 §5.4 allows an
//! intermediary to): whatever the redactor can release from a read goes out as a
//! fragment, and the bytes that may be the start of a secret wait for the next
//! fragment of the same message.

use crate::redact::{OnRedact, Patterns, Redactor, REDACTED};
use bytes::{Buf, BytesMut};
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Most payload a control frame may carry (RFC 6455 §5.5).
const CONTROL_MAX_PAYLOAD: usize = 125;
/// Read buffer per direction.
const WS_READ_BUF: usize = 16 * 1024;

/// Why the upstream → agent direction was cut.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    #[error("malformed WebSocket frame header")]
    Header,
    #[error("masked frame from the server")]
    Masked,
    #[error("frame uses an extension (RSV bits); its payload cannot be inspected")]
    Extension,
    #[error("control frame fragmented or over 125 bytes")]
    Control,
    #[error("continuation frame outside a message, or a new message inside one")]
    Sequence,
    #[error("reserved opcode")]
    Reserved,
}

enum Phase {
    /// Waiting for a frame header.
    Header,
    /// Inside a data frame's payload.
    Data { fin: bool, remaining: u64 },
    /// Collecting a control frame's (short) payload.
    Control {
        header: FrameHeader,
        len: usize,
        payload: Vec<u8>,
    },
}

/// The data message being relayed: its opcode and the redactor that carries a
/// possible partial secret from one fragment to the next.
struct Message {
    opcode: Data,
    redactor: Redactor,
    /// A fragment of it was sent already (later ones are continuations).
    started: bool,
}

/// Upstream → agent frame stream, redacted. Feed bytes in any chunking.
pub struct FrameRedactor {
    patterns: Arc<Patterns>,
    input: BytesMut,
    phase: Phase,
    message: Option<Message>,
    redactions: u64,
}

impl FrameRedactor {
    pub fn new(patterns: Arc<Patterns>) -> FrameRedactor {
        FrameRedactor {
            patterns,
            input: BytesMut::new(),
            phase: Phase::Header,
            message: None,
            redactions: 0,
        }
    }

    /// Secrets replaced so far.
    pub fn redactions(&self) -> u64 {
        self.redactions + self.message.as_ref().map_or(0, |m| m.redactor.redactions())
    }

    /// Consumes `data`; appends the frames to send to the agent to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), WsError> {
        self.input.extend_from_slice(data);
        loop {
            match &mut self.phase {
                Phase::Header => {
                    let mut cursor = Cursor::new(&self.input[..]);
                    let Some((header, len)) =
                        FrameHeader::parse(&mut cursor).map_err(|_| WsError::Header)?
                    else {
                        return Ok(());
                    };
                    let used = usize::try_from(cursor.position()).map_err(|_| WsError::Header)?;
                    self.input.advance(used);
                    self.phase = self.start_frame(header, len)?;
                }
                Phase::Data { fin, remaining } => {
                    let available = self.input.len() as u64;
                    if *remaining > 0 && available == 0 {
                        return Ok(());
                    }
                    let take = usize::try_from((*remaining).min(available)).unwrap_or(0);
                    *remaining -= take as u64;
                    let (done, fin) = (*remaining == 0, *fin);
                    let chunk = self.input.split_to(take).freeze();
                    let Some(msg) = self.message.as_mut() else {
                        return Err(WsError::Sequence);
                    };
                    let mut payload = msg.redactor.push(chunk).to_vec();
                    let last = done && fin;
                    if last {
                        payload.extend_from_slice(&msg.redactor.finish());
                    }
                    // A final fragment is sent even when empty: it ends the message.
                    if last || !payload.is_empty() {
                        let opcode = if msg.started {
                            Data::Continue
                        } else {
                            msg.opcode
                        };
                        msg.started = true;
                        write_frame(out, OpCode::Data(opcode), last, &payload);
                    }
                    if last {
                        if let Some(m) = self.message.take() {
                            self.redactions += m.redactor.redactions();
                        }
                    }
                    if done {
                        self.phase = Phase::Header;
                    } else {
                        return Ok(());
                    }
                }
                Phase::Control {
                    header,
                    len,
                    payload,
                } => {
                    let take = (*len - payload.len()).min(self.input.len());
                    payload.extend_from_slice(&self.input.split_to(take));
                    if payload.len() < *len {
                        return Ok(());
                    }
                    let opcode = header.opcode;
                    let payload = std::mem::take(payload);
                    let body = self.redact_control(opcode, payload);
                    write_frame(out, opcode, true, &body);
                    self.phase = Phase::Header;
                }
            }
        }
    }

    fn start_frame(&mut self, header: FrameHeader, len: u64) -> Result<Phase, WsError> {
        // SECURITY: a server never masks (RFC 6455 §5.1); and a frame with RSV bits
        // set belongs to an extension (compression) whose payload we cannot read.
        if header.mask.is_some() {
            return Err(WsError::Masked);
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Extension);
        }
        match header.opcode {
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err(WsError::Reserved)
            }
            OpCode::Control(_) => {
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= CONTROL_MAX_PAYLOAD && header.is_final)
                    .ok_or(WsError::Control)?;
                Ok(Phase::Control {
                    header,
                    len,
                    payload: Vec::with_capacity(len),
                })
            }
            OpCode::Data(Data::Continue) => {
                if self.message.is_none() {
                    return Err(WsError::Sequence);
                }
                Ok(Phase::Data {
                    fin: header.is_final,
                    remaining: len,
                })
            }
            OpCode::Data(opcode) => {
                if self.message.is_some() {
                    return Err(WsError::Sequence);
                }
                self.message = Some(Message {
                    opcode,
                    redactor: Redactor::new(self.patterns.clone()),
                    started: false,
                });
                Ok(Phase::Data {
                    fin: header.is_final,
                    remaining: len,
                })
            }
        }
    }

    /// A control payload is short and complete: redacted whole. One that held a
    /// secret keeps only what is safe: a close frame its status code.
    fn redact_control(&mut self, opcode: OpCode, payload: Vec<u8>) -> Vec<u8> {
        // SECURITY: a close reason or a ping/pong payload may echo the credential.
        if !self.patterns.contains_secret(&payload) {
            return payload;
        }
        self.redactions += 1;
        match opcode {
            OpCode::Control(Control::Close) if payload.len() >= 2 => {
                let mut body = payload[..2].to_vec();
                body.extend_from_slice(REDACTED);
                body
            }
            _ => REDACTED.to_vec(),
        }
    }
}

fn write_frame(out: &mut Vec<u8>, opcode: OpCode, fin: bool, payload: &[u8]) {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Relays an upgraded WebSocket until either side closes or nothing moves for
/// `idle`; the upstream's frames are redacted. `on_redact` fires at the first
/// redaction.
pub async fn relay<A, B>(
    agent: A,
    upstream: B,
    patterns: Arc<Patterns>,
    idle: Duration,
    on_redact: OnRedact,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(agent);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let mut abuf = vec![0u8; WS_READ_BUF];
    let mut ubuf = vec![0u8; WS_READ_BUF];
    let mut frames = FrameRedactor::new(patterns);
    let mut out = Vec::new();
    let mut on_redact = Some(on_redact);
    let (mut agent_open, mut upstream_open) = (true, true);
    while agent_open || upstream_open {
        tokio::select! {
            r = ar.read(&mut abuf), if agent_open => match r {
                Ok(0) | Err(_) => { agent_open = false; let _ = uw.shutdown().await; }
                Ok(n) => if uw.write_all(&abuf[..n]).await.is_err() { break },
            },
            r = ur.read(&mut ubuf), if upstream_open => match r {
                Ok(0) | Err(_) => { upstream_open = false; let _ = aw.shutdown().await; }
                Ok(n) => {
                    out.clear();
                    if let Err(e) = frames.feed(&ubuf[..n], &mut out) {
                        tracing::info!(error = %e, "closing a WebSocket whose frames cannot be inspected");
                        break;
                    }
                    if frames.redactions() > 0 {
                        if let Some(f) = on_redact.take() {
                            f();
                        }
                    }
                    if aw.write_all(&out).await.is_err() { break }
                }
            },
            _ = tokio::time::sleep(idle) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"sk-live-ws-0123456789";

    fn patterns() -> Arc<Patterns> {
        Arc::new(Patterns::new(&[SECRET]))
    }

    fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, opcode, fin, payload);
        out
    }

    /// Parses `wire` into (opcode, fin, payload) frames, checking it is well formed.
    fn frames(wire: &[u8]) -> Vec<(OpCode, bool, Vec<u8>)> {
        let mut cursor = Cursor::new(wire);
        let mut out = Vec::new();
        while (cursor.position() as usize) < wire.len() {
            let (h, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(h.mask.is_none());
            let at = cursor.position() as usize;
            out.push((h.opcode, h.is_final, wire[at..at + len as usize].to_vec()));
            cursor.set_position((at + len as usize) as u64);
        }
        out
    }

    /// Data messages and control frames, as the agent reassembles them.
    type Reassembled = (Vec<Vec<u8>>, Vec<(OpCode, Vec<u8>)>);

    /// Data messages reassembled (control frames listed apart).
    fn messages(wire: &[u8]) -> Reassembled {
        let (mut msgs, mut controls, mut cur) = (Vec::new(), Vec::new(), None::<Vec<u8>>);
        for (op, fin, payload) in frames(wire) {
            match op {
                OpCode::Control(_) => controls.push((op, payload)),
                OpCode::Data(Data::Continue) => cur.as_mut().unwrap().extend(payload),
                OpCode::Data(_) => {
                    assert!(cur.is_none(), "new message inside a message");
                    cur = Some(payload);
                }
            }
            if fin && !matches!(op, OpCode::Control(_)) {
                msgs.push(cur.take().unwrap());
            }
        }
        assert!(cur.is_none(), "unfinished message");
        (msgs, controls)
    }

    fn run(wire: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut r = FrameRedactor::new(patterns());
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&wire.len())) {
            r.feed(&wire[at..c], &mut out).unwrap();
            at = c;
        }
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_secret_in_a_text_frame_is_redacted_at_every_read_boundary() {
        let mut text = b"{\"error\":\"bad key ".to_vec();
        text.extend_from_slice(SECRET);
        text.extend_from_slice(b"\"}");
        let wire = frame(OpCode::Data(Data::Text), true, &text);
        for cut in 0..=wire.len() {
            let out = run(&wire, &[cut]);
            assert!(!contains(&out, SECRET), "cut at {cut}");
            let (msgs, _) = messages(&out);
            assert_eq!(msgs, vec![b"{\"error\":\"bad key [REDACTED]\"}".to_vec()]);
        }
    }

    #[test]
    fn a_secret_split_across_fragments_with_a_ping_between_is_redacted() {
        let mut wire = frame(OpCode::Data(Data::Binary), false, b"key=sk-live-");
        wire.extend(frame(OpCode::Control(Control::Ping), true, b"p"));
        wire.extend(frame(OpCode::Data(Data::Continue), false, b"ws-01234"));
        wire.extend(frame(OpCode::Data(Data::Continue), true, b"56789;"));
        for cut in 0..=wire.len() {
            let out = run(&wire, &[cut]);
            assert!(!contains(&out, SECRET), "cut at {cut}");
            let (msgs, controls) = messages(&out);
            assert_eq!(msgs, vec![b"key=[REDACTED];".to_vec()]);
            assert_eq!(
                controls,
                vec![(OpCode::Control(Control::Ping), b"p".to_vec())]
            );
        }
    }

    #[test]
    fn frames_without_a_secret_pass_unchanged_and_in_order() {
        let mut wire = frame(OpCode::Data(Data::Text), true, b"hello");
        wire.extend(frame(OpCode::Data(Data::Binary), true, &[0u8; 70_000]));
        wire.extend(frame(OpCode::Control(Control::Close), true, &[3, 232]));
        let out = run(&wire, &[3, 100, 65_000]);
        let (msgs, controls) = messages(&out);
        assert_eq!(msgs[0], b"hello");
        assert_eq!(msgs[1], vec![0u8; 70_000]);
        assert_eq!(
            controls,
            vec![(OpCode::Control(Control::Close), vec![3, 232])]
        );
    }

    #[test]
    fn a_close_reason_echoing_the_secret_keeps_only_the_code() {
        let mut payload = vec![0x0f, 0xa0];
        payload.extend_from_slice(SECRET);
        let wire = frame(OpCode::Control(Control::Close), true, &payload);
        let out = run(&wire, &[]);
        assert!(!contains(&out, SECRET));
        let (_, controls) = messages(&out);
        let mut want = vec![0x0f, 0xa0];
        want.extend_from_slice(REDACTED);
        assert_eq!(controls, vec![(OpCode::Control(Control::Close), want)]);
    }

    #[test]
    fn uninspectable_frames_end_the_stream() {
        let mut r = FrameRedactor::new(patterns());
        let mut out = Vec::new();
        // RSV1: permessage-deflate data the server was never offered.
        assert_eq!(
            r.feed(&[0xC1, 0x01, b'x'], &mut out),
            Err(WsError::Extension)
        );
        let mut r = FrameRedactor::new(patterns());
        // A masked server frame.
        assert_eq!(
            r.feed(&[0x81, 0x81, 1, 2, 3, 4, b'x'], &mut out),
            Err(WsError::Masked)
        );
        let mut r = FrameRedactor::new(patterns());
        // A continuation with no message open.
        assert_eq!(r.feed(&[0x80, 0x00], &mut out), Err(WsError::Sequence));
        let mut r = FrameRedactor::new(patterns());
        // A fragmented ping.
        assert_eq!(r.feed(&[0x09, 0x00], &mut out), Err(WsError::Control));
    }
}
