//! The command line, parsed once into these types (clap derive); help comes from here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bbr-runner",
    version,
    about = "Runs BOSH Backup and Restore actions under declared, reviewable isolation profiles",
    after_help = crate::exit::help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job's BBR action under its profile, with bpm or the native sandbox (what the
    /// rendered bin/bbr/* scripts exec).
    Run(RunArgs),
    /// Run the whole BBR cycle through the real jobs in a throwaway BOSH-like root (SQLite):
    /// lock, backup, unlock, damage the data, restore, verify. Needs root.
    Demo(DemoArgs),
    /// Run a command under a profile with the native sandbox.
    Exec(ExecArgs),
    /// bpm: render a job's bpm.yml from its profiles.
    #[command(subcommand)]
    Bpm(BpmCommand),
    /// Validate profiles; with --print, show each one expanded.
    Check(CheckArgs),
    /// Security review: what each profile allows, what each backend enforces on this kernel (or
    /// --abi N), findings, exposure scores, and --verify to prove it for real.
    Review(ReviewArgs),
    /// Show what this machine can enforce (Landlock ABI, namespaces, capabilities, bpm).
    Kernel(KernelArgs),
    /// Back up or restore the acme database (the bbr-acme-db job's action; runs inside its profile).
    #[command(name = "acme-db")]
    AcmeDb(AcmeDbArgs),
    /// Stop (lock) or start (unlock) the acme-api service through monit, waiting until it happened.
    #[command(name = "acme-api")]
    AcmeApi(AcmeApiArgs),
    /// Attempt one operation and report the outcome (used by the escape suite and review --verify).
    #[command(hide = true)]
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
pub struct VarArgs {
    /// Define a variable for ${NAME} in the profile (repeatable). BBR_ARTIFACT_DIRECTORY,
    /// ARTIFACT_DIRECTORY, BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL and BBR_VERSION are also read
    /// from the environment.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The profile (YAML) to enforce.
    #[arg(long, value_name = "FILE")]
    pub profile: PathBuf,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Derive DB_SOCKET, DB_PORT and SQLITE_DIR from this database config (as `run` does for a
    /// job whose config names one), so the profile reaches exactly that database.
    #[arg(long, value_name = "FILE")]
    pub db_config: Option<PathBuf>,
    /// Let the action query, stop and start one monit service through the runner (as `run`
    /// does for an action whose actions.yml entry has `monit:`): monit's control file, which
    /// names its HTTP interface and credentials. The credentials stay with the runner.
    #[arg(long, value_name = "FILE", requires = "monit_service")]
    pub monit_control_file: Option<PathBuf>,
    /// The monit service the action may query, stop and start (with --monit-control-file).
    #[arg(long, value_name = "NAME", requires = "monit_control_file")]
    pub monit_service: Option<String>,
    /// The command and its arguments (after `--`). Found in the profile's PATH, not the caller's.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Profiles to validate.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Print each profile with variables, named sets and symlinks resolved.
    #[arg(long)]
    pub print: bool,
}

#[derive(Debug, Args)]
pub struct KernelArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The operation, e.g. `write-file PATH`, `connect-tcp HOST:PORT`, `connect-unix PATH`.
    #[arg(required = true, num_args = 1.., value_name = "OP ARGS")]
    pub op: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DbAction {
    Backup,
    Restore,
    /// Check an artifact's manifest and every file's size and SHA-256, touching no database.
    Verify,
    /// Restore the artifact into a scratch database next to the live one (SQLite: a temp file),
    /// compare each table with what the backup saw, report, and drop the scratch copy.
    Rehearse,
}

#[derive(Debug, Args)]
#[command(
    after_help = crate::exit::acme_db::help()
)]
pub struct AcmeDbArgs {
    /// backup: write the dump and its manifest; restore: verify, then restore; rehearse: verify,
    /// then restore into a scratch copy and compare it with what the backup saw.
    #[arg(value_enum)]
    pub action: DbAction,
    /// The database config (JSON, the BBR SDK's keys plus `bbr_runner`); not needed by verify.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The artifact directory; default: $BBR_ARTIFACT_DIRECTORY, as BBR sets it.
    #[arg(long, value_name = "DIR", env = "BBR_ARTIFACT_DIRECTORY")]
    pub artifact_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LockAction {
    Lock,
    Unlock,
    /// Run the acme-api component itself (what the job's ctl starts).
    Serve,
}

#[derive(Debug, Args)]
#[command(
    after_help = crate::exit::acme_api::help()
)]
pub struct AcmeApiArgs {
    /// lock: stop the service and wait until it is gone; unlock: start it and wait until healthy.
    #[arg(value_enum)]
    pub action: LockAction,
    /// lock/unlock: the lock config (JSON: monit, control_file, process, pidfile, health_url,
    /// timeouts); serve: the database config.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// serve: the address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// serve: write the process id here once serving.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job, e.g. bbr-acme-db.
    pub job: String,
    /// The BBR action: backup, restore, pre-backup-lock, post-backup-unlock, pre-restore-lock,
    /// post-restore-unlock.
    pub action: String,
    /// The BOSH root holding jobs/, packages/, data/, store/.
    #[arg(long, value_name = "DIR", default_value = crate::job::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Set by the job's bpm.yml: the runner is inside bpm's container and applies the profile's
    /// remaining layers itself.
    #[arg(long)]
    pub inside_bpm: bool,
}

