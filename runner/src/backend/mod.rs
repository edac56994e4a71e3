//! Backends: how an action's plan is enforced. `native` forks a child that applies the sandbox
//! itself; `bpm` (its own issue) delegates to `bpm run`.

pub mod bpm;
pub mod native;
