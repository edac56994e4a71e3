use clap::Parser;

use bbr_runner::cli::{Cli, Command};
use bbr_runner::commands;

fn main() -> std::process::ExitCode {
    bbr_runner::trace::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return bbr_runner::exit::status(if e.use_stderr() {
                bbr_runner::exit::USAGE
            } else {
                0
            });
        }
    };
    bbr_runner::trace!("runner", "arguments parsed");
    // A bad cap would otherwise be ignored by every probe that reads it.
    if let Err(m) = bbr_runner::kernel::abi_cap() {
        bbr_runner::note!("bbr-runner: {m}");
        return bbr_runner::exit::status(bbr_runner::exit::USAGE);
    }
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Bpm(cmd) => commands::bpm::bpm(cmd),
        Command::Demo(args) => commands::demo::demo(args),
        Command::Exec(args) => commands::exec::exec(args),
        Command::Check(args) => commands::check::check(args),
        Command::Review(args) => commands::review::review(args),
        Command::Kernel(args) => commands::kernel::kernel(args),
        Command::AcmeApi(args) => commands::acme_api::acme_api(args),
        Command::AcmeDb(args) => commands::acme_db::acme_db(args),
        Command::Probe(args) => commands::probe::probe(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            e.print();
            bbr_runner::exit::status(e.exit_code())
        }
    }
}
