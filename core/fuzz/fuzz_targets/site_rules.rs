//! `_redirects` and `_headers`: any text parses (bad lines become errors, never panics), and
//! every rule it keeps can be matched and expanded.
#![no_main]
use gitdeploy_core::rules::{parse_headers, parse_redirects};
use gitdeploy_core::SitePath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (redirects, _) = parse_redirects(&text);
    let probe = SitePath::parse("/a/b/index.html").expect("a valid path");
    for rule in &redirects {
        if let Some(captures) = rule.from.matches(&probe) {
            let _ = rule.target(&captures, Some("q=1"));
        }
    }
    let _ = parse_headers(&text);
});
