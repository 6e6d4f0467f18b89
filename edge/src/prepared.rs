//! A manifest made ready to serve (#18). What every response of a file repeats (its content
//! type, each representation's ETag, its `Cache-Control`, the deployment's `Last-Modified`) is
//! built once, as header values, when the manifest enters the cache; a request then clones
//! reference-counted values instead of checking, copying and formatting text, and its plan
//! holds the file by an `Arc` instead of a copy of its entry. Counted by callgrind, this is
//! what a hot file or a 304 no longer allocates per request.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use gitdeploy_core::{Encoding, FileEntry, Manifest};
use http::header::{HeaderMap, HeaderValue};

use crate::serving::{cache_control, conditional};

/// A manifest and its files' header values. Derefs to the [`Manifest`], whose rules resolve
/// paths; [`PreparedManifest::file`] then hands out the resolved file's prepared form.
#[derive(Debug)]
pub struct PreparedManifest {
    manifest: Manifest,
    /// By site-relative path; the key is the file's own `path`, one allocation for both.
    files: HashMap<Arc<str>, Arc<PreparedFile>>,
    modified: SystemTime,
    last_modified: HeaderValue,
}

/// One file of a manifest with the header values its responses carry.
#[derive(Debug)]
pub struct PreparedFile {
    /// Site-relative path.
    pub path: Arc<str>,
    /// Its manifest entry.
    pub entry: FileEntry,
    /// `Content-Type`; `None` when the manifest's text cannot be a header value (the
    /// response is then refused, as it was before values were prepared).
    content_type: Option<HeaderValue>,
    /// The identity ETag, then each variant's, in the entry's order.
    etags: Vec<(Option<Encoding>, Option<HeaderValue>)>,
    /// `Cache-Control` when served as itself (a 404 page always revalidates).
    cache_control: &'static str,
    /// The headers of its plain answers, made on first use by [`crate::respond`] (which alone
    /// knows how): one per representation.
    answers: OnceLock<Vec<PlainAnswer>>,
    /// The bytes every cached manifest's answers draw from (see [`AnswerBudget`]).
    budget: AnswerBudget,
}

/// What one file's plain answers are counted as: up to three representations, a `200` and a
/// `304` header map each (about 1.5 KiB a representation, measured by their entries).
const ANSWER_BYTES: usize = 4096;

/// The bytes all files' plain answers may hold together, shared by every manifest of one
/// cache: a file takes [`ANSWER_BYTES`] when it makes its answers and gives them back when its
/// manifest leaves the cache. Once it is spent, answers are built per request, as before, so
/// memory stays bounded however many files are asked for, and the manifests' own weight (what
/// decides how many stay cached) is not inflated for files nobody requests.
#[derive(Clone, Debug)]
pub struct AnswerBudget(Arc<AtomicUsize>);

impl AnswerBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        AnswerBudget(Arc::new(AtomicUsize::new(bytes)))
    }

    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                n.checked_sub(ANSWER_BYTES)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.0.fetch_add(ANSWER_BYTES, Ordering::Relaxed);
    }

    /// Bytes left.
    #[cfg(test)]
    fn left(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The headers of a file's plain answers in one representation: `200` with the whole body,
/// and `304`, with no `_headers` rule, range or visitor protection involved. A request that
/// gets one clones it (reference counts) instead of building it.
#[derive(Debug)]
pub struct PlainAnswer {
    /// The representation (`None`: the file itself).
    pub encoding: Option<Encoding>,
    /// `200`'s headers.
    pub ok: HeaderMap,
    /// `304`'s headers.
    pub not_modified: HeaderMap,
}

/// A header value of `text`, kept in shared bytes so each clone is a reference count.
fn shared(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(text.as_bytes())).ok()
}

impl PreparedManifest {
    /// Prepares every file of `manifest`.
    pub fn new(manifest: Manifest, budget: &AnswerBudget) -> Self {
        let files = manifest
            .files
            .iter()
            .map(|(path, entry)| {
                let etags = std::iter::once((None, shared(&entry.etag)))
                    .chain(
                        entry
                            .encodings
                            .iter()
                            .map(|(enc, v)| (Some(*enc), shared(&v.etag))),
                    )
                    .collect();
                let path: Arc<str> = Arc::from(path.as_str());
                let file = PreparedFile {
                    path: path.clone(),
                    entry: entry.clone(),
                    content_type: shared(&entry.content_type),
                    etags,
                    cache_control: cache_control::for_path(&path),
                    answers: OnceLock::new(),
                    budget: budget.clone(),
                };
                (path, Arc::new(file))
            })
            .collect();
        let modified = conditional::last_modified(manifest.created_unix_ms);
        let last_modified = HeaderValue::try_from(httpdate::fmt_http_date(modified))
            .expect("an HTTP date is a valid header value");
        PreparedManifest {
            manifest,
            files,
            modified,
            last_modified,
        }
    }

    /// The prepared file at site-relative `path` (as [`Manifest::resolve`] names it).
    pub fn file(&self, path: &str) -> Option<&Arc<PreparedFile>> {
        self.files.get(path)
    }

    /// When the deployment was published, and that time as a `Last-Modified` value.
    pub fn modified(&self) -> (SystemTime, &HeaderValue) {
        (self.modified, &self.last_modified)
    }

