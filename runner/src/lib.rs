//! bbr-runner: runs BOSH Backup and Restore actions under declared, reviewable isolation.
//!
//! The modules follow the pipeline: `profile` (format, loading, variables, validation) ->
//! `plan` (what to enforce, resolved against this machine) -> `sandbox` (each enforcement
//! step) -> `backend` (native supervisor) ; `kernel` probes what this machine can enforce.

// Every message goes through `out` (note!, show!): a lost stderr never stops an action.
#![deny(clippy::print_stderr, clippy::print_stdout)]

pub mod actions;
pub mod backend;
pub mod broker;
pub mod cgroup;
pub mod cli;
pub mod commands;
pub mod cpus;
pub mod exit;
pub mod invocation;
pub mod job;
pub mod kernel;
pub mod landlock_abi;
pub mod layers;
pub mod out;
pub mod plan;
pub mod profile;
pub mod release;
pub mod review;
pub mod root_side;
pub mod sandbox;
pub mod trace;
