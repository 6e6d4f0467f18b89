//! Which changes a project's build depends on, for monorepos: its root directory and its watch
//! paths. A push whose changed files all fall outside both is skipped instead of built (as
//! Cloudflare Pages' build watch paths and Vercel's skipping of unaffected projects do). Pure
//! rules; the builder lists the changed files with git.
//!
//! A pattern is a path relative to the repository's root. `*` matches within one segment, `?`
//! one character, `**` any number of segments; a pattern matches a path when it matches the
//! path or one of its parent directories (so `shared` and `shared/` watch everything below
//! `shared/`, and `packages/*` every package). A leading `!` excludes what it matches, from the
//! root directory too (`!web/README.md`).

/// Most watch paths a project may have.
pub const MAX_PATTERNS: usize = 32;
/// Longest watch path.
pub const MAX_PATTERN_LEN: usize = 256;

/// Checks watch paths; the message names the first bad one.
pub fn validate(patterns: &[String]) -> Result<(), String> {
    if patterns.len() > MAX_PATTERNS {
        return Err(format!(
            "watch_paths has {} entries; at most {MAX_PATTERNS} are allowed",
            patterns.len()
        ));
    }
    for p in patterns {
        let body = p.strip_prefix('!').unwrap_or(p).trim_end_matches('/');
        let ok = !body.is_empty()
            && p.len() <= MAX_PATTERN_LEN
            && !body.starts_with('/')
            && body
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..")
            && body
                .chars()
                .all(|c| !c.is_control() && c != '\\' && c != '!');
        if !ok {
            return Err(format!(
                "watch path {p:?} must be a relative path inside the repository (segments \
                 with * ? or **, a leading ! to exclude)"
            ));
        }
    }
    Ok(())
}

/// Whether the change to `path` (relative to the repository's root) concerns the build: it lies
/// under `root_dir` or matches a watch path, and no `!` pattern excludes it. With neither a root
/// directory nor an including watch path, the whole repository is watched.
pub fn affects(path: &str, root_dir: Option<&str>, patterns: &[String]) -> bool {
    let includes: Vec<&str> = patterns
        .iter()
        .map(String::as_str)
        .filter(|p| !p.starts_with('!'))
        .collect();
    let root = root_dir.map(|r| r.trim_end_matches('/'));
    let included = (root.is_none() && includes.is_empty())
        || root.is_some_and(|r| matches(r, path))
        || includes.iter().any(|p| matches(p, path));
    included
        && !patterns
            .iter()
            .filter_map(|p| p.strip_prefix('!'))
            .any(|p| matches(p, path))
}

/// The first of `changed` that concerns the build ([`affects`]), if any.
pub fn first_affecting<'a>(
    changed: &'a [String],
    root_dir: Option<&str>,
    patterns: &[String],
) -> Option<&'a str> {
    changed
        .iter()
        .map(String::as_str)
        .find(|p| affects(p, root_dir, patterns))
}

/// Whether `pattern` matches `path` or one of its parent directories.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.trim_end_matches('/').split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    (1..=path.len()).any(|n| segments_match(&pattern, &path[..n]))
}

fn segments_match(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| segments_match(rest, &path[skip..])),
        Some((first, rest)) => path
            .split_first()
            .is_some_and(|(seg, tail)| segment_matches(first, seg) && segments_match(rest, tail)),
    }
}

/// `*` and `?` within one segment.
fn segment_matches(pattern: &str, segment: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), segment.chars().collect());
    // Classic wildcard matching with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < s.len() {
        if i < p.len() && (p[i] == '?' || p[i] == s[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(st) = star {
            i = st + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pattern_table() {
        for (pattern, path, want) in [
            ("shared", "shared/a.ts", true),
            ("shared/", "shared/deep/a.ts", true),
            ("shared", "shared", true),
            ("shared", "sharedx/a.ts", false),
            ("shared", "web/shared/a.ts", false),
            ("packages/*", "packages/ui/src/x.ts", true),
            ("packages/*/package.json", "packages/ui/package.json", true),
            (
                "packages/*/package.json",
                "packages/ui/src/package.json",
                false,
            ),
            ("**/package.json", "package.json", true),
            ("**/package.json", "a/b/package.json", true),
            ("docs/**/*.md", "docs/a/b/c.md", true),
            ("docs/**/*.md", "docs/c.md", true),
            ("docs/**/*.md", "docs/c.txt", false),
            ("*.config.js", "vite.config.js", true),
            ("*.config.js", "web/vite.config.js", false),
            ("v?te.js", "vite.js", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(matches(pattern, path), want, "{pattern} ~ {path}");
        }
    }

    #[test]
    fn affects_table() {
        let none: &[String] = &[];
        // Nothing narrows it: every change counts.
        assert!(affects("anything.txt", None, none));
        assert!(affects("web/a.ts", Some("web"), none));
        assert!(affects("web/a.ts", Some("web/"), none));
        assert!(!affects("api/a.go", Some("web"), none));
        let watch = v(&["shared/", "!web/README.md", "!**/*.test.ts"]);
        assert!(affects("shared/ui.ts", Some("web"), &watch));
        assert!(!affects("web/README.md", Some("web"), &watch));
        assert!(!affects("shared/ui.test.ts", Some("web"), &watch));
        assert!(!affects("api/main.go", Some("web"), &watch));
        // Only exclusions: the rest of the repository is watched.
        assert!(affects("src/a.ts", None, &v(&["!docs"])));
        assert!(!affects("docs/a.md", None, &v(&["!docs"])));
        // Watch paths alone narrow the whole repository.
        assert!(!affects("api/main.go", None, &v(&["web"])));
        let changed = v(&["api/main.go", "web/index.html"]);
        assert_eq!(
            first_affecting(&changed, Some("web"), none),
            Some("web/index.html")
        );
        assert_eq!(first_affecting(&changed, Some("docs"), none), None);
        assert_eq!(first_affecting(&[], None, none), None);
    }

    #[test]
    fn validation_table() {
        for ok in [&["shared/"][..], &["packages/*", "!**/*.md"], &[]] {
            assert!(validate(&v(ok)).is_ok(), "{ok:?}");
        }
        for bad in [
            "", "!", "/etc", "../up", "a/../b", "a//b", "./a", "a\\b", "!!a", "a\nb",
        ] {
            assert!(validate(&v(&[bad])).is_err(), "{bad:?}");
        }
        assert!(validate(&vec!["a".to_owned(); MAX_PATTERNS + 1]).is_err());
        assert!(validate(&["a".repeat(MAX_PATTERN_LEN + 1)]).is_err());
    }
}
