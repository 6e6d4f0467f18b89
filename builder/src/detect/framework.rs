//! Static-site frameworks recognised from `package.json` (and the config files some of them
//! need read): where each build writes the site, whether the site is a single-page app, and the
//! apps that need a server, refused before anything is installed with what to change.

use serde_json::Value;

use super::RepoFiles;

/// A static-site framework: where its build writes the site, and whether the site is a
/// single-page app (one `index.html` that routes in the browser).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framework {
    /// Its name, for the log.
    pub name: &'static str,
    /// The output directory its build writes.
    pub output: String,
    /// A single-page app: unknown paths fall back to `index.html` (unless the site has a
    /// `404.html`). A multi-page generator's unknown paths are real 404s.
    pub spa: bool,
    /// Its build caches, relative to the build's directory ([`crate::build_cache`]).
    pub caches: &'static [&'static str],
}

/// The build caches kept for a build with no recognised framework (webpack, babel, terser and
/// most tools write under `node_modules/.cache`).
pub const DEFAULT_CACHES: &[&str] = &["node_modules/.cache"];

/// The framework `package.json` depends on, if one is recognised (the first match of a table
/// ordered from the most specific dependency to the most general: Astro and SvelteKit sites also
/// depend on Vite). An app that needs a server (Next.js without a static export, SvelteKit
/// without the static adapter) is an error that says how to export it statically.
pub fn framework(package_json: &Value, files: &RepoFiles<'_>) -> Result<Option<Framework>, String> {
    let has = |dep: &str| {
        ["dependencies", "devDependencies"]
            .iter()
            .any(|section| package_json.get(section).and_then(|d| d.get(dep)).is_some())
    };
    let build_script = package_json
        .get("scripts")
        .and_then(|s| s.get("build"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let found = |name, output: String, spa, caches| {
        Ok(Some(Framework {
            name,
            output,
            spa,
            caches,
        }))
    };
    if has("vitepress") {
        return found(
            "VitePress",
            dir_after(build_script, "vitepress build", ".vitepress/dist"),
            false,
            DEFAULT_CACHES,
        );
    }
    if has("vuepress") || has("@vuepress/cli") || has("vuepress-vite") {
        return found(
            "VuePress",
            dir_after(build_script, "vuepress build", ".vuepress/dist"),
            false,
            DEFAULT_CACHES,
        );
    }
    if has("next") {
        let exports =
            files.next_config.is_some_and(is_static_export) || build_script.contains("next export");
        if !exports {
            return Err(
                "this Next.js app needs a server: GitDeploy serves static sites. Add \
                        `output: 'export'` to next.config.js (Next.js static exports) and \
                        deploy again"
                    .into(),
            );
        }
        return found(
            "Next.js static export",
            "out".into(),
            false,
            &[".next/cache"],
        );
    }
    if has("@sveltejs/kit") {
        if !has("@sveltejs/adapter-static") {
            return Err(
                "this SvelteKit app has no static adapter: GitDeploy serves static \
                        sites. Install @sveltejs/adapter-static, use it in svelte.config.js \
                        and deploy again"
                    .into(),
            );
        }
        return found(
            "SvelteKit (static adapter)",
            "build".into(),
            false,
            DEFAULT_CACHES,
        );
    }
    if has("@angular/core") {
        let output = files
            .angular_json
            .and_then(|text| angular_output(text).ok())
            .ok_or("angular.json names no project to build (projects.<name>.architect.build)")?;
        return found("Angular", output, true, &[".angular/cache"]);
    }
    // (dependency, output, name, single-page app, build caches)
    type Row = (
        &'static str,
        &'static str,
        &'static str,
        bool,
        &'static [&'static str],
    );
    let table: &[Row] = &[
        (
            "react-scripts",
            "build",
            "Create React App",
            true,
            DEFAULT_CACHES,
        ),
        (
            "@docusaurus/core",
            "build",
            "Docusaurus",
            false,
            &[".docusaurus", "node_modules/.cache"],
        ),
        ("@11ty/eleventy", "_site", "Eleventy", false, &[".cache"]),
        (
            "gatsby",
            "public",
            "Gatsby",
            false,
            &[".cache", "node_modules/.cache"],
        ),
        (
            "nuxt",
            ".output/public",
            "Nuxt (generate)",
            false,
            DEFAULT_CACHES,
        ),
        ("astro", "dist", "Astro", false, &["node_modules/.astro"]),
        ("vite", "dist", "Vite", true, DEFAULT_CACHES),
        ("svelte", "dist", "Svelte", true, DEFAULT_CACHES),
    ];
    Ok(table
        .iter()
        .find(|(dep, ..)| has(dep))
        .map(|(_, dir, name, spa, caches)| Framework {
            name,
            output: dir.to_string(),
            spa: *spa,
            caches,
        }))
}

/// `<dir>/<suffix>` for the directory a command names after `command` in the build script
/// (`vitepress build docs`), or `suffix` alone.
fn dir_after(build_script: &str, command: &str, suffix: &str) -> String {
    let dir = build_script
        .split(command)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|d| {
            !d.starts_with('-') && !d.contains("..") && !d.contains('&') && !d.contains(';')
        });
    match dir {
        Some(d) => format!("{}/{suffix}", d.trim_end_matches('/')),
        None => suffix.to_owned(),
    }
}

