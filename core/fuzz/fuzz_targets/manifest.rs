//! The manifest reader: any bytes are a manifest or an error, and a manifest resolves any path.
#![no_main]
use gitdeploy_core::{Manifest, SitePath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::from_json(data) else {
        return;
    };
    for raw in ["/", "/index.html", "/a/b/", "/missing", "/a/b/c.js"] {
        if let Ok(path) = SitePath::parse(raw) {
            let _ = manifest.resolve(&path, Some("x=1"));
        }
    }
});
