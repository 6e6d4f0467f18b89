//! Framework build caches kept between builds of a project, beside its package manager's cache:
//! `.next/cache`, `node_modules/.cache`, `node_modules/.astro`, `.docusaurus`, `.angular/cache`…
//! (the detected framework's list, [`crate::detect::Framework::caches`]). Restored after the
//! install (which may replace `node_modules`) and before the build; kept after a build that
//! succeeded, each under a size cap.
//!
//! Both steps are shell commands run inside the build's sandbox as the build user, so a link
//! the repository planted (`.next/cache -> /etc`) can reach only what the build itself can: the
//! checkout and the project's cache. Links are never kept. This module builds those commands;
//! the steps run them.
//!
//! A builder whose disk does not outlive it (an ECS task) also keeps them in the bucket
//! ([`crate::remote_cache`]): the save step packs the store into an archive beside it, which the
//! builder uploads, and the restore step unpacks the archive the builder fetched, both as the
//! build user (the builder never unpacks what a build wrote).

/// Where the kept caches live, under the project's cache directory.
const DIR: &str = "framework";

/// Largest cache directory kept, in KiB (one directory; the build's disk limit still applies).
pub const MAX_KIB: u64 = 512 * 1024;

/// Whether `path` may name a cache directory: relative, no `..`, no empty or odd segments.
fn is_safe(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|s| {
            !s.is_empty()
                && s != ".."
                && s != "."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

/// The kept caches' directory for a root directory of the repository (`""` for its root),
/// relative to the project's cache directory.
pub fn store(root_dir: &str) -> String {
    let key: String = root_dir
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{DIR}/{}", if key.is_empty() { "_root" } else { &key })
}

/// The archive of a store, beside it (relative to the project's cache directory like it).
pub fn archive(store: &str) -> String {
    format!("{store}.tar.gz")
}

/// The command that restores the kept `paths` (relative to the build's directory) from
/// `store`, after unpacking `archive` into it when one is given and exists (it is removed);
/// each restored path is announced on stdout. It always succeeds: a cache that cannot be
/// restored costs time, not the build.
pub fn restore(store: &str, archive: Option<&str>, paths: &[&str]) -> Vec<String> {
    command(
        r#"store="$1"; archive="$2"; shift 2
if [ -n "$archive" ] && [ -f "$archive" ] && [ ! -L "$archive" ]; then
  if mkdir -p "$store" && tar -xzf "$archive" -C "$store" --no-same-owner --no-same-permissions; then
    echo "Build cache: unpacked the stored copy"
  else
    echo "Build cache: the stored copy could not be unpacked"
  fi
  rm -f "$archive"
fi
for p in "$@"; do
  if [ -d "$store/$p" ] && [ ! -L "$store/$p" ] && [ ! -e "$p" ] && [ ! -L "$p" ]; then
    mkdir -p "$(dirname "$p")" && mv "$store/$p" "$p" && echo "Build cache: restored $p"
  fi
done
exit 0"#,
        store,
        archive,
        paths,
    )
}

/// The command that keeps `paths` in `store` after a successful build: directories only (never
/// links), each at most [`MAX_KIB`]; what was kept or left out is announced on stdout. With an
/// `archive`, the store is then packed into it (for the builder to upload).
pub fn save(store: &str, archive: Option<&str>, paths: &[&str]) -> Vec<String> {
    command(
        &format!(
            r#"store="$1"; archive="$2"; shift 2
for p in "$@"; do
  if [ -L "$p" ]; then echo "Build cache: not kept $p (a link)"; continue; fi
  [ -d "$p" ] || continue
  kib=$(du -sk "$p" | cut -f1)
  if [ "$kib" -gt {MAX_KIB} ]; then echo "Build cache: not kept $p ($kib KiB, over {MAX_KIB} KiB)"; continue; fi
  rm -rf "$store/$p.new" && mkdir -p "$(dirname "$store/$p")" && mv "$p" "$store/$p.new" \
    && rm -rf "$store/$p" && mv "$store/$p.new" "$store/$p" && echo "Build cache: kept $p ($kib KiB)"
done
if [ -n "$archive" ]; then
  rm -f "$archive"
  if [ -d "$store" ] && [ -n "$(ls -A "$store")" ]; then
    tar -czf "$archive" -C "$store" . || rm -f "$archive"
  fi
fi
exit 0"#
        ),
        store,
        archive,
        paths,
    )
}

fn command(script: &str, store: &str, archive: Option<&str>, paths: &[&str]) -> Vec<String> {
    let mut argv = vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        store.into(),
        archive.unwrap_or("").into(),
    ];
    argv.extend(paths.iter().filter(|p| is_safe(p)).map(|p| p.to_string()));
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_reach_the_commands() {
        for (path, ok) in [
            ("node_modules/.cache", true),
            (".next/cache", true),
            ("../etc", false),
            ("/etc", false),
            ("a//b", false),
            ("a/./b", false),
            ("", false),
            ("$(x)", false),
            ("a b", false),
        ] {
            assert_eq!(is_safe(path), ok, "{path}");
        }
        let argv = save("/s", None, &[".next/cache", "../x"]);
        assert_eq!(&argv[3..], ["sh", "/s", "", ".next/cache"]);
        let argv = restore("/s", Some("/s.tar.gz"), &["a"]);
        assert_eq!(&argv[3..], ["sh", "/s", "/s.tar.gz", "a"]);
    }

    #[test]
    fn stores_are_per_root_directory() {
        assert_eq!(store(""), "framework/_root");
        assert_eq!(store("packages/site/"), "framework/packages_site");
        assert_eq!(archive("framework/_root"), "framework/_root.tar.gz");
    }
}
