//! Named API tokens with scopes and an optional project, and the rule of what each request
//! needs ([`need`]).
//!
//! The platform's own token (`--api-token`) can do everything; named tokens are made with it
//! (or with another admin token) and can do what their scopes allow: `read` (every `GET`),
//! `deploy` (deploy, upload, cancel, pin, promote and roll back, and read) or `admin` (project
//! settings, domains, deletions, tokens, the audit log, and the rest). A token restricted to a
//! project reaches that project and its deployments only. The secret is shown once, when the
//! token is made; the store keeps its SHA-256 (a random 160-bit secret needs no slow hash), in
//! one document ([`crate::store::DOC_TOKENS`]) read on each API request, so a revoked token
//! stops working on every edge at once.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::records::Records;
use crate::store::{contention, StoreError, Versioned, Write, DOC_TOKENS, MAX_ATTEMPTS};

/// What a token may do; each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every read.
    Read,
    /// Deploys, uploads, cancels, pins, promotes and rollbacks.
    Deploy,
    /// Everything else: settings, domains, deletions, tokens, the audit log.
    Admin,
}

impl Scope {
    /// Its name as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }
}

/// One named token, as stored (the secret itself never is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Its id (`tok_` and 12 letters and digits), for listing and revoking.
    pub id: String,
    /// A name for people ("ci", "alice's laptop").
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub sha256: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// The one project it may reach, if restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Made at (Unix ms).
    pub created_unix_ms: u64,
    /// Who made it (an actor as the audit log names it).
    pub created_by: String,
}

impl ApiToken {
    /// Whether its scopes include `need`.
    pub fn allows(&self, need: Scope) -> bool {
        self.scopes.iter().any(|s| *s >= need)
    }
}

/// The stored document: every named token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TokenSet {
    tokens: Vec<ApiToken>,
}

/// Named tokens a platform may hold.
pub const MAX_TOKENS: usize = 200;

/// SHA-256 of a token, as the configuration and the tokens document keep it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// A fresh secret: `gdt_` and 40 letters and digits (about 238 bits).
pub fn new_secret() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("gdt_{}", Alphanumeric.sample_string(&mut rand::rng(), 40))
}

fn new_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("tok_{tail}")
}

/// Checks a token's name: 1-64 characters, no control characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 64 || n.chars().any(char::is_control) {
        return Err("a token's name is 1-64 characters without control characters".into());
    }
    Ok(())
}

/// Who a request stands for, as the token check found it.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Anyone: the API runs without a token (`up` on loopback).
    Open,
    /// The platform's own token.
    Root,
    /// A named token.
    Token(Arc<ApiToken>),
}

impl Caller {
    /// How the audit log names it.
    pub fn actor(&self) -> String {
        match self {
            Caller::Open => "anonymous (open API)".to_owned(),
            Caller::Root => "platform token".to_owned(),
            Caller::Token(t) => format!("token {} ({})", t.name, t.id),
        }
    }

    /// The one project it may reach, if restricted.
    pub fn project(&self) -> Option<&str> {
        match self {
            Caller::Open | Caller::Root => None,
            Caller::Token(t) => t.project.as_deref(),
        }
    }

    /// Whether its scopes include `need`.
    pub fn allows(&self, need: Scope) -> bool {
        match self {
            Caller::Open | Caller::Root => true,
            Caller::Token(t) => t.allows(need),
        }
    }

    /// `Ok` when it may reach `project` (`None`: something of no project, which a restricted
    /// token may not reach).
    pub fn may_reach(&self, project: Option<&str>) -> Result<(), ApiError> {
        match (self.project(), project) {
            (None, _) => Ok(()),
            (Some(own), Some(p)) if own == p => Ok(()),
            (Some(own), Some(p)) => Err(ApiError::forbidden(
                "project_not_allowed",
                format!("this token reaches project {own} only, not {p}"),
            )),
            (Some(own), None) => Err(ApiError::forbidden(
                "project_not_allowed",
                format!("this token reaches project {own} only"),
            )),
        }
    }

    /// Whether it sees `project` in a listing.
    pub fn sees(&self, project: Option<&str>) -> bool {
        self.may_reach(project).is_ok()
    }
}

/// What a request needs beyond a valid token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need<'a> {
    /// The scope.
    pub scope: Scope,
    /// Which project it touches.
    pub reach: Reach<'a>,
}

