//! The archive a source folder travels in (`gitdeploy deploy .`): a gzipped tar the CLI packs
//! and the builder unpacks in place of a clone.
//!
//! Packing is deterministic (sorted paths, no owners, times or permissions but the executable
//! bit), so an unchanged folder packs to the same bytes, hence the same blob, and is not sent
//! again. Unpacking treats the archive as hostile: only files, folders and links; paths are
//! relative and plain (no `.`, `..`, empty parts, NUL or backslash); a link must point inside
//! the folder as seen from where it is, and nothing is ever written through a link (every
//! ancestor of an entry is a folder the archive made), so what the link check sees is what the
//! file system resolves; no path twice; entries and unpacked bytes bounded, so a small archive
//! that inflates without end stops at the limit.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// One entry to pack, relative to the folder, `/`-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    /// Its path.
    pub path: String,
    /// What it is.
    pub kind: SourceKind,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A regular file of `size` bytes.
    File {
        /// Its size when listed.
        size: u64,
        /// Whether its owner may execute it.
        executable: bool,
    },
    /// A symbolic link to `target` (checked by [`check_link_target`]).
    Link(String),
}

/// Bounds of an unpacking.
#[derive(Clone, Copy, Debug)]
pub struct UnpackLimits {
    /// Bytes of all files together.
    pub max_bytes: u64,
    /// Entries (files, folders and links).
    pub max_entries: u64,
}

