//! Repository URLs are user input that reaches `git clone`: only allowed transports pass, nothing
//! that git could read as an option or a transport helper (`ext::`, `fd::`), and credentials in a
//! URL are never shown back.

use serde::{Deserialize, Serialize};

/// A transport a repository may be cloned over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoScheme {
    /// `https://`
    Https,
    /// `http://`
    Http,
    /// `git://`
    Git,
    /// `ssh://` or `user@host:path`
    Ssh,
    /// An absolute local path or `file://` URL.
    Local,
}

impl RepoScheme {
    /// The name git uses for this transport in `GIT_ALLOW_PROTOCOL`.
    pub fn git_protocol(self) -> &'static str {
        match self {
            RepoScheme::Https => "https",
            RepoScheme::Http => "http",
            RepoScheme::Git => "git",
            RepoScheme::Ssh => "ssh",
            RepoScheme::Local => "file",
        }
    }
}

/// Longest repository URL accepted.
pub const MAX_REPO_URL_LEN: usize = 2048;

/// Checks a repository URL against the allowed transports and returns its transport.
pub fn validate_repo_url(url: &str, allowed: &[RepoScheme]) -> Result<RepoScheme, String> {
    if url.is_empty() {
        return Err("repo must not be empty".into());
    }
    if url.len() > MAX_REPO_URL_LEN {
        return Err(format!(
            "repo URL is longer than {MAX_REPO_URL_LEN} characters"
        ));
    }
    if url.starts_with('-') {
        return Err("repo must be a URL, not an option".into());
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("repo URL must not contain spaces or control characters".into());
    }
    let scheme = scheme_of(url)?;
    if !allowed.contains(&scheme) {
        let names: Vec<_> = allowed.iter().map(|s| s.git_protocol()).collect();
        return Err(format!(
            "{} repositories are not allowed here (allowed: {})",
            scheme.git_protocol(),
            names.join(", ")
        ));
    }
    Ok(scheme)
}

fn scheme_of(url: &str) -> Result<RepoScheme, String> {
    if let Some((scheme, rest)) = url.split_once("://") {
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "https" => RepoScheme::Https,
            "http" => RepoScheme::Http,
            "git" => RepoScheme::Git,
            "ssh" | "git+ssh" => RepoScheme::Ssh,
            "file" => {
                return if rest.starts_with('/') {
                    Ok(RepoScheme::Local)
                } else {
                    Err("file:// URLs must name an absolute path".into())
                };
            }
            other => return Err(format!("unsupported repo URL scheme {other:?}")),
        };
        let authority = rest.split('/').next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        if host.is_empty() || host.starts_with('-') {
            return Err("repo URL has no host".into());
        }
        return Ok(scheme);
    }
    if url.contains("::") {
        return Err("git transport helpers (such as ext:: or fd::) are not allowed".into());
    }
    if url.starts_with('/') {
        return Ok(RepoScheme::Local);
    }
    // scp-like `user@host:path` (a colon before any slash).
    if let Some(colon) = url.find(':') {
        if !url[..colon].contains('/') {
            return Ok(RepoScheme::Ssh);
        }
    }
    Err("repo must be an https://, http://, git:// or ssh:// URL or an absolute path".into())
}