#[derive(Debug, Subcommand)]
pub enum BpmCommand {
    /// Print the job's bpm.yml, derived from its profiles (one process per action).
    Render(BpmRenderArgs),
}

#[derive(Debug, Args)]
pub struct BpmRenderArgs {
    /// The job, e.g. bbr-acme-db.
    pub job: String,
    /// The directory of the job's profiles and actions.yml; default profiles/JOB.
    #[arg(long, value_name = "DIR")]
    pub profiles: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the BOSH-like root in place for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Lay the root out here (a new or empty directory that vcap can reach) instead of a new
    /// temp dir; it is removed at the end unless --keep.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `review --backend`: a backend's name, or `both` (every backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice(pub Vec<crate::profile::Backend>);

fn backend_choice(text: &str) -> Result<BackendChoice, String> {
    use crate::profile::Backend;
    match text {
        "both" | "all" => Ok(BackendChoice(Backend::ALL.to_vec())),
        name => Backend::from_name(name)
            .map(|b| BackendChoice(vec![b]))
            .ok_or_else(|| format!("expected {} or `both`", Backend::names(", "))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReviewFormat {
    Text,
    Json,
    Markdown,
    Sarif,
}

#[derive(Debug, Args)]
#[command(
    after_help = crate::exit::review::help()
)]
pub struct ReviewArgs {
    /// Profiles, or directories of them (default: profiles/). actions.yml files are skipped.
    #[arg(value_name = "PROFILE|DIR")]
    pub paths: Vec<PathBuf>,
    /// The backend to evaluate (native, bpm), or both; default: the profile's own list.
    #[arg(long, value_name = "NAME|both", value_parser = backend_choice)]
    pub backend: Option<BackendChoice>,
    /// Evaluate the claims on this Landlock ABI instead of this kernel's ("what if this runs on
    /// an older stemcell").
    #[arg(long, value_name = "N")]
    pub abi: Option<u8>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReviewFormat,
    /// Exit 3 when any exposure score (0-10) is above this.
    #[arg(long, value_name = "SCORE")]
    pub threshold: Option<f64>,
    /// An earlier JSON report: list every privilege gained or lost, and new findings (on stderr).
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Run the escape attempts for each native claim for real (needs root); exit 4 if any claim
    /// reported enforced does not hold.
    #[arg(long)]
    pub verify: bool,
    /// A JSON policy overriding the score's weights and ranges: {"checks": {"user": {"weight": 2000, "range": 10}}}.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
}