/// What an unpacking wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The parts of an archive member's path, refused unless it is relative and plain. One
/// trailing `/` (a folder's) is allowed.
pub fn check_member_path(path: &str) -> Result<Vec<&str>, String> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let bad = |why: &str| Err(format!("archive path {path:?} {why}"));
    if trimmed.is_empty() {
        return bad("is empty");
    }
    if trimmed.len() > 4096 {
        return bad("is longer than 4,096 bytes");
    }
    if trimmed.starts_with('/') {
        return bad("is absolute");
    }
    if trimmed.contains('\0') || trimmed.contains('\\') {
        return bad("holds a NUL or a backslash");
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    for part in &parts {
        match *part {
            "" => return bad("has an empty part"),
            "." | ".." => return bad("has a `.` or `..` part"),
            p if p.len() > 255 => return bad("has a part longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(parts)
}

/// Refuses a link at `path` whose `target` would resolve outside the folder (from the link's
/// own place, through real folders: see the module doc), or is absolute.
pub fn check_link_target(path: &str, target: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("link {path:?} -> {target:?} {why}"));
    if target.is_empty() || target.contains('\0') {
        return bad("has no usable target");
    }
    if target.starts_with('/') {
        return bad("is absolute: links must stay inside the folder");
    }
    let mut depth = path.split('/').count() as i64 - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return bad("leaves the folder");
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Packs `entries` of folder `dir` (in the order given: sort them for a deterministic
/// archive) into `out`. A file that changed size since it was listed, or became something else
/// than a file, is an error: the archive would not be what was listed.
pub fn pack(dir: &Path, entries: &[SourceEntry], out: impl Write) -> Result<(), String> {
    let gz = GzEncoder::new(out, flate2::Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let full = dir.join(&entry.path);
        match &entry.kind {
            SourceKind::File { size, executable } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                header.set_size(*size);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&full)
                    .map_err(|e| format!("cannot read {}: {e}", entry.path))?;
                let mut counted = Counted {
                    inner: file.take(*size + 1),
                    n: 0,
                };
                tar.append_data(&mut header, &entry.path, &mut counted)
                    .map_err(|e| format!("cannot pack {}: {e}", entry.path))?;
                if counted.n != *size {
                    return Err(format!(
                        "{} changed while it was packed (deploy again once it is written)",
                        entry.path
                    ));
                }
            }
            SourceKind::Link(target) => {
                check_link_target(&entry.path, target)?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, &entry.path, target)
                    .map_err(|e| format!("cannot pack {}: {e}", entry.path))?;
            }
        }
    }
    let gz = tar
        .into_inner()
        .map_err(|e| format!("cannot write the archive: {e}"))?;
    gz.finish()
        .map_err(|e| format!("cannot write the archive: {e}"))?;
    Ok(())
}

/// A reader that counts what it read.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Unpacks archive `gz` into the empty folder `dest` by the rules of the module doc.
pub fn unpack(gz: impl Read, dest: &Path, limits: &UnpackLimits) -> Result<Unpacked, String> {
    let mut archive = tar::Archive::new(GzDecoder::new(gz));
    let mut links: HashSet<String> = HashSet::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut done = Unpacked::default();
    let mut entries_seen = 0u64;
    let unreadable = |e: std::io::Error| format!("the source archive is unreadable: {e}");
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        entries_seen += 1;
        if entries_seen > limits.max_entries {
            return Err(format!(
                "the source holds more than {} entries",
                limits.max_entries
            ));
        }
        let raw = entry.path_bytes().into_owned();
        let path = std::str::from_utf8(&raw)
            .map_err(|_| {
                format!(
                    "archive path {:?} is not UTF-8",
                    String::from_utf8_lossy(&raw)
                )
            })?
            .to_owned();
        let parts = check_member_path(&path)?;
        let key = parts.join("/");
        for i in 1..parts.len() {
            if links.contains(&parts[..i].join("/")) {
                return Err(format!(
                    "{key} is inside a link: nothing is written through one"
                ));
            }
        }
        if !seen.insert(key.clone()) {
            return Err(format!("{key} is in the archive twice"));
        }
        let full = dest.join(&key);
        let parent = full.parent().unwrap_or(dest);
        let io = |e: std::io::Error| format!("cannot write {key}: {e}");
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => match std::fs::create_dir_all(&full) {
                Ok(()) => {}
                Err(e) => return Err(io(e)),
            },
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target = String::from_utf8(target)
                    .map_err(|_| format!("link {key:?} has a target that is not UTF-8"))?;
                check_link_target(&key, &target)?;
                std::fs::create_dir_all(parent).map_err(io)?;
                std::os::unix::fs::symlink(&target, &full).map_err(io)?;
                links.insert(key);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                std::fs::create_dir_all(parent).map_err(io)?;
                let executable = entry.header().mode().unwrap_or(0) & 0o100 != 0;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if executable { 0o755 } else { 0o644 })
                    .open(&full)
                    .map_err(io)?;
                let room = limits.max_bytes - done.bytes;
                let n = std::io::copy(&mut (&mut entry).take(room + 1), &mut file)
                    .map_err(|e| format!("the source archive is unreadable at {key}: {e}"))?;
                if n > room {
                    return Err(format!(
                        "the source is over {} bytes unpacked",
                        limits.max_bytes
                    ));
                }
                done.bytes += n;
                done.files += 1;
            }
            other => {
                return Err(format!(
                "{key} is a {other:?} entry: a source archive holds files, folders and links only"
            ))
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_are_relative_and_plain() {
        for (path, ok) in [
            ("index.html", true),
            ("src/app/main.ts", true),
            ("src/", true),
            (".github/workflows/ci.yml", true),
            ("", false),
            ("/etc/passwd", false),
            ("../x", false),
            ("a/../../x", false),
            ("a/./b", false),
            ("a//b", false),
            ("a\\b", false),
            ("a\0b", false),
            (&"x".repeat(256), false),
        ] {
            assert_eq!(check_member_path(path).is_ok(), ok, "{path:?}");
        }
        assert_eq!(check_member_path("a/b/").unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn links_stay_inside_from_where_they_are() {
        for (path, target, ok) in [
            ("link", "src/a.js", true),
            ("src/link", "../README.md", true),
            ("a/b/c", "../../x", true),
            ("a/b/c", "../../../x", false),
            ("link", "..", false),
            ("link", "../sibling", false),
            ("link", "/etc/passwd", false),
            ("link", "", false),
            ("a/link", "./b/../../c", true),
            ("a/link", "b/../../../c", false),
        ] {
            assert_eq!(
                check_link_target(path, target).is_ok(),
                ok,
                "{path} -> {target}"
            );
        }
    }

    fn file(path: &str, size: u64) -> SourceEntry {
        SourceEntry {
            path: path.into(),
            kind: SourceKind::File {
                size,
                executable: false,
            },
        }
    }

    const LIMITS: UnpackLimits = UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };

    #[test]
    fn a_folder_packs_the_same_twice_and_unpacks_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/deep")).unwrap();
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        std::fs::write(dir.path().join("src/deep/a.js"), "let a = 1;\n").unwrap();
        std::fs::write(dir.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("src/deep/a.js", dir.path().join("alias.js")).unwrap();
        let long = format!("src/{}.txt", "n".repeat(200));
        std::fs::write(dir.path().join(&long), "long name").unwrap();
        let entries = vec![
            SourceEntry {
                path: "alias.js".into(),
                kind: SourceKind::Link("src/deep/a.js".into()),
            },
            file("package.json", 2),
            SourceEntry {
                path: "run.sh".into(),
                kind: SourceKind::File {
                    size: 10,
                    executable: true,
                },
            },
            file(&long, 9),
            file("src/deep/a.js", 11),
        ];
        let (mut one, mut two) = (Vec::new(), Vec::new());
        pack(dir.path(), &entries, &mut one).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        pack(dir.path(), &entries, &mut two).unwrap();
        assert_eq!(one, two, "the same folder packs to the same bytes");

        let out = tempfile::tempdir().unwrap();
        let done = unpack(&one[..], out.path(), &LIMITS).unwrap();
        assert_eq!(
            done,
            Unpacked {
                files: 4,
                bytes: 32
            }
        );
        assert_eq!(
            std::fs::read_to_string(out.path().join("alias.js")).unwrap(),
            "let a = 1;\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.path().join(&long)).unwrap(),
            "long name"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(out.path().join(p))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode("run.sh") & 0o111, 0o111);
        assert_eq!(mode("package.json") & 0o111, 0);
    }

    #[test]
    fn a_file_that_changed_since_listing_is_not_packed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "longer than listed").unwrap();
        let err = pack(dir.path(), &[file("a", 3)], Vec::new()).unwrap_err();
        assert!(err.contains("changed while it was packed"), "{err}");
        let err = pack(dir.path(), &[file("a", 300)], Vec::new()).unwrap_err();
        assert!(err.contains("changed while it was packed"), "{err}");
    }

    /// An archive written by hand, as a hostile client could: `build` adds raw entries.
    fn hostile(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        build(&mut tar);
        let raw = tar.into_inner().unwrap();
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    }

    fn raw_entry(
        tar: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &str,
        link: &str,
        body: &[u8],
    ) {
        let mut h = tar::Header::new_old();
        // Written into the header's bytes directly: the builder's own setters refuse `..`.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_cksum();
        tar.append(&h, body).unwrap();
    }

    #[test]
    fn hostile_archives_are_refused_and_write_nothing_outside() {
        use tar::EntryType as T;
        type Case = (&'static str, Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>);
        let cases: Vec<Case> = vec![
            (
                "`..`",
                Box::new(|t| raw_entry(t, T::Regular, "../escape", "", b"x")),
            ),
            (
                "absolute",
                Box::new(|t| raw_entry(t, T::Regular, "/tmp/escape", "", b"x")),
            ),
            (
                "leaves the folder",
                Box::new(|t| raw_entry(t, T::Symlink, "up", "..", b"")),
            ),
            (
                "absolute",
                Box::new(|t| raw_entry(t, T::Symlink, "etc", "/etc", b"")),
            ),
            (
                "inside a link",
                Box::new(|t| {
                    raw_entry(t, T::Symlink, "a", ".", b"");
                    raw_entry(t, T::Symlink, "a/a/l", "../..", b"");
                }),
            ),
            (
                "twice",
                Box::new(|t| {
                    raw_entry(t, T::Regular, "x", "", b"1");
                    raw_entry(t, T::Regular, "x", "", b"2");
                }),
            ),
            (
                "cannot write x/y",
                Box::new(|t| {
                    raw_entry(t, T::Regular, "x", "", b"a file");
                    raw_entry(t, T::Regular, "x/y", "", b"under a file");
                }),
            ),
            (
                "files, folders and links only",
                Box::new(|t| raw_entry(t, T::Link, "hard", "x", b"")),
            ),
            (
                "files, folders and links only",
                Box::new(|t| raw_entry(t, T::Char, "dev", "", b"")),
            ),
            (
                "files, folders and links only",
                Box::new(|t| raw_entry(t, T::Fifo, "fifo", "", b"")),
            ),
            (
                "over 1048576 bytes",
                Box::new(|t| raw_entry(t, T::Regular, "big", "", &vec![0; (1 << 20) + 1])),
            ),
            (
                "more than 100 entries",
                Box::new(|t| {
                    for i in 0..101 {
                        raw_entry(t, T::Regular, &format!("f{i}"), "", b"");
                    }
                }),
            ),
        ];
        for (want, build) in cases {
            let root = tempfile::tempdir().unwrap();
            let dest = root.path().join("src");
            std::fs::create_dir(&dest).unwrap();
            let err = unpack(&hostile(build)[..], &dest, &LIMITS).unwrap_err();
            assert!(err.contains(want), "want {want:?}, got {err}");
            let outside: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
            assert_eq!(outside.len(), 1, "{want}: nothing but src/ outside");
        }
        let err = unpack(
            &b"not gzip"[..],
            tempfile::tempdir().unwrap().path(),
            &LIMITS,
        )
        .unwrap_err();
        assert!(err.contains("unreadable"), "{err}");
    }

    #[test]
    fn an_inflating_archive_stops_at_the_limit() {
        // 64 MiB of zeros gzip to well under 1 MiB; unpacking stops at the 1 MiB limit.
        let bomb = hostile(|t| {
            let mut h = tar::Header::new_gnu();
            h.set_path("zeros").unwrap();
            h.set_size(64 << 20);
            h.set_mode(0o644);
            h.set_cksum();
            t.append(&h, std::io::repeat(0).take(64 << 20)).unwrap();
        });
        assert!(
            bomb.len() < LIMITS.max_bytes as usize,
            "smaller than what it inflates past"
        );
        let dest = tempfile::tempdir().unwrap();
        let err = unpack(&bomb[..], dest.path(), &LIMITS).unwrap_err();
        assert!(err.contains("over 1048576 bytes unpacked"), "{err}");
        assert!(std::fs::metadata(dest.path().join("zeros")).unwrap().len() <= (1 << 20) + 1);
    }
}
