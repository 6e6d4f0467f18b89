//! Deployment ids: short, random, DNS-label safe, and never mistakable for a project name.
//!
//! An id is exactly [`DeploymentId::LEN`] characters of `[a-z0-9]` with at least one digit. Project
//! names are refused when they have that shape, so `<label>.<domain>` is never ambiguous.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The id of one immutable deployment, e.g. `k3f9q2m8x1ab`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeploymentId(String);

impl DeploymentId {
    /// Length of every deployment id.
    pub const LEN: usize = 12;

    /// A fresh random id (about 62 bits of entropy).
    pub fn random() -> Self {
        let mut rng = rand::rng();
        loop {
            let id: String = (0..Self::LEN)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect();
            if looks_like_deployment_id(&id) {
                return DeploymentId(id);
            }
        }
    }

    /// Parses an id, accepting only the exact id shape (lowercase).
    pub fn parse(s: &str) -> Option<Self> {
        looks_like_deployment_id(s).then(|| DeploymentId(s.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True when `label` has the shape of a deployment id (see the module docs).
pub fn looks_like_deployment_id(label: &str) -> bool {
    label.len() == DeploymentId::LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && label.bytes().any(|b| b.is_ascii_digit())
}

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for DeploymentId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if looks_like_deployment_id(&s) {
            Ok(DeploymentId(s))
        } else {
            Err(format!("{s:?} is not a deployment id"))
        }
    }
}

impl From<DeploymentId> for String {
    fn from(id: DeploymentId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_have_the_id_shape_and_differ() {
        let a = DeploymentId::random();
        let b = DeploymentId::random();
        assert!(looks_like_deployment_id(a.as_str()));
        assert_ne!(a, b);
    }

    #[test]
    fn shape_table() {
        for (label, ok) in [
            ("k3f9q2m8x1ab", true),
            ("000000000000", true),
            ("abcdefghijkl", false), // no digit: could be a project name
            ("k3f9q2m8x1a", false),  // too short
            ("k3f9q2m8x1abc", false),
            ("K3F9Q2M8X1AB", false),
            ("k3f9q2m8x1a-", false),
            ("", false),
        ] {
            assert_eq!(looks_like_deployment_id(label), ok, "{label}");
            assert_eq!(DeploymentId::parse(label).is_some(), ok, "{label}");
        }
    }

    #[test]
    fn serde_rejects_malformed_ids() {
        assert!(serde_json::from_str::<DeploymentId>("\"../etc/passwd\"").is_err());
        let id: DeploymentId = serde_json::from_str("\"k3f9q2m8x1ab\"").unwrap();
        assert_eq!(id.as_str(), "k3f9q2m8x1ab");
    }
}