/// Which project a request touches, as far as its method and path tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach<'a> {
    /// Nothing to check: public routes and unknown ones.
    Nothing,
    /// The project named in the path.
    Project(&'a str),
    /// The project of the deployment named in the path (looked up).
    Deployment(&'a str),
    /// Named in the body, or a listing filtered to what the caller reaches (the route checks).
    Route,
    /// The platform itself (tokens, audit log, garbage collection, new projects): tokens
    /// restricted to a project may not.
    Platform,
}

/// Routes that need no token: the dashboard's files, health, the API description, and the
/// hooks, which carry their own secrets.
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/api/health" | "/api/ready" | "/api/openapi.json" | "/api/hooks/github"
    ) || path.starts_with("/assets/")
        || path.starts_with("/api/hooks/deploy/")
}

/// What a request of `method` to `path` needs (a pure rule, table-tested).
pub fn need<'a>(method: &str, path: &'a str) -> Need<'a> {
    let read = method == "GET" || method == "HEAD";
    let parts: Vec<&'a str> = path.trim_start_matches('/').split('/').collect();
    let (scope, reach) = match parts.as_slice() {
        ["api", "tokens", ..] | ["api", "audit"] | ["api", "gc"] => (Scope::Admin, Reach::Platform),
        ["api", "projects"] if read => (Scope::Read, Reach::Route),
        ["api", "projects"] => (Scope::Admin, Reach::Platform),
        ["api", "deployments"] if read => (Scope::Read, Reach::Route),
        ["api", "deployments"] | ["deploy"] => (Scope::Deploy, Reach::Route),
        ["api", "projects", name, rest @ ..] => {
            let scope = match (read, rest) {
                (true, _) => Scope::Read,
                (false, ["promote"] | ["rollback"]) => Scope::Deploy,
                (false, _) => Scope::Admin,
            };
            (scope, Reach::Project(name))
        }
        ["api", "deployments", id, rest @ ..] => {
            let scope = match (read, rest) {
                (true, _) => Scope::Read,
                (false, []) => Scope::Admin,
                (false, _) => Scope::Deploy,
            };
            (scope, Reach::Deployment(id))
        }
        _ if read => (Scope::Read, Reach::Nothing),
        _ => (Scope::Admin, Reach::Platform),
    };
    Need { scope, reach }
}

/// The answer when a caller's scopes fall short.
pub fn insufficient(caller: &Caller, need: Scope) -> ApiError {
    let has = match caller {
        Caller::Open | Caller::Root => "admin".to_owned(),
        Caller::Token(t) => t
            .scopes
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
    };
    ApiError::forbidden(
        "insufficient_scope",
        format!(
            "this token's scopes are [{has}]; this request needs {}",
            need.name()
        ),
    )
}

impl Records {
    async fn token_set(&self) -> Result<Versioned<TokenSet>, StoreError> {
        match self.store().doc(DOC_TOKENS).await? {
            Some(doc) => Ok(Versioned {
                version: doc.version,
                value: serde_json::from_value(doc.value).map_err(|e| {
                    StoreError::Failed(std::io::Error::other(format!(
                        "the tokens document is unreadable: {e}"
                    )))
                })?,
            }),
            None => Ok(Versioned {
                version: 0,
                value: TokenSet::default(),
            }),
        }
    }

