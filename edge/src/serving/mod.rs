//! HTTP semantics of static file serving, as pure functions over header values: conditional
//! requests, byte ranges, content negotiation of precompressed variants and cache lifetimes.
//! The proxy reads headers, calls these, and writes what they decide.

pub mod cache_control;
pub mod conditional;
pub mod encoding;
pub mod range;
