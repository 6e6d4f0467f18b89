//! What a build publishes: the output directory, confined to the checkout, walked into a file
//! list (limits, symlinks, names the storage or a URL cannot hold, files that are not the
//! build's own), and its `_redirects`/`_headers` rules. Nothing here uploads.

use std::path::{Path, PathBuf};

use gitdeploy_core::job::{BuildLimits, ServingOptions};
use gitdeploy_core::rules::{parse_headers, parse_redirects};
use gitdeploy_core::SiteRules;

use crate::detect;
use crate::events::Emitter;

/// Rule files read from the output root into the manifest; never published as files.
pub const RULE_FILES: [&str; 2] = ["_redirects", "_headers"];
/// Largest rule file read.
const MAX_RULE_FILE: u64 = 1 << 20;

/// A file to publish: where it is on disk and its site-relative path.
#[derive(Debug)]
pub struct OutputFile {
    /// Path on disk (symlinks already resolved).
    pub source: PathBuf,
    /// Site-relative path, `/`-separated.
    pub relative: String,
    /// The uid the file must belong to when it is opened for upload.
    pub owner: Option<u32>,
}

/// Where the files to publish come from and whose they must be.
pub struct OutputSource<'a> {
    /// The output directory (`output_dir`, or the root directory itself).
    pub root: &'a Path,
    /// The checkout: the output directory must resolve inside it, so an output directory that
    /// is (or passes through) a symlink cannot publish a directory of the host.
    pub checkout: &'a Path,
    /// The uid the repository's commands ran as, when that was not the builder's own: every file
    /// published must belong to it, so nothing the build merely linked (a hard link to a file of
    /// the host) is read with the builder's privileges.
    pub owner: Option<u32>,
    /// The repository itself is the site: dotfiles stay private.
    pub from_repo_root: bool,
    /// Longest site-relative path whose objects (and their variants) the bucket accepts.
    pub max_path_bytes: usize,
}

/// Why a site-relative path cannot be published, if it cannot: the bucket would refuse its key,
/// or a URL could never name it (control characters, backslashes).
pub fn unpublishable_path(relative: &str, max_path_bytes: usize) -> Option<String> {
    if let Some(c) = relative.chars().find(|c| c.is_control() || *c == '\\') {
        return Some(format!(
            "{relative:?} has a character no URL can name ({c:?}); rename the file"
        ));
    }
    if relative.len() > max_path_bytes {
        return Some(format!(
            "{relative:?} is {} bytes long; the storage accepts paths of up to {max_path_bytes} bytes here",
            relative.len()
        ));
    }
    None
}

/// The canonical output directory, refused unless it is a directory inside the checkout.
pub fn confined_output_root(root: &Path, checkout: &Path) -> Result<PathBuf, String> {
    let checkout = checkout
        .canonicalize()
        .map_err(|e| format!("cannot read the checkout: {e}"))?;
    let canonical = root
        .canonicalize()
        .map_err(|e| format!("cannot read the output directory: {e}"))?;
    if !canonical.starts_with(&checkout) {
        return Err(
            "the output directory resolves outside the repository (a symlink?); it must be a \
             directory inside the checkout"
                .into(),
        );
    }
    if !canonical.is_dir() {
        return Err("the output directory is not a directory".into());
    }
    Ok(canonical)
}

/// Opens a collected file for upload without following a symlink at its last component, and
/// checks again that it is a regular file of the expected owner.
pub fn open_output_file(file: &OutputFile) -> Result<std::fs::File, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&file.source)
        .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
    let meta = opened
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", file.relative));
    }
    if let Some(owner) = file.owner {
        if meta.uid() != owner {
            return Err(foreign_file(&file.relative, meta.uid()));
        }
    }
    Ok(opened)
}

fn foreign_file(relative: &str, uid: u32) -> String {
    format!("{relative} was not written by the build (it belongs to uid {uid}, a link to a file outside?)")
}

