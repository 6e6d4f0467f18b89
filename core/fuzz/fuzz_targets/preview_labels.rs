//! Preview labels: whatever a branch is called (the input, split into a branch name and a
//! project name), its label is a DNS label of at most 63 characters that routes as a site, is
//! never a deployment id, splits back into its slug and project, and two different branch names
//! get two different slugs unless one of them is hashed (a 32-bit collision is then needed).
#![no_main]
use gitdeploy_core::host::{is_site_label, route_host, HostRoute};
use gitdeploy_core::id::looks_like_deployment_id;
use gitdeploy_core::preview::{branch_slug, label, split_label};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (branch, other) = text.split_once('\0').unwrap_or((text, "main"));
    for project in ["s", "my-site", "a-long-project-name-of-forty-characters-x"] {
        let Some(slug) = branch_slug(branch, project) else {
            continue;
        };
        let l = label(&slug, project);
        assert!(l.len() <= 63 && is_site_label(&l), "{branch:?} -> {l:?}");
        assert!(!looks_like_deployment_id(&l), "{l:?}");
        assert_eq!(split_label(&l), Some((slug.as_str(), project)), "{l:?}");
        assert_eq!(
            route_host(&format!("{l}.example.app"), "example.app", &[]),
            HostRoute::Site(l.clone())
        );
        if branch != other && slug == branch && branch_slug(other, project) == Some(slug.clone()) {
            panic!("{branch:?} and {other:?} share the slug {slug:?}");
        }
    }
});