/// Whether a Next.js config asks for a static export (`output: 'export'`).
fn is_static_export(config: &str) -> bool {
    let compact: String = config.chars().filter(|c| !c.is_whitespace()).collect();
    ["output:'export'", "output:\"export\"", "output:`export`"]
        .iter()
        .any(|p| compact.contains(p))
}

/// Where an Angular workspace's default project builds to: `outputPath` (a string or
/// `{base, browser}`), `dist/<project>` by default; the application builder (Angular 17+)
/// writes the browser files under `browser/`.
fn angular_output(text: &str) -> Result<String, ()> {
    let json: Value = serde_json::from_str(text).map_err(|_| ())?;
    let projects = json.get("projects").and_then(Value::as_object).ok_or(())?;
    let name = json
        .get("defaultProject")
        .and_then(Value::as_str)
        .filter(|n| projects.contains_key(*n))
        .or_else(|| {
            projects
                .iter()
                .find(|(_, p)| p.get("projectType").and_then(Value::as_str) != Some("library"))
                .map(|(n, _)| n.as_str())
        })
        .ok_or(())?;
    let build = projects[name].pointer("/architect/build").ok_or(())?;
    let builder = build.get("builder").and_then(Value::as_str).unwrap_or("");
    let application = builder.ends_with(":application");
    let option = build.pointer("/options/outputPath");
    let (base, browser) = match option {
        Some(Value::String(s)) => (s.clone(), None),
        Some(Value::Object(o)) => (
            o.get("base").and_then(Value::as_str).ok_or(())?.to_owned(),
            o.get("browser").and_then(Value::as_str).map(str::to_owned),
        ),
        _ => (format!("dist/{name}"), None),
    };
    let base = base.trim_end_matches('/').to_owned();
    if base.contains("..") || base.starts_with('/') {
        return Err(());
    }
    Ok(match (application, browser) {
        (true, Some(b)) if b.is_empty() => base,
        (true, Some(b)) => format!("{base}/{b}"),
        (true, None) => format!("{base}/browser"),
        (false, _) => base,
    })
}

