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
        match route_host(&host, "sites.example.com", &controls) {
            HostRoute::Site(label) => {
                assert!(!label.is_empty() && !label.contains('.'), "{label:?}")
            }
            // A custom domain candidate is never one of the platform's own names.
            HostRoute::Custom(name) => {
                assert!(
                    name != "sites.example.com"
                        && !name.ends_with(".sites.example.com")
                        && name.contains('.'),
                    "{name:?}"
                );
                assert!(name.parse::<std::net::IpAddr>().is_err(), "{name:?}");
            }
            _ => {}
        }
    }
});
