//! The deployment manifest: every file the build produced, with what the edge needs to answer a
//! request without asking S3 first. It is written last, so a deployment without a manifest does
//! not exist for the edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::content::ContentHash;
use crate::path::{check_relative_path, encode_path, SitePath};
use crate::rules::{HeaderRule, RedirectRule};

/// Current manifest format version: 2 names every representation's blob by content hash
/// ([`FileEntry::hash`]); 1 (still read) kept files under the deployment's own prefix.
pub const MANIFEST_VERSION: u32 = 2;

/// The oldest manifest version this code still serves.
pub const OLDEST_MANIFEST_VERSION: u32 = 1;

/// One deployment's file list (`manifests/<id>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The deployment this manifest describes.
    pub deployment: String,
    /// The project the deployment belongs to, when it has one (absent in manifests written
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The git commit that was built, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// When the manifest was written (Unix milliseconds).
    pub created_unix_ms: u64,
    /// Files by site-relative path (`index.html`, `docs/a.html`).
    pub files: BTreeMap<String, FileEntry>,
    /// Serving rules: SPA fallback, clean URLs, redirects, header rules.
    #[serde(default)]
    pub rules: SiteRules,
}

/// How a site is served beyond its files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRules {
    /// SPA fallback: `Some(true)` always, `Some(false)` never, `None` automatically when the site
    /// has no top-level `404.html`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spa: Option<bool>,
    /// Redirect `/about.html` to `/about` (and `/x/index.html` to `/x/`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clean_urls: bool,
    /// `_redirects` rules, in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirects: Vec<RedirectRule>,
    /// `_headers` rules, in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderRule>,
}

/// A precompressed representation stored beside a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Brotli (`.br`).
    Br,
    /// Gzip (`.gz`).
    Gzip,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }

    /// Suffix of the variant's object key.
    pub fn suffix(self) -> &'static str {
        match self {
            Encoding::Br => ".br",
            Encoding::Gzip => ".gz",
        }
    }
}

/// Size and validator of one precompressed variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Compressed size in bytes.
    pub size: u64,
    /// ETag of this representation (differs from the identity ETag).
    pub etag: String,
    /// The blob holding the compressed bytes (its own content hash); absent in version 1,
    /// where the variant sits beside the file (`<path>.br`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ContentHash>,
}

/// One served file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// Strong ETag derived from the content hash, quotes included.
    pub etag: String,
    /// `Content-Type` to serve.
    pub content_type: String,
    /// The blob holding the bytes (`blobs/<hash>`); absent in version 1, where the file sits
    /// under the deployment's prefix (`sites/<id>/<path>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ContentHash>,
    /// Precompressed variants, when smaller than the file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub encodings: BTreeMap<Encoding, Variant>,
}

impl FileEntry {
    /// The blob holding one representation (the file, or its variant in `encoding`), when the
    /// manifest names one (version 2).
    pub fn blob(&self, encoding: Option<Encoding>) -> Option<ContentHash> {
        match encoding {
            None => self.hash,
            Some(enc) => self.encodings.get(&enc).and_then(|v| v.hash),
        }
    }
}

/// What the edge should do with a request path, decided from the manifest alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution<'a> {
    /// Serve this file with this status (200, or 404 for a `404.html` page).
    File {
        /// Site-relative path of the file.
        path: &'a str,
        /// Its manifest entry.
        entry: &'a FileEntry,
        /// Status to answer with.
        status: u16,
    },
    /// Redirect (a directory without its trailing slash).
    Redirect {
        /// Absolute path to redirect to, percent-encoded, without the query.
        location: String,
        /// Redirect status.
        status: u16,
    },
    /// Nothing to serve and no 404 page: a plain 404.
    NotFound,
}

