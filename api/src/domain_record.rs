//! The record of one custom domain, as every store keeps it (its own module, so that the store
//! and the rules of [`crate::domains`] need not import each other).

use serde::{Deserialize, Serialize};

/// Where a custom domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainStatus {
    /// Waiting for the name to resolve to the platform (a CNAME under the platform domain or
    /// one of the edge's public addresses).
    PendingDns,
    /// Verified; a certificate is being ordered.
    Issuing,
    /// Verified and served.
    Active,
    /// A check or an order failed; `error` says why.
    Failed,
}

/// One custom domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomDomain {
    /// The name, normalized (lowercase ASCII, punycode).
    pub domain: String,
    /// The project it serves.
    pub project: String,
    /// Where it is in its life.
    pub status: DomainStatus,
    /// Why it failed, or what the last check found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When its certificate expires (Unix ms), once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_unix_ms: Option<u64>,
    /// Added at (Unix ms).
    pub added_unix_ms: u64,
    /// Certificate orders that failed in a row (the backoff grows with them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub order_failures: u32,
    /// After a failed order, none before this time (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_unix_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
