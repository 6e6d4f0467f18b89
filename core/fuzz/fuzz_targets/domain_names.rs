//! Custom domain names: whatever is accepted is stored in a form that normalizes to itself,
//! routes as a custom domain (never as one of the platform's names), and is never an address.
#![no_main]
use gitdeploy_core::domain::normalize;
use gitdeploy_core::host::{normalize_host, route_host, HostRoute};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = normalize(text, "sites.example.com") {
        assert_eq!(
            normalize(&name, "sites.example.com").as_deref(),
            Ok(name.as_str()),
            "{text:?}"
        );
        assert!(name.is_ascii() && name.len() <= 253, "{name:?}");
        assert!(name.parse::<std::net::IpAddr>().is_err(), "{name:?}");
        assert_eq!(normalize_host(&name).as_deref(), Some(name.as_str()), "{name:?}");
        assert_eq!(
            route_host(&name, "sites.example.com", &[]),
            HostRoute::Custom(name.clone()),
            "{text:?}"
        );
    }
});