impl Manifest {
    /// Parses a manifest, refusing versions this code does not understand.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !(OLDEST_MANIFEST_VERSION..=MANIFEST_VERSION).contains(&m.version) {
            return Err(format!("unsupported manifest version {}", m.version));
        }
        Ok(m)
    }

    /// Checks a manifest from an uploader the edge does not trust (a build task's staged
    /// upload, a client's folder): the deployment it claims, every path
    /// ([`check_relative_path`]), and a blob named for every file and variant (version 2).
    pub fn check_untrusted(&self, deployment: &str) -> Result<(), String> {
        if self.version != MANIFEST_VERSION {
            return Err(format!(
                "the manifest is version {}, not {MANIFEST_VERSION}",
                self.version
            ));
        }
        if self.deployment != deployment {
            return Err(format!(
                "the manifest describes deployment {:?}, not {deployment}",
                self.deployment
            ));
        }
        if self.files.is_empty() {
            return Err("the manifest lists no files".into());
        }
        for (path, entry) in &self.files {
            check_relative_path(path)?;
            if entry.hash.is_none() || entry.encodings.values().any(|v| v.hash.is_none()) {
                return Err(format!("{path:?} names no blob"));
            }
        }
        Ok(())
    }

    fn file(&self, path: &str) -> Option<(&str, &FileEntry)> {
        self.files.get_key_value(path).map(|(k, v)| (k.as_str(), v))
    }

    /// Resolves a request, in this order: forced redirect rules; clean-URL redirects; the file
    /// itself (`/` and `dir/` → `index.html`, `/about` → `about.html`, `/dir` → 308 to `/dir/`);
    /// other redirect rules; then the 404 handling: the nearest `404.html` with status 404, or the
    /// SPA fallback (`index.html` with 200) for paths that do not look like files.
    /// `query` is passed on to redirect targets.
    pub fn resolve(&self, path: &SitePath, query: Option<&str>) -> Resolution<'_> {
        if let Some(r) = self.redirect_rules(path, query, true) {
            return r;
        }
        let rel = path.relative();
        if self.rules.clean_urls && !path.is_directory() && self.files.contains_key(rel) {
            if let Some(stem) = rel.strip_suffix(".html") {
                let location = match stem.strip_suffix("index") {
                    Some(dir) if dir.is_empty() || dir.ends_with('/') => {
                        format!("/{}", encode_path(dir))
                    }
                    _ => format!("/{}", encode_path(stem)),
                };
                return redirect(location, 308, query);
            }
        }
        if let Some(found) = self.file_for(path) {
            return found;
        }
        if !path.is_directory() && self.files.contains_key(&join(rel, "index.html")) {
            return redirect(format!("/{}/", encode_path(rel)), 308, query);
        }
        if let Some(r) = self.redirect_rules(path, query, false) {
            return r;
        }
        self.not_found(path)
    }

    /// The file a path names directly (no rules, no 404 handling).
    fn file_for(&self, path: &SitePath) -> Option<Resolution<'_>> {
        let rel = path.relative();
        let found = if path.is_directory() {
            self.file(&join(rel, "index.html"))
        } else {
            self.file(rel).or_else(|| {
                if self.files.contains_key(&join(rel, "index.html")) {
                    None
                } else {
                    self.file(&format!("{rel}.html"))
                }
            })
        };
        found.map(|(path, entry)| Resolution::File {
            path,
            entry,
            status: 200,
        })
    }

    fn redirect_rules(
        &self,
        path: &SitePath,
        query: Option<&str>,
        forced: bool,
    ) -> Option<Resolution<'_>> {
        for rule in self.rules.redirects.iter().filter(|r| r.force == forced) {
            let Some(captures) = rule.from.matches(path) else {
                continue;
            };
            let target = rule.target(&captures, query);
            if rule.status != 200 {
                return Some(Resolution::Redirect {
                    location: target,
                    status: rule.status,
                });
            }
            // A rewrite serves another file of the site under this URL.
            let target_path = target.split('?').next().unwrap_or_default();
            return Some(
                match SitePath::parse(target_path)
                    .ok()
                    .and_then(|p| self.file_for(&p))
                {
                    Some(found) => found,
                    None => self.not_found(path),
                },
            );
        }
        None
    }

    fn not_found(&self, path: &SitePath) -> Resolution<'_> {
        let spa_fallback = || {
            let looks_like_file = path
                .segments()
                .last()
                .is_some_and(|s| s.get(1..).is_some_and(|rest| rest.contains('.')));
            (!path.is_directory() || path.segment_count() > 0)
                .then_some(())
                .filter(|_| !looks_like_file)
                .and_then(|_| self.file("index.html"))
                .map(|(path, entry)| Resolution::File {
                    path,
                    entry,
                    status: 200,
                })
        };
        let auto_spa = self.rules.spa.is_none() && !self.files.contains_key("404.html");
        if self.rules.spa == Some(true) {
            if let Some(r) = spa_fallback() {
                return r;
            }
        }
        if let Some(page) = self.not_found_page(path) {
            return page;
        }
        if auto_spa {
            if let Some(r) = spa_fallback() {
                return r;
            }
        }
        Resolution::NotFound
    }

    fn not_found_page(&self, path: &SitePath) -> Option<Resolution<'_>> {
        let count = path.segment_count();
        // Directories to search, deepest first: for `/a/b/c` that is `a/b`, `a`, root.
        let depth = if path.is_directory() {
            count
        } else {
            count.saturating_sub(1)
        };
        (0..=depth).rev().find_map(|n| {
            self.file(&join(path.prefix(n), "404.html"))
                .map(|(path, entry)| Resolution::File {
                    path,
                    entry,
                    status: 404,
                })
        })
    }

    /// Headers from `_headers` rules that match `path`, in file order (later ones win).
    pub fn extra_headers<'a>(
        &'a self,
        path: &'a SitePath,
    ) -> impl Iterator<Item = &'a (String, String)> + 'a {
        self.rules
            .headers
            .iter()
            .filter(|rule| rule.path.matches(path).is_some())
            .flat_map(|rule| rule.headers.iter())
    }
}