/// How a site answers a path it has no file for, decided from what was detected: `None` is
/// the single-page-app fallback (to `index.html`, unless the site has a `404.html`),
/// `Some(false)` a real 404 (the site's `404.html`, else the platform's page). The project's
/// own `serving.spa` setting wins over both.
pub fn spa_rule(framework: Option<&Framework>) -> (Option<bool>, String) {
    match framework {
        Some(f) if f.spa => (
            None,
            format!(
                "{} is a single-page app: unknown paths fall back to index.html",
                f.name
            ),
        ),
        Some(f) => (
            Some(false),
            format!(
                "{} builds one page per route: unknown paths are 404s",
                f.name
            ),
        ),
        None => (
            Some(false),
            "no single-page app recognised: unknown paths are 404s (serving.spa turns the \
             fallback to index.html on)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_that_need_a_server_are_refused_with_the_fix() {
        let pkg = |deps: &str| -> Value {
            serde_json::from_str(&format!(r#"{{"dependencies":{{{deps}}}}}"#)).unwrap()
        };
        let with = |next_config: Option<&'static str>| RepoFiles {
            next_config,
            ..RepoFiles::default()
        };
        let next = pkg(r#""next":"14","react":"18""#);
        let err = framework(&next, &with(None)).unwrap_err();
        assert!(err.contains("output: 'export'"), "{err}");
        assert!(framework(
            &next,
            &with(Some("module.exports = { reactStrictMode: true }"))
        )
        .is_err());
        for config in [
            "module.exports = { output: 'export' }",
            "const nextConfig = {\n  output: \"export\",\n};\nexport default nextConfig;",
        ] {
            let f = framework(&next, &with(Some(config))).unwrap().unwrap();
            assert_eq!(
                (f.name, f.output.as_str(), f.spa),
                ("Next.js static export", "out", false)
            );
        }
        let kit = pkg(r#""@sveltejs/kit":"2","vite":"5""#);
        assert!(framework(&kit, &with(None))
            .unwrap_err()
            .contains("adapter-static"));
        let kit_static = pkg(r#""@sveltejs/kit":"2","@sveltejs/adapter-static":"3""#);
        assert_eq!(
            framework(&kit_static, &with(None)).unwrap().unwrap().output,
            "build"
        );
    }

    #[test]
    fn angular_output_table() {
        for (json, want) in [
            (
                r#"{"projects":{"shop":{"architect":{"build":{"builder":"@angular-devkit/build-angular:application","options":{"outputPath":"dist/shop"}}}}}}"#,
                Ok("dist/shop/browser".to_owned()),
            ),
            (
                r#"{"projects":{"shop":{"architect":{"build":{"builder":"@angular/build:application"}}}}}"#,
                Ok("dist/shop/browser".to_owned()),
            ),
            (
                r#"{"projects":{"shop":{"architect":{"build":{"builder":"@angular-devkit/build-angular:browser","options":{"outputPath":"dist/shop"}}}}}}"#,
                Ok("dist/shop".to_owned()),
            ),
            (
                r#"{"projects":{"shop":{"architect":{"build":{"builder":"@angular/build:application","options":{"outputPath":{"base":"out","browser":""}}}}}}}"#,
                Ok("out".to_owned()),
            ),
            (
                r#"{"defaultProject":"b","projects":{"a":{"projectType":"library","architect":{"build":{}}},"b":{"architect":{"build":{"builder":"x:application"}}}}}"#,
                Ok("dist/b/browser".to_owned()),
            ),
            (
                r#"{"projects":{"lib":{"projectType":"library","architect":{"build":{}}}}}"#,
                Err(()),
            ),
            (
                r#"{"projects":{"shop":{"architect":{"build":{"options":{"outputPath":"../escape"}}}}}}"#,
                Err(()),
            ),
            ("not json", Err(())),
        ] {
            assert_eq!(angular_output(json), want, "{json}");
        }
    }

    #[test]
    fn docs_generators_find_their_directory() {
        let vuepress: Value = serde_json::from_str(
            r#"{"devDependencies":{"vuepress":"2"},"scripts":{"build":"vuepress build docs"}}"#,
        )
        .unwrap();
        let f = framework(&vuepress, &RepoFiles::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            (f.name, f.output.as_str(), f.spa),
            ("VuePress", "docs/.vuepress/dist", false)
        );
        assert_eq!(
            dir_after("vitepress build docs && echo done", "vitepress build", "x"),
            "docs/x"
        );
        assert_eq!(
            dir_after("vitepress build --base /", "vitepress build", "x"),
            "x"
        );
    }
}
