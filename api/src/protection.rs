//! Visitor protection: a project's sites behind a password (previews only, or everything), with
//! a bypass token for CI and link checkers.
//!
//! The password is kept as PBKDF2-HMAC-SHA256 (random salt, [`ITERATIONS`]) and checked in
//! constant time. A visitor who typed it gets a cookie for the host it was typed on (no
//! `Domain`), `HttpOnly`, `Secure`, `SameSite=Lax`: `v1.<expiry>.<HMAC-SHA256 of host and expiry>`
//! under a key of the project's own, made anew whenever the password changes (so changing it
//! signs everyone out). The bypass token (`x-gitdeploy-bypass`) is random and kept as SHA-256.
//! Everything here is pure; the edge (`edge/src/sites/protect.rs`) does the I/O.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// PBKDF2 rounds of a new password hash (OWASP's figure for PBKDF2-HMAC-SHA256 is higher; a
/// login is also rate-limited per client, so guessing is bounded by the limit first).
pub const ITERATIONS: u32 = 100_000;

/// How long a visitor's cookie lasts.
pub const COOKIE_SECS: u64 = 7 * 24 * 3600;

/// The cookie's name.
pub const COOKIE: &str = "gitdeploy_visitor";

/// The header that carries a bypass token.
pub const BYPASS_HEADER: &str = "x-gitdeploy-bypass";

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;

/// Which hosts of a project are protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectionScope {
    /// Every host but the project's production ones (`<project>.<domain>`, custom domains):
    /// deployment ids and branch and pull request aliases.
    Previews,
    /// Every host of the project.
    All,
}

/// A project's protection, as stored (never shown but for what is set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// Which hosts.
    pub scope: ProtectionScope,
    /// The password's hash, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordHash>,
    /// SHA-256 (hex) of the bypass token, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_sha256: Option<String>,
    /// The key cookies are signed with (hex, 32 bytes).
    pub cookie_key: String,
}

/// A PBKDF2-HMAC-SHA256 password hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordHash {
    /// Random salt, hex.
    pub salt: String,
    /// Rounds.
    pub iterations: u32,
    /// The derived key, hex.
    pub hash: String,
}

impl PasswordHash {
    /// Hashes `password` with a fresh salt.
    pub fn new(password: &str) -> Self {
        let salt: [u8; 16] = rand::random();
        let hash = derive(password, &salt, ITERATIONS);
        PasswordHash {
            salt: hex::encode(salt),
            iterations: ITERATIONS,
            hash: hex::encode(hash),
        }
    }

    /// Whether `password` is the one hashed (constant time in the comparison; the work is the
    /// same whatever is typed).
    pub fn verify(&self, password: &str) -> bool {
        let (Ok(salt), Ok(want)) = (hex::decode(&self.salt), hex::decode(&self.hash)) else {
            return false;
        };
        let got = derive(password, &salt, self.iterations.max(1));
        constant_time_eq(&got, &want)
    }
}

fn derive(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

/// A fresh cookie key (hex).
pub fn new_cookie_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// A fresh bypass token and its SHA-256 (hex).
pub fn new_bypass_token() -> (String, String) {
    use rand::distr::{Alphanumeric, SampleString};
    let token = format!("gdb_{}", Alphanumeric.sample_string(&mut rand::rng(), 40));
    let sha = hex::encode(Sha256::digest(token.as_bytes()));
    (token, sha)
}

/// Checks a password a project owner sets.
pub fn validate_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if !(MIN_PASSWORD..=256).contains(&n) || password.chars().any(char::is_control) {
        return Err(format!(
            "a visitor password is {MIN_PASSWORD}-256 characters without control characters"
        ));
    }
    Ok(())
}

/// What the edge holds of a project's protection for its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeProtection {
    /// Which hosts.
    pub scope: ProtectionScope,
    /// The password's hash.
    pub password: Option<PasswordHash>,
    /// The bypass token's SHA-256.
    pub bypass_sha256: Option<[u8; 32]>,
    /// The cookie key.
    pub cookie_key: [u8; 32],
}

impl Protection {
    /// The edge's form; `None` for a record whose key is unreadable (then nothing gets in).
    pub fn for_edge(&self) -> Option<EdgeProtection> {
        let key: [u8; 32] = hex::decode(&self.cookie_key).ok()?.try_into().ok()?;
        Some(EdgeProtection {
            scope: self.scope,
            password: self.password.clone(),
            bypass_sha256: self
                .bypass_sha256
                .as_deref()
                .and_then(|h| hex::decode(h).ok()?.try_into().ok()),
            cookie_key: key,
        })
    }
}

impl EdgeProtection {
    /// Whether a host of this kind is protected (`production`: the project's own host or a
    /// custom domain).
    pub fn covers(&self, production: bool) -> bool {
        !production || self.scope == ProtectionScope::All
    }

