//! Streaming decoders for the `content-encoding`s keyward can inspect (`gzip`,
//! `deflate` zlib-wrapped or raw, `br`), each bounded per call so a compression
//! bomb costs the upstream's bandwidth, not our memory. A truncated or corrupt
//! stream is an error ([`DecodeError`]), never a short success.

use http::header::CONTENT_ENCODING;
use http::HeaderMap;
use std::io::Write as _;

/// Most decoded bytes produced for one body frame (bounds memory under a
/// decompression bomb and keeps frames a sensible size).
pub const DECODE_OUTPUT_BUDGET: usize = 64 * 1024;

/// Compressed input is fed to stream decoders in slices this big, so one slice can
/// expand to at most ~1 MiB (deflate's maximum ratio is ~1032:1).
const DECODE_INPUT_SLICE: usize = 1024;

/// Output space reserved per low-level decoder call.
const DECODE_OUTPUT_STEP: usize = 16 * 1024;

/// The decoder for the response's `content-encoding`; `Err(coding)` when keyward
/// cannot decode it.
pub(super) fn content_decoder(headers: &HeaderMap) -> Result<Option<Decoder>, String> {
    let mut codings = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        let Ok(text) = value.to_str() else {
            return Err(String::from_utf8_lossy(value.as_bytes()).into_owned());
        };
        codings.extend(
            text.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity"),
        );
    }
    match codings.as_slice() {
        [] => Ok(None),
        [one] => match one.as_str() {
            "gzip" | "x-gzip" => Ok(Some(Decoder::Gzip(Box::new(
                flate2::write::MultiGzDecoder::new(Vec::new()),
            )))),
            "deflate" => Ok(Some(Decoder::Deflate(DeflateState::Probe(Vec::new())))),
            "br" => Ok(Some(Decoder::Brotli(Box::new(BrotliDecoder::new())))),
            other => Err(other.to_string()),
        },
        // Stacked codings: rare enough to refuse rather than to chain decoders.
        many => Err(many.join(", ")),
    }
}

/// Errors a decoded (compressed) body can end with, besides the upstream's own.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("upstream response body is corrupt ({0}) and was cut off")]
    Corrupt(String),
    #[error("upstream response body ended before its compressed stream was complete")]
    Truncated,
}

pub(super) enum DeflateState {
    /// Waiting for two bytes to tell zlib-wrapped from raw deflate.
    Probe(Vec<u8>),
    Running {
        inflate: flate2::Decompress,
        ended: bool,
        pending: bool,
    },
}

type BrotliState = brotli_decompressor::BrotliState<
    brotli_decompressor::StandardAlloc,
    brotli_decompressor::StandardAlloc,
    brotli_decompressor::StandardAlloc,
>;

pub(super) struct BrotliDecoder {
    state: BrotliState,
    ended: bool,
    pending: bool,
}

impl BrotliDecoder {
    fn new() -> BrotliDecoder {
        use brotli_decompressor::StandardAlloc;
        BrotliDecoder {
            state: BrotliState::new(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            ),
            ended: false,
            pending: false,
        }
    }

    fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        budget: usize,
    ) -> Result<usize, DecodeError> {
        use brotli_decompressor::{BrotliDecompressStream, BrotliResult};
        let mut available_in = input.len();
        let mut input_offset = 0;
        let mut total_out = 0;
        loop {
            if self.ended {
                // SECURITY: data after the end of the stream is not ours to judge.
                if available_in > 0 {
                    return Err(DecodeError::Corrupt(
                        "data after end of brotli stream".into(),
                    ));
                }
                self.pending = false;
                return Ok(input_offset);
            }
            let start = out.len();
            out.resize(start + DECODE_OUTPUT_STEP, 0);
            let mut available_out = DECODE_OUTPUT_STEP;
            let mut output_offset = start;
            let result = BrotliDecompressStream(
                &mut available_in,
                &mut input_offset,
                input,
                &mut available_out,
                &mut output_offset,
                &mut out[..],
                &mut total_out,
                &mut self.state,
            );
            out.truncate(output_offset);
            match result {
                BrotliResult::ResultSuccess => self.ended = true,
                BrotliResult::NeedsMoreInput => {
                    self.pending = false;
                    return Ok(input_offset);
                }
                BrotliResult::NeedsMoreOutput => {
                    self.pending = true;
                    if out.len() >= budget {
                        return Ok(input_offset);
                    }
                }
                BrotliResult::ResultFailure => {
                    return Err(DecodeError::Corrupt("invalid brotli data".into()))
                }
            }
        }
    }
}

/// The decoder of one response body.
pub(super) enum Decoder {
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    Deflate(DeflateState),
    Brotli(Box<BrotliDecoder>),
}

fn corrupt(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Corrupt(e.to_string())
}

impl Decoder {
    /// Whether decoded output is waiting inside the decoder.
    pub(super) fn has_pending(&self) -> bool {
        match self {
            Decoder::Gzip(_) => false,
            Decoder::Deflate(DeflateState::Running { pending, .. }) => *pending,
            Decoder::Deflate(DeflateState::Probe(_)) => false,
            Decoder::Brotli(b) => b.pending,
        }
    }

