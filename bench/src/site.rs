//! The benchmark's site: 20 text assets from 1 KiB to 100 KiB plus one 50 MiB file, committed
//! to a local git repository for the edge and laid out on disk for nginx.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// Path of the large file.
pub const LARGE_PATH: &str = "/large.bin";
/// A file of exactly 10 KiB (the hot path's instruction counts use it).
pub const TEN_KIB_PATH: &str = "/ten-kib.html";

/// The fixture on disk.
pub struct Fixture {
    /// The site's files (also a git repository).
    pub root: PathBuf,
    _dir: tempfile::TempDir,
    small: Vec<String>,
}

impl Fixture {
    /// Writes and commits the site.
    pub fn create() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("assets"))?;
        let words = [
            "static", "edge", "cache", "deploy", "build", "stream", "signed", "bucket", "route",
            "brotli",
        ];
        let mut small = Vec::new();
        for i in 0..20u64 {
            let size = 1024 + i * (99 * 1024) / 19;
            let ext = ["js", "css", "html", "svg", "json"][i as usize % 5];
            let name = format!("assets/file{i:02}.{ext}");
            let mut body = String::new();
            let mut n = i;
            while (body.len() as u64) < size {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                body.push_str(words[(n >> 33) as usize % words.len()]);
                body.push(if n % 7 == 0 { '\n' } else { ' ' });
            }
            body.truncate(size as usize);
            std::fs::write(root.join(&name), body)?;
            small.push(format!("/{name}"));
        }
        std::fs::write(root.join("index.html"), "<h1>bench</h1>")?;
        let ten: String = words
            .iter()
            .cycle()
            .take(2000)
            .flat_map(|w| [*w, " "])
            .collect();
        std::fs::write(
            root.join(TEN_KIB_PATH.trim_start_matches('/')),
            &ten.as_bytes()[..10240],
        )?;
        let block: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        let mut large = Vec::with_capacity(50 << 20);
        for _ in 0..50 {
            large.extend_from_slice(&block);
        }
        std::fs::write(root.join(LARGE_PATH.trim_start_matches('/')), large)?;
        commit_all(&root, "bench site")?;
        Ok(Fixture {
            root,
            _dir: dir,
            small,
        })
    }

    /// Paths of the small files.
    pub fn small_paths(&self) -> Vec<String> {
        self.small.clone()
    }

    /// Every file's path and the blob that holds its bytes in the store (`blobs/<sha256>`), for
    /// peers that read the same S3 as the edge.
    pub fn blob_keys(&self) -> anyhow::Result<Vec<(String, String)>> {
        use sha2::Digest;
        let mut paths = self.small.clone();
        paths.extend([
            TEN_KIB_PATH.to_owned(),
            LARGE_PATH.to_owned(),
            "/index.html".into(),
        ]);
        paths
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(self.root.join(path.trim_start_matches('/')))?;
                let key = format!("blobs/{}", hex::encode(sha2::Sha256::digest(&bytes)));
                Ok((path, key))
            })
            .collect()
    }
}

/// A static site of `n` small files (no build step), committed to its own repository: what
/// the deploy-overhead scenario publishes.
pub struct Files {
    /// The repository.
    pub root: PathBuf,
    /// Bytes of all files.
    pub bytes: u64,
    _dir: tempfile::TempDir,
}

impl Files {
    /// Writes and commits `n` files of about 2 KiB across a few directories; `seed` makes
    /// every file's bytes differ from another seed's, so a deploy of it finds nothing stored.
    pub fn create(n: usize, seed: u32) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("site");
        let mut bytes = 0;
        for i in 0..n {
            let path = root.join(format!("d{}/page{i:04}.html", i % 10));
            std::fs::create_dir_all(path.parent().unwrap_or(&root))?;
            let body = format!("<p>page {i} of site {seed}</p>\n").repeat(100);
            bytes += body.len() as u64;
            std::fs::write(path, body)?;
        }
        std::fs::write(root.join("index.html"), "<h1>files</h1>")?;
        commit_all(&root, "files")?;
        Ok(Files {
            root,
            bytes,
            _dir: dir,
        })
    }
}

impl Files {
    /// Changes file `i` (a new version `v`) and commits the change.
    pub fn change_one(&self, i: usize, v: u32) -> anyhow::Result<()> {
        let path = self.root.join(format!("d{}/page{i:04}.html", i % 10));
        std::fs::write(path, format!("<p>page {i}, version {v}</p>\n").repeat(100))?;
        commit_changes(&self.root, "change")
    }
}

/// Makes `root` a git repository with everything in it committed.
pub fn commit_all(root: &std::path::Path, message: &str) -> anyhow::Result<()> {
    git(root, &["init", "-q"])?;
    commit_changes(root, message)
}

/// Commits everything changed in the repository at `root`.
fn commit_changes(root: &std::path::Path, message: &str) -> anyhow::Result<()> {
    git(root, &["add", "-A"])?;
    git(
        root,
        &[
            "-c",
            "user.email=bench@example.com",
            "-c",
            "user.name=bench",
            "commit",
            "-q",
            "-m",
            message,
        ],
    )
}

fn git(root: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("git")
        .args(args)
        .current_dir(root)
        .status()
        .context("git")?;
    if !status.success() {
        bail!("git {args:?} failed");
    }
    Ok(())
}
