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
    /// The last byte read was 0xC2, the first half of a C1 control's UTF-8 form.
    half_c1: bool,
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
            half_c1: false,
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
    /// The bytes as the terminal may show them: control characters other than tab, newline
    /// and carriage return (ESC and C1 above all: they drive the terminal emulator, set the
    /// clipboard, the title, or answer by typing) are written visibly, `cat -v` style.
    fn visible(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if std::mem::take(&mut self.half_c1) {
                if (0x80..0xa0).contains(&b) {
                    out.extend_from_slice(b"M-^");
                    out.push(b - 0x40);
                    continue;
                }
                out.push(0xc2);
            }
            match b {
                0xc2 => self.half_c1 = true,
                b'\t' | b'\n' | b'\r' => out.push(b),
                0..=0x1f => out.extend_from_slice(&[b'^', b + 0x40]),
                0x7f => out.extend_from_slice(b"^?"),
                _ => out.push(b),
            }
        }
        out
    }

    /// Copies one read's worth; false when nothing more is to be had now.
    fn copy_available(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        match self.pipe.read(&mut buf) {
            Ok(0) => {
                self.open = false;
                false
            }
            Ok(n) => {
                let shown = self.visible(&buf[..n]);
                // The terminal may be gone (the caller's session ended): the bytes are lost,
                // the action goes on.
                let _ = match self.target {
                    Target::Stdout => {
                        let mut out = io::stdout().lock();
                        out.write_all(&shown).and_then(|_| out.flush())
                    }
                    Target::Stderr => io::stderr().lock().write_all(&shown),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_reach_the_terminal_visibly_and_text_unchanged() {
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        let mut s = Source {
            pipe: r.into(),
            target: Target::Stdout,
            open: true,
            half_c1: false,
        };
        let shown = s.visible(b"ok\tA\x1b]52;c;eA==\x07B\r\n\x7f caf\xc3\xa9 \xc2");
        assert_eq!(shown, b"ok\tA^[]52;c;eA==^GB\r\n^? caf\xc3\xa9 ");
        // A C1 control split across two reads (CSI, U+009B), then a plain U+00A0.
        assert_eq!(s.visible(b"\x9b2J \xc2\xa0"), b"M-^[2J \xc2\xa0");
    }
}