    /// Whether `token` is the bypass token.
    pub fn bypass_matches(&self, token: &[u8]) -> bool {
        self.bypass_sha256.is_some_and(|want| {
            let got: [u8; 32] = Sha256::digest(token).into();
            constant_time_eq(&got, &want)
        })
    }

    /// The cookie value for `host`, valid until `expires` (Unix seconds).
    pub fn cookie_value(&self, host: &str, expires: u64) -> String {
        format!("v1.{expires}.{}", hex::encode(self.mac(host, expires)))
    }

    /// Whether `value` is a cookie this project signed for `host` that has not expired at `now`
    /// (Unix seconds).
    pub fn cookie_valid(&self, host: &str, value: &str, now: u64) -> bool {
        let mut parts = value.splitn(3, '.');
        let (Some("v1"), Some(expires), Some(mac)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(expires), Ok(mac)) = (expires.parse::<u64>(), hex::decode(mac)) else {
            return false;
        };
        expires > now && constant_time_eq(&self.mac(host, expires), &mac)
    }

    fn mac(&self, host: &str, expires: u64) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.cookie_key).expect("HMAC takes any key length");
        mac.update(host.as_bytes());
        mac.update(b"\0");
        mac.update(expires.to_string().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_in<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Where a login sends the visitor back to: a local path (`/…`, not `//…`), else `/`.
pub fn safe_next(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.bytes().any(|b| b.is_ascii_control());
    if local {
        next
    } else {
        "/"
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protection() -> EdgeProtection {
        Protection {
            scope: ProtectionScope::Previews,
            password: None,
            bypass_sha256: None,
            cookie_key: new_cookie_key(),
        }
        .for_edge()
        .unwrap()
    }

    #[test]
    fn pbkdf2_matches_the_published_vector() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64), first 32 bytes.
        assert_eq!(
            hex::encode(derive("passwd", b"salt", 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn passwords_verify_and_salts_differ() {
        let mut h = PasswordHash::new("correct horse");
        h.iterations = 10; // the rule, not the cost
        h.hash = hex::encode(derive("correct horse", &hex::decode(&h.salt).unwrap(), 10));
        assert!(h.verify("correct horse"));
        assert!(!h.verify("correct hors"));
        assert!(!h.verify(""));
        assert_ne!(PasswordHash::new("x").salt, PasswordHash::new("x").salt);
        let broken = PasswordHash {
            salt: "zz".into(),
            ..h
        };
        assert!(!broken.verify("correct horse"));
    }

    #[test]
    fn cookies_are_for_one_host_one_key_and_expire() {
        let p = protection();
        let v = p.cookie_value("pr-7--site.example.app", 2_000);
        assert!(p.cookie_valid("pr-7--site.example.app", &v, 1_999));
        assert!(
            !p.cookie_valid("pr-7--site.example.app", &v, 2_000),
            "expired"
        );
        assert!(
            !p.cookie_valid("main--site.example.app", &v, 1_000),
            "other host"
        );
        assert!(
            !protection().cookie_valid("pr-7--site.example.app", &v, 1_000),
            "other key"
        );
        let forged_expiry = v.replacen("2000", "9000", 1);
        assert!(!p.cookie_valid("pr-7--site.example.app", &forged_expiry, 1_000));
        for junk in ["", "v1", "v1.x.y", "v2.2000.00", "v1.2000.zz"] {
            assert!(!p.cookie_valid("h", junk, 0), "{junk:?}");
        }
    }

    #[test]
    fn bypass_tokens_and_scopes() {
        let (token, sha) = new_bypass_token();
        let mut p = protection();
        assert!(!p.bypass_matches(token.as_bytes()), "none set");
        p.bypass_sha256 = Some(hex::decode(sha).unwrap().try_into().unwrap());
        assert!(p.bypass_matches(token.as_bytes()));
        assert!(!p.bypass_matches(b"gdb_wrong"));
        assert!(p.covers(false) && !p.covers(true));
        p.scope = ProtectionScope::All;
        assert!(p.covers(true));
    }

    #[test]
    fn small_rules() {
        assert_eq!(
            cookie_in("a=1; gitdeploy_visitor=v1.2.3; b=2", COOKIE),
            Some("v1.2.3")
        );
        assert_eq!(cookie_in("xgitdeploy_visitor=1", COOKIE), None);
        for (next, want) in [
            ("/docs/?a=1", "/docs/?a=1"),
            ("//evil.example/", "/"),
            ("/\\evil.example/", "/"),
            ("https://evil.example/", "/"),
            ("", "/"),
            ("/a\nb", "/"),
        ] {
            assert_eq!(safe_next(next), want, "{next:?}");
        }
        assert!(validate_password("long enough").is_ok());
        assert!(validate_password("short").is_err());
        assert!(validate_password("with\ttab-x").is_err());
    }
}
