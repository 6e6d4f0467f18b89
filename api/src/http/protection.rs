//! A project's visitor protection as `PATCH /api/projects/{name}` changes it:
//! `"protection": null` turns it off; `{"scope"?, "password"?, "bypass_token"?}` turns it on or
//! changes it (a new password signs every visitor out; `"bypass_token": true` makes a new token,
//! shown once, `false` removes it).

use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::projects::Project;
use crate::protection::{
    new_bypass_token, new_cookie_key, validate_password, PasswordHash, Protection, ProtectionScope,
};

/// A change of protection, checked and with its slow work (hashing) done, ready to apply.
pub(super) enum ProtectionChange {
    Off,
    Set {
        scope: Option<ProtectionScope>,
        password: Option<PasswordHash>,
        /// `Some(Some((token, sha)))`: a new token; `Some(None)`: none.
        bypass: Option<Option<(String, String)>>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    #[serde(default)]
    scope: Option<ProtectionScope>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    bypass_token: Option<bool>,
}

impl ProtectionChange {
    /// Reads the `protection` field of a settings change.
    pub(super) async fn parse(value: Value) -> Result<Self, ApiError> {
        if value.is_null() {
            return Ok(ProtectionChange::Off);
        }
        let u: Update = serde_json::from_value(value).map_err(|e| {
            ApiError::bad_request("invalid_protection", format!("invalid protection: {e}"))
        })?;
        let password = match u.password {
            Some(p) => {
                validate_password(&p)
                    .map_err(|e| ApiError::bad_request("invalid_protection", e))?;
                // PBKDF2 is slow on purpose: off the request's thread.
                let hash = tokio::task::spawn_blocking(move || PasswordHash::new(&p))
                    .await
                    .map_err(ApiError::internal)?;
                Some(hash)
            }
            None => None,
        };
        Ok(ProtectionChange::Set {
            scope: u.scope,
            password,
            bypass: u.bypass_token.map(|on| on.then(new_bypass_token)),
        })
    }

    /// Applies it to `p`; the new bypass token, when one was made.
    pub(super) fn apply(&self, p: &mut Project) -> Result<Option<String>, ApiError> {
        let (scope, password, bypass) = match self {
            ProtectionChange::Off => {
                p.protection = None;
                return Ok(None);
            }
            ProtectionChange::Set {
                scope,
                password,
                bypass,
            } => (scope, password, bypass),
        };
        let mut next = p.protection.clone().unwrap_or(Protection {
            scope: ProtectionScope::Previews,
            password: None,
            bypass_sha256: None,
            cookie_key: new_cookie_key(),
        });
        if let Some(scope) = scope {
            next.scope = *scope;
        }
        if let Some(hash) = password {
            next.password = Some(hash.clone());
            next.cookie_key = new_cookie_key();
        }
        let mut shown = None;
        match bypass {
            Some(Some((token, sha))) => {
                next.bypass_sha256 = Some(sha.clone());
                shown = Some(token.clone());
            }
            Some(None) => next.bypass_sha256 = None,
            None => {}
        }
        if next.password.is_none() && next.bypass_sha256.is_none() {
            return Err(ApiError::bad_request(
                "invalid_protection",
                "protection needs a password or a bypass token (or \"protection\": null to turn it off)",
            ));
        }
        p.protection = Some(next);
        Ok(shown)
    }
}
