use super::*;

fn files<'a>(package_json: Option<&'a str>) -> RepoFiles<'a> {
    RepoFiles {
        package_json,
        ..Default::default()
    }
}

#[test]
fn plan_table() {
    let with_build = r#"{"scripts":{"build":"node build.js"}}"#;
    let none = BuildSettings::default();
    let p = plan(&files(Some(with_build)), &none).unwrap();
    assert_eq!(p.install.unwrap(), ["npm", "install"]);
    assert_eq!(p.build.unwrap(), ["npm", "run", "build"]);
    assert_eq!(p.outputs, BUILD_OUTPUT_DIRS);
    let locked = RepoFiles {
        npm_lock: true,
        ..files(Some(with_build))
    };
    assert_eq!(
        plan(&locked, &none).unwrap().install.unwrap(),
        ["npm", "ci", "--prefer-offline"]
    );

    for no_build in [
        r#"{}"#,
        r#"{"scripts":{"test":"x"}}"#,
        r#"{"scripts":{"build":"  "}}"#,
    ] {
        let p = plan(&files(Some(no_build)), &none).unwrap();
        assert_eq!((p.install, p.build), (None, None), "{no_build}");
        assert_eq!(p.outputs, ["public", ""]);
    }
    assert_eq!(plan(&files(None), &none).unwrap().build, None);
    assert!(plan(&files(Some("{not json")), &none).is_err());

    // Settings win.
    let settings = BuildSettings {
        install_command: Some("make deps".into()),
        build_command: Some("make site".into()),
        output_dir: Some("site/".into()),
        ..Default::default()
    };
    let p = plan(&files(None), &settings).unwrap();
    assert_eq!(p.install.unwrap(), ["sh", "-c", "make deps"]);
    assert_eq!(p.build.unwrap(), ["sh", "-c", "make site"]);
    assert_eq!(
        (p.outputs, p.output_required),
        (vec!["site".to_owned()], true)
    );
}