    /// Bytes held, estimated for the cache's weigher: the manifest and the prepared copy
    /// (plain answers are bounded apart, by their [`AnswerBudget`]).
    pub fn weight(&self) -> usize {
        self.manifest
            .files
            .iter()
            .map(|(k, v)| 2 * (k.len() + v.content_type.len() + v.etag.len()) + 256)
            .sum()
    }
}

impl Drop for PreparedFile {
    fn drop(&mut self) {
        if self.answers.get().is_some() {
            self.budget.give_back();
        }
    }
}

impl Deref for PreparedManifest {
    type Target = Manifest;

    fn deref(&self) -> &Manifest {
        &self.manifest
    }
}

impl PreparedFile {
    /// `Content-Type`, when the manifest's text is a valid value.
    pub fn content_type(&self) -> Option<&HeaderValue> {
        self.content_type.as_ref()
    }

    /// The ETag of the representation in `encoding` (`None`: the file itself), when the
    /// manifest's text is a valid value.
    pub fn etag(&self, encoding: Option<Encoding>) -> Option<&HeaderValue> {
        self.etags
            .iter()
            .find(|(e, _)| *e == encoding)
            .and_then(|(_, v)| v.as_ref())
    }

    /// `Cache-Control` when served as itself.
    pub fn cache_control(&self) -> &'static str {
        self.cache_control
    }

    /// Its plain answers, made by `make` the first time while the [`AnswerBudget`] lasts;
    /// `None` when it is spent (the answer is then built each time).
    pub fn plain_answers(&self, make: impl FnOnce() -> Vec<PlainAnswer>) -> Option<&[PlainAnswer]> {
        if let Some(made) = self.answers.get() {
            return Some(made);
        }
        if !self.budget.take() {
            return None;
        }
        let mut made_here = false;
        let answers = self.answers.get_or_init(|| {
            made_here = true;
            make()
        });
        if !made_here {
            // Another request made them first: what this one took goes back.
            self.budget.give_back();
        }
        Some(answers)
    }

    /// Whether its plain answers were made.
    #[cfg(test)]
    pub fn has_answers(&self) -> bool {
        self.answers.get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitdeploy_core::Variant;

    fn manifest() -> Manifest {
        let entry = |etag: &str, ct: &str| FileEntry {
            size: 10,
            etag: etag.into(),
            content_type: ct.into(),
            hash: None,
            encodings: Default::default(),
        };
        let mut js = entry("\"js\"", "text/javascript");
        js.encodings.insert(
            Encoding::Br,
            Variant {
                size: 4,
                etag: "\"js-br\"".into(),
                hash: None,
            },
        );
        Manifest {
            version: gitdeploy_core::manifest::MANIFEST_VERSION,
            deployment: "k3f9q2m8x1ab".into(),
            project: None,
            commit: None,
            created_unix_ms: 1_700_000_000_123,
            files: [
                ("index.html".to_owned(), entry("\"i\"", "text/html")),
                ("assets/app-BkWq3x9Z.js".to_owned(), js),
                ("bad.txt".to_owned(), entry("\"b\"", "text/plain\nx: y")),
            ]
            .into(),
            rules: Default::default(),
        }
    }

    #[test]
    fn each_file_carries_the_values_its_responses_repeat() {
        let m = PreparedManifest::new(manifest(), &AnswerBudget::new(usize::MAX));
        let index = m.file("index.html").unwrap();
        assert_eq!(index.content_type().unwrap(), "text/html");
        assert_eq!(index.etag(None).unwrap(), "\"i\"");
        assert_eq!(index.etag(Some(Encoding::Br)), None);
        assert_eq!(index.cache_control(), cache_control::REVALIDATE);
        let js = m.file("assets/app-BkWq3x9Z.js").unwrap();
        assert_eq!(js.etag(Some(Encoding::Br)).unwrap(), "\"js-br\"");
        assert_eq!(js.etag(None).unwrap(), "\"js\"");
        assert_eq!(js.cache_control(), cache_control::for_path(&js.path));
        assert_ne!(js.cache_control(), cache_control::REVALIDATE);
        // Text a header cannot hold is kept as "none", refused when a response needs it.
        assert_eq!(m.file("bad.txt").unwrap().content_type(), None);
        assert!(m.file("missing.html").is_none());
        // Last-Modified is the publish time, whole seconds, as the validators compare it.
        let (modified, text) = m.modified();
        assert_eq!(modified, conditional::last_modified(1_700_000_000_123));
        assert_eq!(text, "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(m.project, None, "derefs to the manifest");
    }

    #[test]
    fn answers_draw_from_one_budget_and_give_it_back_with_their_manifest() {
        let budget = AnswerBudget::new(2 * ANSWER_BYTES);
        let first = PreparedManifest::new(manifest(), &budget);
        let second = PreparedManifest::new(manifest(), &budget);
        let made = |m: &PreparedManifest, path: &str| {
            m.file(path).unwrap().plain_answers(Vec::new).is_some()
        };
        assert!(made(&first, "index.html"));
        assert!(made(&first, "index.html"), "kept, nothing more taken");
        assert!(made(&second, "bad.txt"));
        assert_eq!(budget.left(), 0);
        assert!(!made(&second, "index.html"), "spent: built per request");
        drop(first);
        assert_eq!(
            budget.left(),
            ANSWER_BYTES,
            "the evicted manifest gave its share back"
        );
        assert!(made(&second, "index.html"));
        drop(second);
        assert_eq!(budget.left(), 2 * ANSWER_BYTES);
    }
}