    /// Decodes a prefix of `input` into `out` (stopping near `budget` output bytes);
    /// returns how much input was consumed.
    pub(super) fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        budget: usize,
    ) -> Result<usize, DecodeError> {
        match self {
            Decoder::Gzip(gz) => {
                let mut consumed = 0;
                while consumed < input.len() && out.len() < budget {
                    let end = input.len().min(consumed + DECODE_INPUT_SLICE);
                    gz.write_all(&input[consumed..end]).map_err(corrupt)?;
                    gz.flush().map_err(corrupt)?;
                    out.append(gz.get_mut());
                    consumed = end;
                }
                Ok(consumed)
            }
            Decoder::Deflate(state) => {
                if let DeflateState::Probe(head) = state {
                    let take = input.len().min(2usize.saturating_sub(head.len()));
                    head.extend_from_slice(&input[..take]);
                    if head.len() < 2 {
                        return Ok(take);
                    }
                    let head = std::mem::take(head);
                    let mut inflate = flate2::Decompress::new(looks_like_zlib(&head));
                    let mut sink = Vec::new();
                    let (used, ended, pending) =
                        inflate_step(&mut inflate, &head, &mut sink, usize::MAX)?;
                    if used < head.len() || (ended && take < input.len()) {
                        return Err(DecodeError::Corrupt(
                            "data after end of deflate stream".into(),
                        ));
                    }
                    out.append(&mut sink);
                    *state = DeflateState::Running {
                        inflate,
                        ended,
                        pending,
                    };
                    let rest = self.decode(&input[take..], out, budget)?;
                    return Ok(take + rest);
                }
                let DeflateState::Running {
                    inflate,
                    ended,
                    pending,
                } = state
                else {
                    return Ok(0);
                };
                if *ended {
                    if input.is_empty() {
                        return Ok(0);
                    }
                    return Err(DecodeError::Corrupt(
                        "data after end of deflate stream".into(),
                    ));
                }
                let (used, now_ended, now_pending) = inflate_step(inflate, input, out, budget)?;
                *ended = now_ended;
                *pending = now_pending;
                if *ended && used < input.len() {
                    return Err(DecodeError::Corrupt(
                        "data after end of deflate stream".into(),
                    ));
                }
                Ok(used)
            }
            Decoder::Brotli(b) => b.decode(input, out, budget),
        }
    }

    /// End of input: drains the decoder and checks the stream was complete.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match self {
            Decoder::Gzip(gz) => {
                // SECURITY: try_finish verifies the gzip trailer (CRC and length),
                // so a cut-off body is an error, not a short success.
                gz.try_finish().map_err(|_| DecodeError::Truncated)?;
                out.append(gz.get_mut());
                Ok(())
            }
            Decoder::Deflate(DeflateState::Probe(head)) => {
                if head.is_empty() {
                    // An empty body with a content-encoding: nothing to decode.
                    return Ok(());
                }
                Err(DecodeError::Truncated)
            }
            Decoder::Deflate(DeflateState::Running { .. }) | Decoder::Brotli(_) => {
                while self.has_pending() {
                    self.decode(&[], out, usize::MAX)?;
                }
                let ended = match self {
                    Decoder::Deflate(DeflateState::Running { ended, .. }) => *ended,
                    Decoder::Brotli(b) => b.ended,
                    _ => false,
                };
                // SECURITY: a stream that never reached its end marker was truncated.
                if ended {
                    Ok(())
                } else {
                    Err(DecodeError::Truncated)
                }
            }
        }
    }
}

/// RFC 1950 header check (as browsers do to accept raw deflate under "deflate").
fn looks_like_zlib(head: &[u8]) -> bool {
    const ZLIB_METHOD_DEFLATE: u8 = 8;
    const ZLIB_MAX_WINDOW_INFO: u8 = 7;
    const ZLIB_CHECK_MODULUS: u16 = 31;
    match head {
        [cmf, flg, ..] => {
            cmf & 0x0f == ZLIB_METHOD_DEFLATE
                && cmf >> 4 <= ZLIB_MAX_WINDOW_INFO
                && (u16::from(*cmf) << 8 | u16::from(*flg)) % ZLIB_CHECK_MODULUS == 0
        }
        _ => false,
    }
}

/// Runs inflate over `input` until it is consumed, the stream ends, or `out` grows
/// past `budget`. Returns (consumed, stream ended, output pending inside).
fn inflate_step(
    inflate: &mut flate2::Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    budget: usize,
) -> Result<(usize, bool, bool), DecodeError> {
    let mut consumed = 0;
    loop {
        out.reserve(DECODE_OUTPUT_STEP);
        let spare = out.capacity() - out.len();
        let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
        let status = inflate
            .decompress_vec(&input[consumed..], out, flate2::FlushDecompress::None)
            .map_err(corrupt)?;
        let used = (inflate.total_in() - in_before) as usize;
        let produced = (inflate.total_out() - out_before) as usize;
        consumed += used;
        if status == flate2::Status::StreamEnd {
            return Ok((consumed, true, false));
        }
        let filled = produced == spare;
        if used == 0 && produced == 0 {
            return Ok((consumed, false, false));
        }
        if out.len() >= budget {
            return Ok((consumed, false, filled || consumed < input.len()));
        }
        if consumed == input.len() && !filled {
            return Ok((consumed, false, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zlib_header_detection() {
        assert!(looks_like_zlib(&[0x78, 0x9c]));
        assert!(looks_like_zlib(&[0x78, 0x01]));
        assert!(!looks_like_zlib(&[0x78, 0x00]));
        assert!(!looks_like_zlib(&[0xcb, 0x48]));
    }
}
