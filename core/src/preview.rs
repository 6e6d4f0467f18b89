//! Stable preview addresses: `<branch>--<project>.<domain>` follows the latest ready build of a
//! branch, `pr-<n>--<project>.<domain>` that of a pull request.
//!
//! The part before `--` (the *slug*) is a DNS label piece made from the branch name. A branch
//! whose name already is one (lowercase letters, digits and single hyphens, short enough) is its
//! own slug; any other name (slashes, capitals, unicode, 200 characters, `pr-7`, or a name that
//! ends like a hash suffix) becomes its cleaned, shortened form plus `-` and 8 hex digits of its
//! name's SHA-256. So two branches never share a slug unless their hashes collide in 32 bits, a
//! clean name is never mistaken for a hashed one, and no slug is `pr-<n>`. Project names hold no
//! `--` and slugs none either, so a label splits in one way only, and it can be neither a
//! deployment id (no hyphen) nor a project name.

use sha2::{Digest, Sha256};

/// The separator between a slug and the project.
pub const SEPARATOR: &str = "--";

/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// Hex digits of the name's hash in a hashed slug.
const HASH_DIGITS: usize = 8;

/// The slug of pull request `n`.
pub fn pull_request_slug(n: u64) -> String {
    format!("pr-{n}")
}

/// The slug of branch `name` for a label of `project`; `None` when the project's name leaves no
/// room for one (a label is at most 63 characters).
pub fn branch_slug(name: &str, project: &str) -> Option<String> {
    let room = MAX_LABEL.checked_sub(project.len() + SEPARATOR.len())?;
    if room < HASH_DIGITS {
        return None;
    }
    if is_clean(name) && name.len() <= room {
        return Some(name.to_owned());
    }
    let digest = Sha256::digest(name.as_bytes());
    let suffix = &hex::encode(digest)[..HASH_DIGITS];
    let cleaned = clean(name);
    let keep = room.saturating_sub(HASH_DIGITS + 1);
    let head = cleaned[..cleaned.len().min(keep)].trim_end_matches('-');
    Some(if head.is_empty() {
        suffix.to_owned()
    } else {
        format!("{head}-{suffix}")
    })
}

/// The whole label of a slug and a project.
pub fn label(slug: &str, project: &str) -> String {
    format!("{slug}{SEPARATOR}{project}")
}

/// A host label split into its slug and project, when it is a preview label.
pub fn split_label(label: &str) -> Option<(&str, &str)> {
    let (slug, project) = label.split_once(SEPARATOR)?;
    (!slug.is_empty() && !project.is_empty() && !project.contains(SEPARATOR))
        .then_some((slug, project))
}

/// Whether `name` is a slug as it stands: `[a-z0-9]` runs joined by single hyphens, not `pr-<n>`,
/// not ending like a hashed slug.
fn is_clean(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains(SEPARATOR)
        && !looks_like_pull_request(name)
        && !ends_like_hash(name)
}

fn looks_like_pull_request(name: &str) -> bool {
    name.strip_prefix("pr-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn ends_like_hash(name: &str) -> bool {
    let tail = name.rsplit('-').next().unwrap_or(name);
    tail.len() == HASH_DIGITS && tail.bytes().all(is_hex_lower)
}

fn is_hex_lower(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Lowercase ASCII letters and digits kept, every other run of characters one hyphen, none at
/// the ends.
fn clean(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::is_site_label;
    use crate::id::looks_like_deployment_id;

    fn hash8(name: &str) -> String {
        hex::encode(Sha256::digest(name.as_bytes()))[..8].to_owned()
    }

    #[test]
    fn slug_table() {
        for (branch, want) in [
            ("main", "main".to_owned()),
            ("feature-x", "feature-x".to_owned()),
            ("fix-2", "fix-2".to_owned()),
            (
                "feature/login",
                format!("feature-login-{}", hash8("feature/login")),
            ),
            ("Feature-X", format!("feature-x-{}", hash8("Feature-X"))),
            ("feature-login", "feature-login".to_owned()),
            ("pr-7", format!("pr-7-{}", hash8("pr-7"))),
            (
                "fix-deadbeef",
                format!("fix-deadbeef-{}", hash8("fix-deadbeef")),
            ),
            ("deadbeef", format!("deadbeef-{}", hash8("deadbeef"))),
            ("a--b", format!("a-b-{}", hash8("a--b"))),
            ("ünïcødé", format!("n-c-d-{}", hash8("ünïcødé"))),
            ("日本", hash8("日本")),
            ("-x-", format!("x-{}", hash8("-x-"))),
        ] {
            assert_eq!(
                branch_slug(branch, "site").as_deref(),
                Some(want.as_str()),
                "{branch}"
            );
        }
    }

    #[test]
    fn every_label_is_a_dns_label_and_splits_back() {
        let long = "x".repeat(200);
        let names = [
            "main",
            "feature/a/b/c",
            "UPPER",
            long.as_str(),
            "dependabot/npm_and_yarn/lodash-4.17.21",
            "release/2024.01",
            "ünïcødé",
            "   ",
            "pr-12",
        ];
        for project in ["s", "my-site", &"p".repeat(50)] {
            for name in names {
                let slug = branch_slug(name, project).unwrap();
                let l = label(&slug, project);
                assert!(l.len() <= 63 && is_site_label(&l), "{name} {project}: {l}");
                assert!(!looks_like_deployment_id(&l));
                assert_eq!(split_label(&l), Some((slug.as_str(), project)), "{l}");
            }
        }
        assert!(
            branch_slug("main", &"p".repeat(54)).is_none(),
            "no room left"
        );
        let l = label(&pull_request_slug(42), "site");
        assert_eq!(l, "pr-42--site");
        assert_eq!(split_label(&l), Some(("pr-42", "site")));
    }

    #[test]
    fn truncated_and_cleaned_names_stay_apart() {
        let a = "feature/".to_owned() + &"y".repeat(100) + "1";
        let b = "feature/".to_owned() + &"y".repeat(100) + "2";
        assert_ne!(branch_slug(&a, "site"), branch_slug(&b, "site"));
        assert_ne!(
            branch_slug("feature/x", "site"),
            branch_slug("feature-x", "site")
        );
        assert_ne!(
            branch_slug("Feature-X", "site"),
            branch_slug("feature-x", "site")
        );
        // A clean name that happens to look like a hashed one is hashed too.
        let hashed = branch_slug("feature/x", "site").unwrap();
        assert_ne!(branch_slug(&hashed, "site").unwrap(), hashed);
    }

    #[test]
    fn split_table() {
        for (l, want) in [
            ("main--site", Some(("main", "site"))),
            ("a-b--my-site", Some(("a-b", "my-site"))),
            ("site", None),
            ("--site", None),
            ("main--", None),
            ("a--b--c", None),
        ] {
            assert_eq!(split_label(l), want, "{l}");
        }
    }
}
