//! What to run and what to publish, decided from the checkout's files. Pure functions over what
//! the caller read from disk, so every rule has a table test.

use serde_json::Value;

/// The commands to run and where to look for the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Install command (argv), when the repo has a build.
    pub install: Option<Vec<String>>,
    /// Build command (argv), when the repo has a build.
    pub build: Option<Vec<String>>,
    /// Why this plan was chosen, for the log.
    pub reason: String,
}

/// Output directories tried after a build, in order.
pub const BUILD_OUTPUT_DIRS: &[&str] = &["dist", "build", "out", "public"];

/// Chooses install and build commands. `package_json` is the file's text when present;
/// `has_lockfile` is true when `package-lock.json` or `npm-shrinkwrap.json` exists.
pub fn plan(package_json: Option<&str>, has_lockfile: bool) -> Result<Plan, String> {
    let Some(text) = package_json else {
        return Ok(Plan {
            install: None,
            build: None,
            reason: "no package.json: publishing static files as they are".into(),
        });
    };
    let json: Value =
        serde_json::from_str(text).map_err(|e| format!("package.json is not valid JSON: {e}"))?;
    let has_build = json
        .get("scripts")
        .and_then(|s| s.get("build"))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty());
    if !has_build {
        return Ok(Plan {
            install: None,
            build: None,
            reason: "package.json has no build script: publishing static files as they are".into(),
        });
    }
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (install, reason) = if has_lockfile {
        (argv(&["npm", "ci"]), "package-lock.json found: npm ci")
    } else {
        (argv(&["npm", "install"]), "no lockfile: npm install")
    };
    Ok(Plan {
        install: Some(install),
        build: Some(argv(&["npm", "run", "build"])),
        reason: format!("{reason}, then npm run build"),
    })
}

/// Picks the directory to publish. `built` says whether a build ran; `exists` answers whether a
/// directory exists in the checkout. `Some("")` means the repository root.
pub fn choose_output(built: bool, exists: impl Fn(&str) -> bool) -> Option<&'static str> {
    if built {
        BUILD_OUTPUT_DIRS.iter().copied().find(|d| exists(d))
    } else if exists("public") {
        Some("public")
    } else {
        Some("")
    }
}

/// Whether a file under the repository root is published when the root itself is the site:
/// dot-directories and dotfiles stay private, except `.well-known`.
pub fn publish_from_root(relative: &str) -> bool {
    relative
        .split('/')
        .all(|segment| !segment.starts_with('.') || segment == ".well-known")
}

/// `Content-Type` for a file name, with `charset=utf-8` on text types.
pub fn content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    let texty = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            essence,
            "application/javascript" | "application/json" | "application/xml" | "image/svg+xml"
        );
    if texty {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_table() {
        let with_build = r#"{"scripts":{"build":"node build.js"}}"#;
        let p = plan(Some(with_build), false).unwrap();
        assert_eq!(p.install.unwrap(), ["npm", "install"]);
        assert_eq!(p.build.unwrap(), ["npm", "run", "build"]);
        let p = plan(Some(with_build), true).unwrap();
        assert_eq!(p.install.unwrap(), ["npm", "ci"]);

        for no_build in [
            r#"{}"#,
            r#"{"scripts":{"test":"x"}}"#,
            r#"{"scripts":{"build":"  "}}"#,
        ] {
            let p = plan(Some(no_build), true).unwrap();
            assert_eq!((p.install, p.build), (None, None), "{no_build}");
        }
        assert_eq!(plan(None, false).unwrap().build, None);
        assert!(plan(Some("{not json"), false).is_err());
    }

    #[test]
    fn output_table() {
        let has = |dirs: &'static [&'static str]| move |d: &str| dirs.contains(&d);
        assert_eq!(choose_output(true, has(&["dist", "public"])), Some("dist"));
        assert_eq!(choose_output(true, has(&["out"])), Some("out"));
        assert_eq!(choose_output(true, has(&["src"])), None);
        assert_eq!(choose_output(false, has(&["public"])), Some("public"));
        assert_eq!(choose_output(false, has(&["dist"])), Some(""));
    }

    #[test]
    fn root_publish_table() {
        for (p, ok) in [
            ("index.html", true),
            ("css/a.css", true),
            (".env", false),
            (".git/config", false),
            ("a/.secret", false),
            (".well-known/security.txt", true),
        ] {
            assert_eq!(publish_from_root(p), ok, "{p}");
        }
    }

    #[test]
    fn content_type_table() {
        for (p, want) in [
            ("index.html", "text/html; charset=utf-8"),
            ("a.css", "text/css; charset=utf-8"),
            ("a.js", "text/javascript; charset=utf-8"),
            ("a.json", "application/json; charset=utf-8"),
            ("a.svg", "image/svg+xml; charset=utf-8"),
            ("a.png", "image/png"),
            ("noext", "application/octet-stream"),
        ] {
            assert_eq!(content_type(p), want, "{p}");
        }
    }
}
