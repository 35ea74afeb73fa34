//! Sealing primitives: AES-256-GCM records under a data key wrapped by the master key.
