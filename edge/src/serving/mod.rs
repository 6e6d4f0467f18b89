//! HTTP semantics of static file serving, as pure functions over header values: conditional
//! requests, byte ranges, content negotiation of precompressed variants, cache lifetimes, and
//! the well-formedness and host of a request head.
//! The proxy reads headers, calls these, and writes what they decide.

pub mod cache_control;
pub mod conditional;
pub mod encoding;
pub mod range;
pub mod request_head;