/// The URL with any `user:password@` replaced by `***@`, for logs and API responses.
pub fn redact_repo_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// The credentials part of a URL (`user:password` in `https://user:password@host/…`), and the
/// password alone when there is one: what a build log must never show, whatever tool prints
/// the URL.
pub fn url_credentials(url: &str) -> Vec<&str> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else {
        return Vec::new();
    };
    let userinfo = &rest[..at];
    let mut out = vec![userinfo];
    if let Some((_, password)) = userinfo.split_once(':') {
        if password.len() >= 4 {
            out.push(password);
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// A stable, filesystem-safe key for a repository (FNV-1a of its URL without credentials), so
/// builds of one repository share a package cache and other repositories never see it.
pub fn cache_key(url: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in redact_repo_url(url).trim_end_matches(".git").bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("repo-{hash:016x}")
}

/// A repository URL reduced to `host/owner/name`, so https, git and ssh forms of one repository
/// compare equal.
pub fn normalize_repo(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    let (rest, separator) = match url.split_once("://") {
        Some((_, rest)) => (rest, '/'),
        // scp-like git@host:owner/name
        None => (url.split_once('@').map(|(_, r)| r).unwrap_or(url), ':'),
    };
    let (authority, path) = rest.split_once(separator).unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    format!("{host}/{}", path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_forms_compare_equal() {
        let want = "github.com/owner/site";
        for url in [
            "https://github.com/owner/site",
            "https://github.com/owner/site.git",
            "https://user:tok@GitHub.com/owner/site/",
            "git://github.com/owner/site.git",
            "ssh://git@github.com/owner/site.git",
            "git@github.com:owner/site.git",
        ] {
            assert_eq!(normalize_repo(url), want, "{url}");
        }
        assert_ne!(normalize_repo("https://github.com/owner/other"), want);
        assert_eq!(
            normalize_repo("http://127.0.0.1:9418/site"),
            "127.0.0.1/site"
        );
    }

    use RepoScheme::*;

    #[test]
    fn credentials_of_urls() {
        assert_eq!(
            url_credentials("https://u:p4ssw0rd@example.com/r"),
            ["u:p4ssw0rd", "p4ssw0rd"]
        );
        assert_eq!(
            url_credentials("https://ghp_token@example.com/r"),
            ["ghp_token"]
        );
        assert_eq!(
            url_credentials("https://u:pw@example.com/r"),
            ["u:pw"],
            "too short alone"
        );
        assert!(url_credentials("https://example.com/a@b").is_empty());
        assert!(url_credentials("/local/path").is_empty());
    }

    #[test]
    fn validate_table() {
        let up = [Https, Http, Git, Local];
        for (url, want) in [
            ("https://github.com/owner/site", Ok(Https)),
            ("HTTPS://github.com/owner/site.git", Ok(Https)),
            ("http://127.0.0.1:9418/site.git", Ok(Http)),
            ("git://127.0.0.1:9418/site.git", Ok(Git)),
            ("/srv/repos/site", Ok(Local)),
            ("file:///srv/repos/site", Ok(Local)),
            ("ssh://git@github.com/o/r.git", Err(())),
            ("git@github.com:o/r.git", Err(())),
            ("ext::sh -c touch% /tmp/pwned", Err(())),
            ("ext::sh", Err(())),
            ("fd::17", Err(())),
            ("--upload-pack=touch /tmp/x", Err(())),
            ("-u", Err(())),
            ("", Err(())),
            ("relative/path", Err(())),
            ("https://", Err(())),
            ("https://-oProxyCommand=x/r", Err(())),
            ("ftp://example.com/r", Err(())),
            ("file://relative", Err(())),
            ("https://github.com/o/r\n", Err(())),
            ("https://github.com/o/r x", Err(())),
        ] {
            assert_eq!(validate_repo_url(url, &up).map_err(|_| ()), want, "{url:?}");
        }
        assert_eq!(validate_repo_url("git@github.com:o/r.git", &[Ssh]), Ok(Ssh));
        let long = format!("https://h/{}", "a".repeat(MAX_REPO_URL_LEN));
        assert!(validate_repo_url(&long, &up).is_err());
    }

    #[test]
    fn cache_keys_are_stable_and_distinct() {
        assert_eq!(cache_key("https://h/o/r"), cache_key("https://h/o/r.git"));
        assert_eq!(cache_key("https://u:p@h/o/r"), cache_key("https://x@h/o/r"));
        assert_ne!(cache_key("https://h/o/r"), cache_key("https://h/o/s"));
        assert_eq!(
            cache_key("https://h/o/r"),
            "repo-".to_owned() + &cache_key("https://h/o/r")[5..]
        );
        assert_eq!(cache_key("x").len(), 21);
    }

    #[test]
    fn redact_table() {
        for (url, want) in [
            (
                "https://user:tok@github.com/o/r",
                "https://***@github.com/o/r",
            ),
            ("https://tok@github.com/o/r", "https://***@github.com/o/r"),
            ("https://github.com/o/r@main", "https://github.com/o/r@main"),
            ("/srv/r", "/srv/r"),
        ] {
            assert_eq!(redact_repo_url(url), want);
        }
    }
}
