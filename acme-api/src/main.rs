//! acme-api: the example component of the `acme-api` job, as a binary of its own. The same
//! server is `bbr-runner acme-api serve` (so a VM needs one binary). See docs/acme-api.md.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "acme-api",
    version,
    about = "A tiny HTTP API storing items in the acme database"
)]
struct Args {
    /// The database config (the same JSON as bbr-acme-db's: adapter sqlite or postgres).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Address to listen on; loopback only is the intent.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Write the process id here once serving.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    std::process::exit(bbr_runner::actions::acme_api::serve::serve(
        &args.config,
        &args.listen,
        args.pidfile.as_deref(),
    ));
}
