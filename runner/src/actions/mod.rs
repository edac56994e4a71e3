//! The actions themselves, run inside their profiles: the acme database backup and restore
//! (`acme_db`, one file per adapter) and the artifact format they share (`artifact`).

pub mod acme_api;
pub mod acme_db;
pub mod artifact;
