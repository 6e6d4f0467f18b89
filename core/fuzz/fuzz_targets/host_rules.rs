//! Host rules: normalizing is idempotent, and a normalized host routes without panicking.
#![no_main]
use gitdeploy_core::host::{normalize_host, route_host, HostRoute};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(host) = normalize_host(text) {
        assert_eq!(
            normalize_host(&host).as_deref(),
            Some(host.as_str()),
            "{text:?}"
        );
        assert!(!host.contains(['@', ' ', '/']), "{host:?}");
        let controls = ["127.0.0.1".to_owned()];
        if let HostRoute::Site(label) = route_host(&host, "sites.example.com", &controls) {
            assert!(!label.is_empty() && !label.contains('.'), "{label:?}");
        }
    }
});
