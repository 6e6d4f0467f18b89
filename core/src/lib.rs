//! GitDeploy's shared vocabulary: deployment ids, host → site and URL path → object rules, the
//! manifest and log record formats, the object key layout and the build job description.
//!
//! Everything here is pure: no I/O, no clocks, no network. The edge, the control plane and the
//! builder all speak through these types, so a rule lives in exactly one place.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod content;
pub mod domain;
pub mod egress;
pub mod head_guard;
pub mod host;
pub mod id;
pub mod job;
pub mod keys;
pub mod log;
pub mod manifest;
pub mod path;
pub mod preview;
pub mod repo;
pub mod rules;
pub mod status;
pub mod text;
pub mod watch;

pub use content::ContentHash;
pub use id::DeploymentId;
pub use job::{BuildJob, BuilderEvent};
pub use keys::ObjectLayout;
pub use log::{LogRecord, LogStream, Outcome};
pub use manifest::{Encoding, FileEntry, Manifest, Resolution, SiteRules, Variant};
pub use path::{PathError, SitePath};
pub use status::DeploymentStatus;