fn redirect(location: String, status: u16, query: Option<&str>) -> Resolution<'static> {
    let location = match query {
        Some(q) if !q.is_empty() => format!("{location}?{q}"),
        _ => location,
    };
    Resolution::Redirect { location, status }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{parse_headers, parse_redirects};

    fn manifest(paths: &[&str]) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            deployment: "k3f9q2m8x1ab".into(),
            project: None,
            commit: None,
            created_unix_ms: 0,
            files: paths
                .iter()
                .map(|p| {
                    (
                        p.to_string(),
                        FileEntry {
                            size: 1,
                            etag: format!("\"{p}\""),
                            content_type: "text/html".into(),
                            hash: None,
                            encodings: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            rules: SiteRules::default(),
        }
    }

    fn outcome(m: &Manifest, raw: &str) -> String {
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };
        match m.resolve(&SitePath::parse(path).unwrap(), query) {
            Resolution::File { path, status, .. } => format!("{status} {path}"),
            Resolution::Redirect { location, status } => format!("{status} -> {location}"),
            Resolution::NotFound => "404".into(),
        }
    }

    fn check(m: &Manifest, table: &[(&str, &str)]) {
        for (raw, want) in table {
            assert_eq!(outcome(m, raw), *want, "{raw}");
        }
    }

    #[test]
    fn files_indexes_and_nearest_404() {
        let m = manifest(&[
            "index.html",
            "about.html",
            "404.html",
            "docs/index.html",
            "docs/404.html",
            "docs/guide/intro.html",
            "app.js",
            "with space.html",
        ]);
        check(
            &m,
            &[
                ("/", "200 index.html"),
                ("/index.html", "200 index.html"),
                ("/about", "200 about.html"),
                ("/about.html", "200 about.html"),
                ("/docs/", "200 docs/index.html"),
                ("/docs", "308 -> /docs/"),
                ("/docs?x=1", "308 -> /docs/?x=1"),
                ("/docs/guide/intro.html", "200 docs/guide/intro.html"),
                ("/docs/guide/missing", "404 docs/404.html"),
                ("/docs/missing/", "404 docs/404.html"),
                ("/missing.js", "404 404.html"),
                // A top-level 404.html turns the automatic SPA fallback off.
                ("/app/deep/link", "404 404.html"),
                ("/app.js", "200 app.js"),
                ("/with%20space.html", "200 with space.html"),
            ],
        );
        let bare = manifest(&["index.html", "My Dir/index.html", "My Dir/x.css"]);
        check(
            &bare,
            &[("/My%20Dir", "308 -> /My%20Dir/"), ("/nope.css", "404")],
        );
    }

    #[test]
    fn spa_fallback() {
        // Automatic: no top-level 404.html.
        let auto = manifest(&["index.html", "app.js", "nested/404.html"]);
        check(
            &auto,
            &[
                ("/dashboard/settings", "200 index.html"),
                ("/dashboard/settings/", "200 index.html"),
                ("/missing.js", "404"),
                ("/nested/missing", "404 nested/404.html"),
            ],
        );
        // Explicitly on: wins over 404 pages for extensionless paths.
        let mut on = manifest(&["index.html", "404.html"]);
        on.rules.spa = Some(true);
        check(
            &on,
            &[("/deep/link", "200 index.html"), ("/x.png", "404 404.html")],
        );
        // Explicitly off.
        let mut off = manifest(&["index.html"]);
        off.rules.spa = Some(false);
        check(&off, &[("/deep/link", "404")]);
    }

    #[test]
    fn clean_urls() {
        let mut m = manifest(&["index.html", "about.html", "docs/index.html"]);
        m.rules.clean_urls = true;
        check(
            &m,
            &[
                ("/about.html", "308 -> /about"),
                ("/about.html?a=b", "308 -> /about?a=b"),
                ("/about", "200 about.html"),
                ("/index.html", "308 -> /"),
                ("/docs/index.html", "308 -> /docs/"),
                ("/docs/", "200 docs/index.html"),
            ],
        );
    }

    #[test]
    fn redirect_rules() {
        let mut m = manifest(&[
            "index.html",
            "old.html",
            "new.html",
            "shell.html",
            "404.html",
        ]);
        let (rules, errors) = parse_redirects(
            "/old /new 301\n/forced/* /new 302!\n/old.html /elsewhere 301!\n/blog/:slug /posts/:slug\n\
             /app/* /shell.html 200\n/gone/* /nothing.html 200\n/ext/* https://example.com/:splat 307\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        m.rules.redirects = rules;
        check(
            &m,
            &[
                // A file shadows a normal rule: /old resolves to old.html.
                ("/old", "200 old.html"),
                // A forced rule wins over the file.
                ("/old.html", "301 -> /elsewhere"),
                ("/forced/x", "302 -> /new"),
                ("/blog/hello?ref=x", "301 -> /posts/hello?ref=x"),
                ("/app/a/b", "200 shell.html"),
                ("/gone/x", "404 404.html"),
                ("/ext/a/b%20c", "307 -> https://example.com/a/b%20c"),
            ],
        );
    }

    #[test]
    fn header_rules_accumulate() {
        let mut m = manifest(&["index.html"]);
        let (rules, _) = parse_headers("/*\n  X-A: 1\n  X-B: 1\n/assets/*\n  X-B: 2\n");
        m.rules.headers = rules;
        let got: Vec<_> = m
            .extra_headers(&SitePath::parse("/assets/app.js").unwrap())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(got, ["x-a=1", "x-b=1", "x-b=2"]);
        assert_eq!(m.extra_headers(&SitePath::parse("/").unwrap()).count(), 2);
    }

    #[test]
    fn untrusted_manifests_name_a_blob_for_everything() {
        let mut m = manifest(&["index.html"]);
        let entry = m.files.get_mut("index.html").unwrap();
        entry.hash = Some(ContentHash::from_digest([1; 32]));
        entry.encodings.insert(
            Encoding::Br,
            Variant {
                size: 1,
                etag: String::new(),
                hash: Some(ContentHash::from_digest([2; 32])),
            },
        );
        assert_eq!(m.check_untrusted("k3f9q2m8x1ab"), Ok(()));
        assert!(m
            .check_untrusted("z9y8x7w6v5ut")
            .unwrap_err()
            .contains("not z9y8x7w6v5ut"));
        let mut no_blob = m.clone();
        no_blob
            .files
            .get_mut("index.html")
            .unwrap()
            .encodings
            .get_mut(&Encoding::Br)
            .unwrap()
            .hash = None;
        assert!(no_blob.check_untrusted("k3f9q2m8x1ab").is_err());
        let mut traversal = m.clone();
        let e = traversal.files.remove("index.html").unwrap();
        traversal.files.insert("../manifests/x.json".into(), e);
        assert!(traversal.check_untrusted("k3f9q2m8x1ab").is_err());
        let mut old = m.clone();
        old.version = 1;
        assert!(old.check_untrusted("k3f9q2m8x1ab").is_err());
        let mut empty = m;
        empty.files.clear();
        assert!(empty.check_untrusted("k3f9q2m8x1ab").is_err());
    }

    #[test]
    fn json_round_trip_and_version_check() {
        let mut m = manifest(&["index.html"]);
        m.rules.spa = Some(true);
        m.files.get_mut("index.html").unwrap().encodings.insert(
            Encoding::Br,
            Variant {
                size: 1,
                etag: "\"x-br\"".into(),
                hash: Some(ContentHash::from_digest([2; 32])),
            },
        );
        m.files.get_mut("index.html").unwrap().hash = Some(ContentHash::from_digest([1; 32]));
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        let entry = &m.files["index.html"];
        assert_eq!(entry.blob(None), Some(ContentHash::from_digest([1; 32])));
        assert_eq!(
            entry.blob(Some(Encoding::Br)),
            Some(ContentHash::from_digest([2; 32]))
        );
        assert_eq!(entry.blob(Some(Encoding::Gzip)), None);
        // Version 1 (files under the deployment's prefix) is still read.
        let mut old = manifest(&["index.html"]);
        old.version = 1;
        assert_eq!(
            Manifest::from_json(&serde_json::to_vec(&old).unwrap()).unwrap(),
            old
        );
        // A hash that is not 64 hex digits never parses (it could otherwise spell a key).
        let hostile = String::from_utf8(json)
            .unwrap()
            .replace(&"01".repeat(32), "../../manifests/x");
        assert!(Manifest::from_json(hostile.as_bytes()).is_err());
        let mut future = m.clone();
        future.version = 99;
        assert!(Manifest::from_json(&serde_json::to_vec(&future).unwrap()).is_err());
        assert!(Manifest::from_json(b"{").is_err());
    }
}
