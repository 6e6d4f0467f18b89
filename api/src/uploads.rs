//! The upload protocol's rules, as pure functions the HTTP handlers (`http::uploads`) call: what
//! a client may plan (paths, sizes, counts, no path twice) and how a finalized file list becomes
//! the deployment's manifest (ETags made from the hashes here, `_redirects` and `_headers`
//! compiled here from the text the client sent, never taken compiled from it).
//!
//! ```text
//! POST /api/deployments {"source": "local folder", "project"?, "serving"?}  → 201, status "uploading"
//! POST /api/deployments/{id}/missing  {"files": [{"path", "hash", "size"}]} → {"missing": [hash], "stored": {hash: variants}}
//! PUT  /api/deployments/{id}/blobs/{hash}   the bytes (checked against the hash) → 204
//! POST /api/deployments/{id}/finalize {"files": [{"path", "hash", "size", "content_type", "encodings"?: {"br": {"hash", "size"}}}],
//!                                      "redirects"?: text, "headers"?: text} → 200, status "ready"
//! ```
//!
//! A source folder (`gitdeploy deploy .`) opens with `"archive": {"hash", "size"}` (answered with
//! `"missing"`), puts that one blob, and finalizes with `{}`: its build is queued.

use std::collections::{BTreeMap, BTreeSet};

use gitdeploy_core::job::{BuildLimits, ServingOptions};
use gitdeploy_core::manifest::MANIFEST_VERSION;
use gitdeploy_core::path::check_relative_path;
use gitdeploy_core::rules::{parse_headers, parse_redirects};
use gitdeploy_core::{
    ContentHash, DeploymentId, Encoding, FileEntry, Manifest, SiteRules, Variant,
};
use serde::Deserialize;

use crate::error::ApiError;

/// The largest `_redirects` or `_headers` text accepted (as a build accepts).
const MAX_RULE_TEXT: usize = 1 << 20;

/// One file of a plan: what the client is about to publish.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlannedFile {
    pub(crate) path: String,
    pub(crate) hash: ContentHash,
    pub(crate) size: u64,
}

/// The body of `missing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Plan {
    pub(crate) files: Vec<PlannedFile>,
}

/// A precompressed variant the client made and uploaded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadedVariant {
    hash: ContentHash,
    size: u64,
}

/// One file of a finalize.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadedFile {
    path: String,
    hash: ContentHash,
    size: u64,
    content_type: String,
    #[serde(default)]
    encodings: BTreeMap<Encoding, UploadedVariant>,
}

/// The body of `finalize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Finalize {
    files: Vec<UploadedFile>,
    #[serde(default)]
    redirects: Option<String>,
    #[serde(default)]
    headers: Option<String>,
}

/// Parses a JSON body, naming what is wrong.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid {what}: {e}")))
}

/// Checks a list of (path, size) against the limits a build's output has: every path a site
/// path, none twice, no file over the file limit, the count and the total within theirs.
pub(crate) fn check_files<'a>(
    files: impl IntoIterator<Item = (&'a str, u64)>,
    limits: &BuildLimits,
) -> Result<(), ApiError> {
    let too_large = ApiError::too_large;
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for (path, size) in files {
        check_relative_path(path).map_err(|e| ApiError::bad_request("invalid_path", e))?;
        if !seen.insert(path) {
            return Err(ApiError::bad_request(
                "duplicate_path",
                format!("{path:?} is listed twice"),
            ));
        }
        if size > limits.max_file_bytes {
            return Err(too_large(format!(
                "{path:?} is {size} bytes; files of up to {} bytes are accepted",
                limits.max_file_bytes
            )));
        }
        total = total.saturating_add(size);
    }
    if seen.is_empty() {
        return Err(ApiError::bad_request(
            "no_files",
            "the folder has no files to publish",
        ));
    }
    if seen.len() as u64 > limits.max_files {
        return Err(too_large(format!(
            "the folder has {} files; up to {} are accepted",
            seen.len(),
            limits.max_files
        )));
    }
    if total > limits.max_output_bytes {
        return Err(too_large(format!(
            "the folder holds {total} bytes; up to {} are accepted",
            limits.max_output_bytes
        )));
    }
    Ok(())
}