    /// Every named token.
    pub async fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        Ok(self.token_set().await?.value.tokens)
    }

    /// The named token whose secret hashes to `sha256`.
    pub async fn token_by_hash(&self, sha256: &[u8; 32]) -> Result<Option<ApiToken>, StoreError> {
        let wanted = hex::encode(sha256);
        Ok(self
            .tokens()
            .await?
            .into_iter()
            .find(|t| constant_time_eq(t.sha256.as_bytes(), wanted.as_bytes())))
    }

    /// Changes the token set with `f` (retried on conflict).
    async fn update_tokens<T>(
        &self,
        mut f: impl FnMut(&mut Vec<ApiToken>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.token_set().await?;
            let mut next = current.value.clone();
            let out = f(&mut next.tokens)?;
            let write = Write::Doc {
                name: DOC_TOKENS,
                expect: current.version,
                value: serde_json::to_value(&next)
                    .map_err(|e| StoreError::Failed(std::io::Error::other(e)))?,
            };
            if self
                .store()
                .commit(vec![write])
                .await
                .map_err(StoreError::from)?
            {
                return Ok(out);
            }
        }
        Err(contention().into())
    }

    /// Makes a named token; returns it and its secret (shown this once).
    pub async fn create_token(
        &self,
        name: &str,
        scopes: Vec<Scope>,
        project: Option<String>,
        created_by: String,
    ) -> Result<(ApiToken, String), ApiError> {
        let secret = new_secret();
        let token = ApiToken {
            id: new_id(),
            name: name.trim().to_owned(),
            sha256: hex::encode(token_sha256(&secret)),
            scopes,
            project,
            created_unix_ms: crate::now_ms(),
            created_by,
        };
        self.update_tokens(|tokens| {
            if tokens.len() >= MAX_TOKENS {
                return Err(ApiError::conflict(
                    "too_many_tokens",
                    format!("a platform holds at most {MAX_TOKENS} named tokens: revoke some"),
                ));
            }
            if tokens.iter().any(|t| t.name == token.name) {
                return Err(ApiError::conflict(
                    "token_exists",
                    format!(
                        "a token named {:?} exists: revoke it or choose another name",
                        token.name
                    ),
                ));
            }
            tokens.push(token.clone());
            Ok(())
        })
        .await?;
        Ok((token, secret))
    }

    /// Revokes the token `id`; `false` when there is none.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, ApiError> {
        self.update_tokens(|tokens| {
            let before = tokens.len();
            tokens.retain(|t| t.id != id);
            Ok(tokens.len() != before)
        })
        .await
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_route_needs() {
        use Reach::*;
        use Scope::*;
        for (method, path, scope, reach) in [
            ("GET", "/api/deployments", Read, Route),
            ("POST", "/api/deployments", Deploy, Route),
            ("POST", "/deploy", Deploy, Route),
            ("GET", "/api/deployments/abc", Read, Deployment("abc")),
            (
                "GET",
                "/api/deployments/abc/logs/ws",
                Read,
                Deployment("abc"),
            ),
            ("DELETE", "/api/deployments/abc", Admin, Deployment("abc")),
            (
                "POST",
                "/api/deployments/abc/cancel",
                Deploy,
                Deployment("abc"),
            ),
            (
                "PUT",
                "/api/deployments/abc/blobs/h",
                Deploy,
                Deployment("abc"),
            ),
            (
                "POST",
                "/api/deployments/abc/pin",
                Deploy,
                Deployment("abc"),
            ),
            ("GET", "/api/projects", Read, Route),
            ("POST", "/api/projects", Admin, Platform),
            ("GET", "/api/projects/p", Read, Project("p")),
            ("GET", "/api/projects/p/deliveries", Read, Project("p")),
            ("PATCH", "/api/projects/p", Admin, Project("p")),
            ("DELETE", "/api/projects/p", Admin, Project("p")),
            ("POST", "/api/projects/p/promote", Deploy, Project("p")),
            ("POST", "/api/projects/p/rollback", Deploy, Project("p")),
            ("POST", "/api/projects/p/domains", Admin, Project("p")),
            (
                "DELETE",
                "/api/projects/p/domains/x.com",
                Admin,
                Project("p"),
            ),
            ("GET", "/api/tokens", Admin, Platform),
            ("POST", "/api/tokens", Admin, Platform),
            ("DELETE", "/api/tokens/tok_x", Admin, Platform),
            ("GET", "/api/audit", Admin, Platform),
            ("POST", "/api/gc", Admin, Platform),
            ("GET", "/api/elsewhere", Read, Nothing),
            ("POST", "/api/elsewhere", Admin, Platform),
        ] {
            assert_eq!(need(method, path), Need { scope, reach }, "{method} {path}");
        }
    }

    #[test]
    fn scopes_include_the_lesser_ones() {
        let token = |scopes: Vec<Scope>| ApiToken {
            id: "tok_x".into(),
            name: "t".into(),
            sha256: String::new(),
            scopes,
            project: None,
            created_unix_ms: 0,
            created_by: String::new(),
        };
        let deploy = token(vec![Scope::Deploy]);
        assert!(deploy.allows(Scope::Read) && deploy.allows(Scope::Deploy));
        assert!(!deploy.allows(Scope::Admin));
        assert!(!token(vec![]).allows(Scope::Read));
        assert!(token(vec![Scope::Read, Scope::Admin]).allows(Scope::Deploy));
    }

    #[test]
    fn a_restricted_caller_reaches_its_project_only() {
        let caller = Caller::Token(Arc::new(ApiToken {
            id: "tok_x".into(),
            name: "t".into(),
            sha256: String::new(),
            scopes: vec![Scope::Admin],
            project: Some("docs".into()),
            created_unix_ms: 0,
            created_by: String::new(),
        }));
        assert!(caller.may_reach(Some("docs")).is_ok());
        assert!(caller.may_reach(Some("blog")).is_err());
        assert!(caller.may_reach(None).is_err());
        assert!(Caller::Root.may_reach(None).is_ok());
        assert_eq!(
            caller.may_reach(Some("blog")).unwrap_err().code_for_tests(),
            "project_not_allowed"
        );
    }

    #[test]
    fn secrets_and_names() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with("gdt_") && a.len() == 44 && a != b);
        assert!(new_id().starts_with("tok_"));
        assert!(validate_name("ci").is_ok());
        assert!(validate_name("  ").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
        assert!(is_public("/api/hooks/deploy/p/s") && is_public("/assets/app.js"));
        assert!(!is_public("/api/tokens"));
    }
}
