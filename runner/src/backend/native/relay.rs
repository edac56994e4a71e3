//! The caller's terminal stays the caller's. When stdin, stdout or stderr is a terminal, the
//! action gets `/dev/null` as stdin and a pipe as stdout or stderr, whose bytes the supervisor
//! copies to the terminal; the action never holds a descriptor of the terminal, so it can
//! neither inject input (TIOCSTI) nor change its settings. Descriptors that are not terminals
//! (BBR's pipes, files) are passed as they are.

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags};

/// The descriptors the child puts at 0, 1 and 2 (`None`: keep the inherited one).
#[derive(Debug, Default)]
pub struct ChildEnds {
    at: [Option<OwnedFd>; 3],
}

impl ChildEnds {
    /// In the child, before the sandbox: puts each replacement at its number.
    pub fn install(&self) -> io::Result<()> {
        for (target, fd) in self.at.iter().enumerate() {
            if let Some(fd) = fd {
                // SAFETY: dup2 onto 0, 1 or 2 in the single-threaded child; the old descriptor
                // there is the caller's terminal, which the action must not keep.
                if unsafe { libc::dup2(fd.as_raw_fd(), target as libc::c_int) } < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Stdout,
    Stderr,
}

#[derive(Debug)]
struct Source {
    pipe: std::fs::File,
    target: Target,
    open: bool,
}

/// The supervisor's side: the pipes' read ends and where their bytes go.
#[derive(Debug, Default)]
pub struct Relay {
    sources: Vec<Source>,
}

/// Replaces each of the caller's standard descriptors that is a terminal.
pub fn for_terminals() -> io::Result<(Relay, ChildEnds)> {
    let mut relay = Relay::default();
    let mut ends = ChildEnds::default();
    if io::stdin().is_terminal() {
        let null = std::fs::File::open("/dev/null")?;
        ends.at[0] = Some(null.into());
    }
    for (n, target, tty) in [
        (1, Target::Stdout, io::stdout().is_terminal()),
        (2, Target::Stderr, io::stderr().is_terminal()),
    ] {
        if !tty {
            continue;
        }
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
        ends.at[n] = Some(w);
        relay.sources.push(Source {
            pipe: r.into(),
            target,
            open: true,
        });
    }
    Ok((relay, ends))
}

impl Relay {
    /// One entry per source still open, in order, for the supervisor's poll (a closed one
    /// would report POLLHUP forever).
    pub fn poll_fds(&self) -> Vec<PollFd<'_>> {
        self.sources
            .iter()
            .filter(|s| s.open)
            .map(|s| PollFd::new(s.pipe.as_fd(), PollFlags::POLLIN))
            .collect()
    }

    /// Copies what the open sources `ready` (the order of `poll_fds`) have to the terminal.
    pub fn copy_ready(&mut self, ready: &[bool]) {
        let open = self.sources.iter_mut().filter(|s| s.open);
        for (s, r) in open.zip(ready) {
            if *r {
                s.copy_available();
            }
        }
    }

    /// After the action and its descendants ended: copies what is left in the pipes.
    pub fn drain(&mut self) {
        for s in &mut self.sources {
            while s.open && s.copy_available() {}
        }
    }
}

impl Source {
    /// Copies one read's worth; false when nothing more is to be had now.
    fn copy_available(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        match self.pipe.read(&mut buf) {
            Ok(0) => {
                self.open = false;
                false
            }
            Ok(n) => {
                // The terminal may be gone (the caller's session ended): the bytes are lost,
                // the action goes on.
                let _ = match self.target {
                    Target::Stdout => {
                        let mut out = io::stdout().lock();
                        out.write_all(&buf[..n]).and_then(|_| out.flush())
                    }
                    Target::Stderr => io::stderr().lock().write_all(&buf[..n]),
                };
                true
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => {
                self.open = false;
                false
            }
        }
    }
}