#[test]
fn package_manager_table() {
    let pm = |pkg: &str, f: RepoFiles| {
        package_manager(&serde_json::from_str(pkg).unwrap(), &f).map(|(pm, _)| pm)
    };
    let pnpm = |v: &str, lockfile| PackageManager::Pnpm {
        version: v.into(),
        lockfile,
    };
    let yarn = |v: &str, lockfile| PackageManager::Yarn {
        version: v.into(),
        lockfile,
    };
    assert_eq!(
        pm("{}", RepoFiles::default()).unwrap(),
        PackageManager::Npm { lockfile: false }
    );
    assert_eq!(
        pm(
            "{}",
            RepoFiles {
                npm_lock: true,
                ..Default::default()
            }
        )
        .unwrap(),
        PackageManager::Npm { lockfile: true }
    );
    for (lock, want) in [
        ("lockfileVersion: '6.0'\n", "8"),
        ("lockfileVersion: 5.4\n", "7"),
        ("lockfileVersion: '9.0'\n", "9"),
    ] {
        assert_eq!(
            pm(
                "{}",
                RepoFiles {
                    pnpm_lock: Some(lock),
                    ..Default::default()
                }
            )
            .unwrap(),
            pnpm(want, true)
        );
    }
    assert_eq!(
        pm(
            "{}",
            RepoFiles {
                yarn_lock: Some("# yarn lockfile v1\n"),
                ..Default::default()
            }
        )
        .unwrap(),
        yarn("1.22.22", true)
    );
    assert_eq!(
        pm(
            "{}",
            RepoFiles {
                yarn_lock: Some("__metadata:\n  version: 8\n"),
                ..Default::default()
            }
        )
        .unwrap(),
        yarn("4", true)
    );
    // The packageManager field wins over lockfiles.
    let f = RepoFiles {
        pnpm_lock: Some("lockfileVersion: '6.0'"),
        ..Default::default()
    };
    assert_eq!(
        pm(r#"{"packageManager":"pnpm@8.15.4+sha512.abc"}"#, f.clone()).unwrap(),
        pnpm("8.15.4", true)
    );
    assert_eq!(
        pm(r#"{"packageManager":"yarn@3.6.0"}"#, RepoFiles::default()).unwrap(),
        yarn("3.6.0", false)
    );
    assert_eq!(
        pm(r#"{"packageManager":"bun@1.1.0"}"#, RepoFiles::default()).unwrap(),
        PackageManager::Bun {
            version: Some("1.1.0".into()),
            lockfile: false
        }
    );
    // A Bun lockfile wins over the lockfile Bun migrated from.
    let bun_locked = RepoFiles {
        bun_lock: true,
        npm_lock: true,
        yarn_lock: Some("# yarn lockfile v1\n"),
        ..Default::default()
    };
    let bun = PackageManager::Bun {
        version: None,
        lockfile: true,
    };
    assert_eq!(pm("{}", bun_locked.clone()).unwrap(), bun);
    assert_eq!(bun.install(), ["bun", "install", "--frozen-lockfile"]);
    assert_eq!(bun.run_build(), ["bun", "run", "build"]);
    let p = plan(
        &RepoFiles {
            package_json: Some(r#"{"scripts":{"build":"vite build"}}"#),
            ..bun_locked
        },
        &BuildSettings::default(),
    )
    .unwrap();
    assert_eq!(p.bun, Some(None));
    assert!(pm(r#"{"packageManager":"deno@2.0.0"}"#, RepoFiles::default()).is_err());
    assert!(pm(r#"{"packageManager":"pnpm"}"#, RepoFiles::default()).is_err());
    assert!(pm(
        r#"{"packageManager":"pnpm@8;rm -rf /"}"#,
        RepoFiles::default()
    )
    .is_err());
    // Commands.
    assert_eq!(
        pnpm("8", true).install(),
        ["corepack", "pnpm@8", "install", "--frozen-lockfile"]
    );
    assert_eq!(
        yarn("1.22.22", true).install(),
        ["corepack", "yarn@1.22.22", "install", "--frozen-lockfile"]
    );
    assert_eq!(
        yarn("4", true).install(),
        ["corepack", "yarn@4", "install", "--immutable"]
    );
    assert_eq!(
        yarn("4", true).run_build(),
        ["corepack", "yarn@4", "run", "build"]
    );
}

#[test]
fn framework_table() {
    let fw = |pkg: &str| {
        let files = RepoFiles {
            next_config: Some("module.exports = { output: 'export' }"),
            ..RepoFiles::default()
        };
        framework(&serde_json::from_str(pkg).unwrap(), &files)
            .unwrap()
            .map(|f| (f.output, f.name))
    };
    for (pkg, want) in [
        (
            r#"{"devDependencies":{"vite":"^5"}}"#,
            Some(("dist", "Vite")),
        ),
        (
            r#"{"dependencies":{"astro":"^4"}}"#,
            Some(("dist", "Astro")),
        ),
        (
            r#"{"dependencies":{"react-scripts":"5"}}"#,
            Some(("build", "Create React App")),
        ),
        (
            r#"{"dependencies":{"next":"14","react":"18"}}"#,
            Some(("out", "Next.js static export")),
        ),
        (
            r#"{"dependencies":{"@docusaurus/core":"3"}}"#,
            Some(("build", "Docusaurus")),
        ),
        (
            r#"{"devDependencies":{"@11ty/eleventy":"2"}}"#,
            Some(("_site", "Eleventy")),
        ),
        (
            r#"{"devDependencies":{"vitepress":"1"},"scripts":{"build":"vitepress build docs"}}"#,
            Some(("docs/.vitepress/dist", "VitePress")),
        ),
        (
            r#"{"devDependencies":{"vitepress":"1"},"scripts":{"build":"vitepress build"}}"#,
            Some((".vitepress/dist", "VitePress")),
        ),
        (
            r#"{"devDependencies":{"@sveltejs/kit":"2","@sveltejs/adapter-static":"3","vite":"5"}}"#,
            Some(("build", "SvelteKit (static adapter)")),
        ),
        (r#"{"dependencies":{"left-pad":"1"}}"#, None),
    ] {
        assert_eq!(fw(pkg), want.map(|(d, n)| (d.to_owned(), n)), "{pkg}");
    }
}

#[test]
fn unknown_paths_fall_back_only_for_single_page_apps() {
    let dep =
        |name: &str| format!(r#"{{"devDependencies":{{"{name}":"1"}},"scripts":{{"build":"b"}}}}"#);
    let rule = |pkg: Option<String>| {
        let files = RepoFiles {
            package_json: pkg.as_deref(),
            ..RepoFiles::default()
        };
        plan(&files, &BuildSettings::default()).unwrap().spa
    };
    for (name, spa) in [
        ("react-scripts", None),
        ("vite", None),
        ("svelte", None),
        ("astro", Some(false)),
        ("@11ty/eleventy", Some(false)),
        ("vitepress", Some(false)),
        ("@docusaurus/core", Some(false)),
        ("gatsby", Some(false)),
        ("nuxt", Some(false)),
        ("vuepress", Some(false)),
        ("webpack", Some(false)),
    ] {
        assert_eq!(rule(Some(dep(name))), spa, "{name}");
    }
    // Astro depends on Vite too: the generator wins.
    let astro = r#"{"dependencies":{"astro":"4","vite":"5"},"scripts":{"build":"astro build"}}"#;
    assert_eq!(rule(Some(astro.into())), Some(false));
    // Plain static files, and a package.json without a build: real 404s.
    assert_eq!(rule(None), Some(false));
    assert_eq!(
        rule(Some(r#"{"dependencies":{"vite":"5"}}"#.into())),
        Some(false)
    );
}

#[test]
fn output_table() {
    let plan_with = |outputs: &[&str], required| Plan {
        install: None,
        build: None,
        reason: String::new(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        output_reason: "Vite detected".into(),
        output_required: required,
        spa: None,
        spa_reason: String::new(),
        caches: DEFAULT_CACHES,
        bun: None,
    };
    let has = |dirs: &'static [&'static str]| move |d: &str| dirs.contains(&d);
    assert_eq!(
        choose_output(
            &plan_with(BUILD_OUTPUT_DIRS, false),
            has(&["out", "public"])
        )
        .unwrap(),
        "out"
    );
    assert!(
        choose_output(&plan_with(BUILD_OUTPUT_DIRS, false), has(&["src"]))
            .unwrap_err()
            .contains("looked for dist/")
    );
    assert_eq!(
        choose_output(&plan_with(&["public", ""], false), has(&[])).unwrap(),
        ""
    );
    let err = choose_output(&plan_with(&["dist"], true), has(&["build"])).unwrap_err();
    assert!(err.contains("no dist/ (Vite detected)"), "{err}");
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

#[test]
fn mkdocs_sites_build_in_a_virtualenv() {
    let none = BuildSettings::default();
    let mk =
        |config: &'static str, requirements: bool, package_json: Option<&'static str>| RepoFiles {
            mkdocs_yml: Some(config),
            requirements_txt: requirements,
            package_json,
            ..RepoFiles::default()
        };
    let p = plan(&mk("site_name: Docs\n", true, None), &none).unwrap();
    let install = &p.install.as_ref().unwrap()[2];
    assert!(
        install.contains(r#"pip" wheel -w "$W" --find-links "$W" -r requirements.txt"#),
        "{install}"
    );
    assert!(
        install.ends_with(r#"pip" install --no-index --find-links "$W" -r requirements.txt"#),
        "{install}"
    );
    assert_eq!(
        p.build.as_ref().unwrap()[2],
        r#""$HOME/.venv/bin/mkdocs" build"#
    );
    assert_eq!(
        (p.outputs, p.output_required, p.spa),
        (vec!["site".to_owned()], true, Some(false))
    );
    let p = plan(
        &mk("site_name: Docs\nsite_dir: 'public/'\n", false, None),
        &none,
    )
    .unwrap();
    assert!(p.install.as_ref().unwrap()[2].ends_with(" mkdocs"));
    assert_eq!(p.outputs, ["public"]);
    // An escaping site_dir is ignored.
    let p = plan(&mk("site_dir: ../../etc\n", false, None), &none).unwrap();
    assert_eq!(p.outputs, ["site"]);
    // A package.json build script wins: the site is a Node project that happens to carry docs.
    let node = plan(
        &mk(
            "site_name: x\n",
            true,
            Some(r#"{"scripts":{"build":"vite build"}}"#),
        ),
        &none,
    )
    .unwrap();
    assert_eq!(node.build.unwrap(), ["npm", "run", "build"]);
}