/// The manifest of a finalized upload, and the rule lines that were skipped (for the log).
pub(crate) fn manifest(
    id: &DeploymentId,
    project: Option<&str>,
    serving: &ServingOptions,
    upload: Finalize,
    limits: &BuildLimits,
    now: u64,
) -> Result<(Manifest, Vec<String>), ApiError> {
    check_files(
        upload.files.iter().map(|f| (f.path.as_str(), f.size)),
        limits,
    )?;
    let mut warnings = Vec::new();
    let mut rules = SiteRules {
        spa: serving.spa,
        clean_urls: serving.clean_urls,
        ..SiteRules::default()
    };
    for (name, text) in [
        ("_redirects", &upload.redirects),
        ("_headers", &upload.headers),
    ] {
        if text.as_ref().is_some_and(|t| t.len() > MAX_RULE_TEXT) {
            return Err(ApiError::too_large(format!(
                "{name} is larger than {MAX_RULE_TEXT} bytes"
            )));
        }
    }
    if let Some(text) = &upload.redirects {
        let (parsed, errors) = parse_redirects(text);
        warnings.extend(errors.iter().map(|e| format!("_redirects {e} (skipped)")));
        warnings.push(format!("_redirects: {} rules", parsed.len()));
        rules.redirects = parsed;
    }
    if let Some(text) = &upload.headers {
        let (parsed, errors) = parse_headers(text);
        warnings.extend(errors.iter().map(|e| format!("_headers {e} (skipped)")));
        warnings.push(format!("_headers: {} rules", parsed.len()));
        rules.headers = parsed;
    }
    let files = upload
        .files
        .into_iter()
        .map(|f| {
            let encodings = f
                .encodings
                .into_iter()
                .map(|(enc, v)| {
                    let variant = Variant {
                        size: v.size,
                        etag: f.hash.variant_etag(enc.token()),
                        hash: Some(v.hash),
                    };
                    (enc, variant)
                })
                .collect();
            let entry = FileEntry {
                size: f.size,
                etag: f.hash.etag(),
                content_type: f.content_type,
                hash: Some(f.hash),
                encodings,
            };
            (f.path, entry)
        })
        .collect();
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        deployment: id.to_string(),
        project: project.map(str::to_owned),
        commit: None,
        created_unix_ms: now,
        files,
        rules,
    };
    Ok((manifest, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_checked_against_the_limits() {
        let limits = BuildLimits {
            max_files: 3,
            max_file_bytes: 100,
            max_output_bytes: 250,
            ..BuildLimits::default()
        };
        let code = |files: &[(&str, u64)]| {
            check_files(files.iter().copied(), &limits)
                .err()
                .map(|e| e.code_for_tests().to_owned())
        };
        assert_eq!(code(&[("index.html", 10), ("a/b.css", 100)]), None);
        for (files, want) in [
            (&[][..], "no_files"),
            (&[("a", 1), ("a", 1)], "duplicate_path"),
            (&[("../etc/passwd", 1)], "invalid_path"),
            (&[("/abs", 1)], "invalid_path"),
            (&[("a\0b", 1)], "invalid_path"),
            (&[("a\\b", 1)], "invalid_path"),
            (&[("a//b", 1)], "invalid_path"),
            (&[("big", 101)], "too_large"),
            (&[("a", 1), ("b", 1), ("c", 1), ("d", 1)], "too_large"),
            (&[("a", 100), ("b", 100), ("c", 100)], "too_large"),
        ] {
            assert_eq!(code(files).as_deref(), Some(want), "{files:?}");
        }
    }

    #[test]
    fn a_manifest_is_made_here_from_the_list() {
        let id = DeploymentId::parse("k3f9q2m8x1ab").unwrap();
        let h = ContentHash::from_digest([7; 32]);
        let v = ContentHash::from_digest([8; 32]);
        let body = format!(
            r#"{{"files":[{{"path":"index.html","hash":"{h}","size":2000,"content_type":"text/html",
                "encodings":{{"br":{{"hash":"{v}","size":300}}}}}}],
               "redirects":"/old /new 301\nnonsense line here and more\n","headers":"/*\n  X-A: b\n"}}"#
        );
        let upload: Finalize = parse(body.as_bytes(), "finalize").unwrap();
        let serving = ServingOptions::default();
        let (m, warnings) = manifest(
            &id,
            Some("site"),
            &serving,
            upload,
            &BuildLimits::default(),
            5,
        )
        .unwrap();
        let entry = &m.files["index.html"];
        assert_eq!(entry.etag, h.etag());
        assert_eq!(entry.encodings[&Encoding::Br].etag, h.variant_etag("br"));
        assert_eq!(m.rules.redirects.len(), 1);
        assert_eq!(m.rules.headers.len(), 1);
        assert!(
            warnings.iter().any(|w| w.contains("skipped")),
            "{warnings:?}"
        );
        m.check_untrusted(id.as_str()).unwrap();
        // Compiled rules or an etag are not the client's to send.
        for extra in [r#""rules":{}"#, r#""etag":"\"x\"""#] {
            let body = format!(r#"{{"files":[], {extra}}}"#);
            assert!(
                parse::<Finalize>(body.as_bytes(), "finalize").is_err(),
                "{extra}"
            );
        }
        let dup = format!(
            r#"{{"files":[{{"path":"a","hash":"{h}","size":1,"content_type":"text/plain"}},
                          {{"path":"a","hash":"{h}","size":1,"content_type":"text/plain"}}]}}"#
        );
        let upload: Finalize = parse(dup.as_bytes(), "finalize").unwrap();
        let err = manifest(&id, None, &serving, upload, &BuildLimits::default(), 5).unwrap_err();
        assert_eq!(err.code_for_tests(), "duplicate_path");
    }
}
