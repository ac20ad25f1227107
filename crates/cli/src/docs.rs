//! `proxyd completions SHELL` and `proxyd man`: a shell completion script (clap_complete) and
//! the man page (clap_mangen, roff), both generated from the clap definitions of `main.rs` and
//! printed to stdout. Neither reads a config.

use std::io::Write as _;
use std::process::ExitCode;

/// The shells `proxyd completions` writes for.
pub(crate) use clap_complete::Shell;

/// Prints the completion script of `command` for `shell`.
pub(crate) fn completions(mut command: clap::Command, shell: Shell) -> ExitCode {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    print(&script)
}

/// Prints the man page of `command` (section 1), its subcommands listed.
pub(crate) fn man(command: clap::Command) -> ExitCode {
    let mut page = Vec::new();
    if let Err(err) = clap_mangen::Man::new(command).render(&mut page) {
        eprintln!("proxyd: rendering the man page: {err}");
        return ExitCode::FAILURE;
    }
    print(&page)
}

fn print(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // `proxyd man | head` closing the pipe early is not an error worth a message.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("proxyd: writing to stdout: {err}");
            ExitCode::FAILURE
        }
    }
}
