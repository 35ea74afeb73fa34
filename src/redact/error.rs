//! Why a response cannot be redacted, found before any of it is sent. The proxy
//! maps each to its refusal (`x-keyward-error` code and status) in one place.

/// A reason to withhold an upstream response: nothing of it may reach the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedactError {
    /// No working matcher (the automaton could not be built).
    #[error("keyward could not prepare response redaction")]
    Unavailable,
    /// A `content-encoding` (or a stack of several) keyward cannot decode.
    #[error("upstream response uses content-encoding {0:?}, which keyward cannot inspect")]
    EncodingUnsupported(String),
    /// A small body read whole did not arrive within the deadline.
    #[error("upstream did not finish its response in time")]
    TimedOut,
    /// A small body read whole failed or ended before its declared length.
    #[error("upstream response body ended early or failed")]
    Truncated,
}