/// Walks the output directory and lists the files to publish. Dotfiles are hidden when the
/// repository itself is the site. Symlinks that resolve inside the output directory are
/// followed; any that point outside are refused, as are names that are not UTF-8 and files that
/// do not belong to the build.
pub fn collect(source: &OutputSource<'_>, limits: &BuildLimits) -> Result<Vec<OutputFile>, String> {
    use std::os::unix::fs::MetadataExt;
    let from_repo_root = source.from_repo_root;
    let canonical_root = confined_output_root(source.root, source.checkout)?;
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut dirs = vec![(canonical_root.clone(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list {prefix:?}: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {prefix:?}: {e}"))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| format!("file name {n:?} is not valid UTF-8"))?;
            let relative = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if name == ".git"
                || (from_repo_root && !detect::publish_from_root(&relative))
                || (prefix.is_empty() && RULE_FILES.contains(&name.as_str()))
            {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{relative}: {e}"))?;
            let (path, meta) = if meta.file_type().is_symlink() {
                let target = path
                    .canonicalize()
                    .map_err(|_| format!("symlink {relative} is broken"))?;
                if !target.starts_with(&canonical_root) {
                    return Err(format!(
                        "symlink {relative} points outside the output directory"
                    ));
                }
                let meta = std::fs::metadata(&target).map_err(|e| format!("{relative}: {e}"))?;
                if meta.is_dir() {
                    return Err(format!(
                        "symlink {relative} points to a directory; link files instead"
                    ));
                }
                (target, meta)
            } else {
                (path, meta)
            };
            if let Some(why) = unpublishable_path(&relative, source.max_path_bytes) {
                return Err(why);
            }
            if meta.is_dir() {
                dirs.push((path, relative));
            } else if meta.is_file() {
                if let Some(owner) = source.owner {
                    if meta.uid() != owner {
                        return Err(foreign_file(&relative, meta.uid()));
                    }
                }
                if meta.len() > limits.max_file_bytes {
                    return Err(format!(
                        "{relative} is {} bytes, over the limit of {} bytes per file",
                        meta.len(),
                        limits.max_file_bytes
                    ));
                }
                total += meta.len();
                if total > limits.max_output_bytes {
                    return Err(format!(
                        "the output is over the limit of {} bytes",
                        limits.max_output_bytes
                    ));
                }
                if files.len() as u64 >= limits.max_files {
                    return Err(format!(
                        "the output has more than {} files",
                        limits.max_files
                    ));
                }
                files.push(OutputFile {
                    source: path,
                    relative,
                    owner: source.owner,
                });
            }
        }
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

/// The text of rule file `name` (`_redirects`, `_headers`) at the output root, if there is one:
/// a regular file (not a link) of at most 1 MiB.
pub fn read_rule_file(root: &Path, name: &str) -> Result<Option<String>, String> {
    let path = root.join(name);
    match std::fs::symlink_metadata(&path) {
        Err(_) => Ok(None),
        Ok(meta) if !meta.is_file() => Err(format!("{name} must be a regular file")),
        Ok(meta) if meta.len() > MAX_RULE_FILE => {
            Err(format!("{name} is larger than {MAX_RULE_FILE} bytes"))
        }
        Ok(_) => std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|e| format!("cannot read {name}: {e}")),
    }
}

/// Reads `_redirects` and `_headers` from the output root into the site's rules, logging every
/// malformed line with its number (the line is skipped, the build goes on).
pub fn site_rules(
    root: &Path,
    options: &ServingOptions,
    emitter: &Emitter,
) -> Result<SiteRules, String> {
    let read = |name: &str| read_rule_file(root, name);
    let mut rules = SiteRules {
        spa: options.spa,
        clean_urls: options.clean_urls,
        ..SiteRules::default()
    };
    if let Some(text) = read("_redirects")? {
        let (parsed, errors) = parse_redirects(&text);
        for e in &errors {
            emitter.system(&format!("_redirects {e} (skipped)"));
        }
        emitter.system(&format!("_redirects: {} rules", parsed.len()));
        rules.redirects = parsed;
    }
    if let Some(text) = read("_headers")? {
        let (parsed, errors) = parse_headers(&text);
        for e in &errors {
            emitter.system(&format!("_headers {e} (skipped)"));
        }
        emitter.system(&format!("_headers: {} rules", parsed.len()));
        rules.headers = parsed;
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_follows_inner_links_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("index.html"), "x").unwrap();
        std::fs::write(root.join("a/b/deep file.txt"), "y").unwrap();
        std::fs::write(root.join(".env"), "SECRET=1").unwrap();
        std::fs::write(root.join("_redirects"), "/a /b").unwrap();
        std::fs::write(root.join("a/_headers"), "not at the root: a plain file").unwrap();
        std::os::unix::fs::symlink(root.join("index.html"), root.join("alias.html")).unwrap();

        let names =
            |files: Vec<OutputFile>| files.into_iter().map(|f| f.relative).collect::<Vec<_>>();
        let collect = |from_repo_root: bool, limits: &BuildLimits| {
            let source = OutputSource {
                root,
                checkout: root,
                owner: None,
                from_repo_root,
                max_path_bytes: 1000,
            };
            collect(&source, limits)
        };
        assert_eq!(
            names(collect(true, &BuildLimits::default()).unwrap()),
            [
                "a/_headers",
                "a/b/deep file.txt",
                "alias.html",
                "index.html"
            ]
        );
        assert!(
            names(collect(false, &BuildLimits::default()).unwrap()).contains(&".env".to_owned())
        );
        let tight = BuildLimits {
            max_files: 2,
            ..BuildLimits::default()
        };
        assert!(collect(true, &tight)
            .unwrap_err()
            .contains("more than 2 files"));
        let tight = BuildLimits {
            max_output_bytes: 2,
            ..BuildLimits::default()
        };
        assert!(collect(true, &tight)
            .unwrap_err()
            .contains("over the limit"));

        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        let err = collect(true, &BuildLimits::default()).unwrap_err();
        assert!(err.contains("points outside"), "{err}");
    }

    #[test]
    fn paths_the_storage_or_a_url_cannot_hold_are_named() {
        for ok in ["index.html", "a b/c\u{e9}.html", "deep/very/long.txt"] {
            assert_eq!(unpublishable_path(ok, 100), None, "{ok}");
        }
        for bad in [
            "new\nline.html",
            "cr\r.html",
            "tab\t.txt",
            "back\\slash.txt",
            "del\u{7f}",
        ] {
            let why = unpublishable_path(bad, 100).unwrap();
            assert!(why.contains("no URL can name"), "{why}");
        }
        let long = "a/".repeat(60);
        let why = unpublishable_path(&long, 100).unwrap();
        assert!(
            why.contains("120 bytes long") && why.contains("up to 100 bytes"),
            "{why}"
        );
    }

    #[test]
    fn the_output_root_and_its_files_must_be_the_builds() {
        use std::os::unix::fs::MetadataExt;
        let checkout = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret.txt"), "root only").unwrap();
        std::os::unix::fs::symlink(host.path(), checkout.path().join("public")).unwrap();
        std::fs::create_dir(checkout.path().join("real")).unwrap();
        std::os::unix::fs::symlink("../public", checkout.path().join("real/up")).unwrap();
        let err =
            confined_output_root(&checkout.path().join("public"), checkout.path()).unwrap_err();
        assert!(err.contains("resolves outside the repository"), "{err}");
        let err =
            confined_output_root(&checkout.path().join("real/up"), checkout.path()).unwrap_err();
        assert!(err.contains("resolves outside the repository"), "{err}");
        assert!(confined_output_root(&checkout.path().join("real"), checkout.path()).is_ok());

        let out = checkout.path().join("real");
        std::fs::write(out.join("index.html"), "x").unwrap();
        let mine = std::fs::metadata(out.join("index.html")).unwrap().uid();
        let source = |owner| OutputSource {
            root: &out,
            checkout: checkout.path(),
            owner,
            from_repo_root: false,
            max_path_bytes: 1000,
        };
        std::fs::remove_file(out.join("up")).unwrap();
        assert_eq!(
            collect(&source(Some(mine)), &BuildLimits::default())
                .unwrap()
                .len(),
            1
        );
        let err = collect(&source(Some(mine + 1)), &BuildLimits::default()).unwrap_err();
        assert!(
            err.contains("index.html was not written by the build"),
            "{err}"
        );
        let files = collect(&source(Some(mine)), &BuildLimits::default()).unwrap();
        assert!(open_output_file(&files[0]).is_ok());
        let foreign = OutputFile {
            owner: Some(mine + 1),
            ..files.into_iter().next().unwrap()
        };
        assert!(open_output_file(&foreign).is_err());
    }
}
