//! bbr-bpm: the typed model of bpm's `bpm.yml` (every process field bpm reads), bpm's own
//! validation rules plus ours, the `bpm run` command line, and how to read its outcome.
//! Facts: `shared/research/bpm.md` (bpm-release at 2d75618f).

pub mod model;
pub mod run;
pub mod validate;

pub use model::{BpmConfig, Hooks, Limits, Process, Unsafe, Volume};
pub use validate::{Policy, Violation};
