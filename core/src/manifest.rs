//! The deployment manifest: every file the build produced, with what the edge needs to answer a
//! request without asking S3 first. It is written last, so a deployment without a manifest does
//! not exist for the edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::path::{encode_path, SitePath};

/// Current manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// One deployment's file list (`manifests/<id>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The deployment this manifest describes.
    pub deployment: String,
    /// The git commit that was built, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// When the manifest was written (Unix milliseconds).
    pub created_unix_ms: u64,
    /// Files by site-relative path (`index.html`, `docs/a.html`).
    pub files: BTreeMap<String, FileEntry>,
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
        if m.version != MANIFEST_VERSION {
            return Err(format!("unsupported manifest version {}", m.version));
        }
        Ok(m)
    }

    fn file(&self, path: &str) -> Option<(&str, &FileEntry)> {
        self.files.get_key_value(path).map(|(k, v)| (k.as_str(), v))
    }

    /// Resolves a request path: `/` and `dir/` → `index.html`; `/dir` with `dir/index.html` →
    /// 308 to `/dir/`; `/about` → `about.html` when only that exists; otherwise the nearest
    /// `404.html` walking up from the request with status 404, else [`Resolution::NotFound`].
    pub fn resolve(&self, path: &SitePath) -> Resolution<'_> {
        let rel = path.relative();
        let found = if path.is_directory() {
            self.file(&join(&rel, "index.html"))
        } else {
            self.file(&rel).or_else(|| {
                if self.files.contains_key(&join(&rel, "index.html")) {
                    None
                } else {
                    self.file(&format!("{rel}.html"))
                }
            })
        };
        if let Some((path, entry)) = found {
            return Resolution::File {
                path,
                entry,
                status: 200,
            };
        }
        if !path.is_directory() && self.files.contains_key(&join(&rel, "index.html")) {
            return Resolution::Redirect {
                location: format!("/{}/", encode_path(&rel)),
                status: 308,
            };
        }
        self.not_found_page(path)
    }

    fn not_found_page(&self, path: &SitePath) -> Resolution<'_> {
        let segments = path.segments();
        // Directories to search, deepest first: for `/a/b/c` that is `a/b`, `a`, root.
        let depth = if path.is_directory() {
            segments.len()
        } else {
            segments.len().saturating_sub(1)
        };
        for n in (0..=depth).rev() {
            let candidate = join(&segments[..n].join("/"), "404.html");
            if let Some((path, entry)) = self.file(&candidate) {
                return Resolution::File {
                    path,
                    entry,
                    status: 404,
                };
            }
        }
        Resolution::NotFound
    }
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

    fn manifest(paths: &[&str]) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            deployment: "k3f9q2m8x1ab".into(),
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
                        },
                    )
                })
                .collect(),
        }
    }

    fn outcome(m: &Manifest, raw: &str) -> String {
        match m.resolve(&SitePath::parse(raw).unwrap()) {
            Resolution::File { path, status, .. } => format!("{status} {path}"),
            Resolution::Redirect { location, status } => format!("{status} -> {location}"),
            Resolution::NotFound => "404".into(),
        }
    }

    #[test]
    fn resolve_table() {
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
        for (raw, want) in [
            ("/", "200 index.html"),
            ("/index.html", "200 index.html"),
            ("/about", "200 about.html"),
            ("/about.html", "200 about.html"),
            ("/docs/", "200 docs/index.html"),
            ("/docs", "308 -> /docs/"),
            ("/docs/guide/intro.html", "200 docs/guide/intro.html"),
            ("/docs/guide/missing", "404 docs/404.html"),
            ("/docs/missing/", "404 docs/404.html"),
            ("/missing.js", "404 404.html"),
            ("/app.js", "200 app.js"),
            ("/with%20space.html", "200 with space.html"),
        ] {
            assert_eq!(outcome(&m, raw), want, "{raw}");
        }
        let bare = manifest(&["index.html", "My Dir/index.html"]);
        assert_eq!(outcome(&bare, "/nope"), "404");
        assert_eq!(outcome(&bare, "/My%20Dir"), "308 -> /My%20Dir/");
    }

    #[test]
    fn json_round_trip_and_version_check() {
        let m = manifest(&["index.html"]);
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        let mut future = m.clone();
        future.version = 99;
        assert!(Manifest::from_json(&serde_json::to_vec(&future).unwrap()).is_err());
        assert!(Manifest::from_json(b"{").is_err());
    }
}
