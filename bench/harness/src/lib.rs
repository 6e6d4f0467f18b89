//! Test support shared by the api and edge integration tests and the bench: the real components
//! they run against, started on loopback, each in a process group of its own, and stopped with
//! every process of that group when dropped.
//!
//! Everything here panics with a clear message when a component cannot start: a harness that
//! cannot start Redis has no test to run. No fixed ports and no sleeps as synchronisation:
//! readiness is a connection, a PING or a ready file, polled with backoff under a deadline.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod certs;
mod dns;
mod git;
mod launch;
mod pebble;
mod ports;
mod process;
mod redis;
mod s3;

pub use certs::TestCa;
pub use dns::DnsServer;
pub use git::{git, GitServer};
pub use launch::{wait_for_ready_file, Up};
pub use pebble::{Pebble, PebblePorts};
pub use ports::{free_port, wait_for_port, wait_until};
pub use process::{survivors, survivors_after, Process};
pub use redis::Redis;
pub use s3::{S3Server, S3_BUCKET, S3_KEY, S3_REGION};
