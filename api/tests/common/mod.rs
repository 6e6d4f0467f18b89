//! Shared by the API's integration tests: the harness's components.

pub use gitdeploy_harness::Redis;
