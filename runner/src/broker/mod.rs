//! The broker: the root side does, for the sandboxed action, the few privileged requests its
//! job declares, and nothing else. One today: monit's status, stop and start of the one service
//! that the job's `actions.yml` names for that action (`monit:`), with monit's credentials,
//! which never leave root. So acme-api's lock and unlock run as vcap with no capability, and a
//! compromised action can stop or start that one service, no other, and learns no password.
//!
//! The action holds one end of a `SOCK_SEQPACKET` socket pair, its number in
//! `BBR_RUNNER_MONIT_FD`; the supervisor serves the other end in its poll loop. A request is one
//! message, `status`, `stop` or `start`; the answer is one message, `ok [STATUS LINE]` or
//! `error MESSAGE`.

pub mod monit;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

/// The variable that tells the action its end's descriptor number.
pub const FD_VAR: &str = "BBR_RUNNER_MONIT_FD";

/// What the job grants an action: one monit service, through monit's control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitGrant {
    pub control_file: PathBuf,
    pub service: String,
}

/// The root side's half: the grant and monit's endpoint, read from the control file at start.
#[derive(Debug)]
pub struct Broker {
    grant: MonitGrant,
    endpoint: monit::Endpoint,
    /// Every pid monit reported for the service during this run: one still running means the
    /// service is not gone, whatever monit says (the action cannot look: its own pid namespace).
    seen: std::cell::RefCell<std::collections::BTreeSet<i64>>,
}

impl Broker {
    /// Reads monit's endpoint and credentials now, so a wrong control file fails before the
    /// action runs.
    pub fn new(grant: MonitGrant) -> Result<Broker, monit::MonitError> {
        let endpoint = monit::endpoint(&grant.control_file)?;
        Ok(Broker {
            grant,
            endpoint,
            seen: Default::default(),
        })
    }

    pub fn grant(&self) -> &MonitGrant {
        &self.grant
    }

    /// The answer to one request.
    pub fn answer(&self, request: &str) -> String {
        let service = &self.grant.service;
        let result = match request {
            "status" => self.endpoint.status(service).map(|mut s| {
                let mut seen = self.seen.borrow_mut();
                seen.extend(s.pid);
                s.alive = seen
                    .iter()
                    .copied()
                    .find(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
                s.to_line()
            }),
            "stop" | "start" => self.endpoint.act(service, request).map(|()| String::new()),
            other => {
                return format!(
                    "error unknown request `{}` (status, stop, start)",
                    other.chars().take(40).collect::<String>()
                )
            }
        };
        match result {
            Ok(line) if line.is_empty() => "ok".to_string(),
            Ok(line) => format!("ok {line}"),
            Err(e) => format!("error {e}"),
        }
    }
}

/// The two ends: the supervisor keeps `parent`, the action gets `child`.
#[derive(Debug)]
pub struct Channel {
    pub parent: OwnedFd,
    pub child: OwnedFd,
}

/// The supervisor's end never blocks it (a request is read, and its answer sent, without
/// waiting) and carries each sender's kernel-checked pid (SO_PASSCRED).
pub fn channel() -> std::io::Result<Channel> {
    let (parent, child) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::fcntl::fcntl(
        &parent,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    nix::sys::socket::setsockopt(&parent, nix::sys::socket::sockopt::PassCred, &true)?;
    Ok(Channel { parent, child })
}

/// Serves one request waiting on `fd`, from a process of the action's `session` only (another
/// vcap process that took the descriptor, with pidfd_getfd or ptrace, is refused). False once
/// the channel is done: the action closed its end, or it does not read its answers (the
/// supervisor never waits for it: its timeout and signals must go on).
pub fn serve_one(broker: &Broker, fd: &impl AsFd, session: nix::unistd::Pid) -> bool {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, UnixCredentials};
    let raw = fd.as_fd().as_raw_fd();
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!(UnixCredentials);
    let (n, sender) = match recvmsg::<()>(raw, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) {
        Ok(msg) => {
            let sender = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(u) => Some(u.pid()),
                    _ => None,
                })
            });
            (msg.bytes, sender)
        }
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => return true,
        Err(_) => return false,
    };
    let Some(pid) = sender else {
        // No credentials: the end of the stream, not a message.
        return false;
    };
    let request = String::from_utf8_lossy(&buf[..n.min(buf.len())])
        .trim()
        .to_string();
    let from_the_action =
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).is_ok_and(|s| s == session);
    let answer = if from_the_action {
        broker.answer(&request)
    } else {
        format!(
            "error refused: the request came from pid {pid}, which is not in the action's session"
        )
    };
    send(
        raw,
        answer.as_bytes(),
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    )
    .is_ok()
}

/// Why the action's half cannot be had, or a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No descriptor was passed: the action does not run under the runner's broker.
    #[error("{FD_VAR} is not set: run this action through `bbr-runner run` (or `bbr-runner exec --monit-control-file FILE --monit-service NAME`), whose root side asks monit for it")]
    NotSet,
    #[error("{FD_VAR}={value} is not a descriptor number")]
    NotANumber { value: String },
    #[error("{FD_VAR}={fd} is a standard descriptor")]
    Standard { fd: i32 },
    /// The descriptor is not open (or cannot be looked at).
    #[error("{FD_VAR}={fd}: {source}")]
    Unusable {
        fd: i32,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{FD_VAR}={fd} is not a socket")]
    NotASocket { fd: i32 },
    /// The request could not be sent: the runner's side is closed.
    #[error("the runner's monit broker is gone: {0}")]
    Gone(#[source] nix::errno::Errno),
    /// No answer came (within the socket's 30 s receive timeout, or at all).
    #[error("no answer from the runner's monit broker: {0}")]
    NoAnswer(#[source] nix::errno::Errno),
    /// The broker answered `error MESSAGE`: monit's, or the broker's own refusal.
    #[error("{message}")]
    Refused { message: String },
    #[error("the runner's monit broker answered `{answer}`")]
    Unexpected { answer: String },
}

impl ClientError {
    /// monit refused because another action on the service is still pending: worth asking again.
    pub fn is_pending(&self) -> bool {
        matches!(self, ClientError::Refused { message } if message.contains("already in progress"))
    }
}

/// The action's half.
#[derive(Debug)]
pub struct Client {
    fd: OwnedFd,
}

impl Client {
    /// The end the runner passed, named by `BBR_RUNNER_MONIT_FD`.
    pub fn from_env() -> Result<Client, ClientError> {
        let value = std::env::var(FD_VAR).map_err(|_| ClientError::NotSet)?;
        let raw: i32 = value
            .parse()
            .map_err(|_| ClientError::NotANumber { value })?;
        let st = nix::sys::stat::fstat(unsafe_borrow(raw)?)
            .map_err(|source| ClientError::Unusable { fd: raw, source })?;
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(ClientError::NotASocket { fd: raw });
        }
        // SAFETY: the descriptor is open (fstat above), a socket, and this process's only user
        // of it: the runner passed it for this purpose alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = nix::sys::socket::setsockopt(
            &fd,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(Duration::from_secs(30).as_secs() as i64, 0),
        );
        Ok(Client { fd })
    }

    /// Sends `request` and returns the answer's text after `ok`, or the error.
    pub fn request(&self, request: &str) -> Result<String, ClientError> {
        let raw = self.fd.as_raw_fd();
        send(raw, request.as_bytes(), MsgFlags::MSG_NOSIGNAL).map_err(ClientError::Gone)?;
        let mut buf = [0u8; 4096];
        let n = recv(raw, &mut buf, MsgFlags::empty()).map_err(ClientError::NoAnswer)?;
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        match answer.split_once(' ').unwrap_or((answer.as_str(), "")) {
            ("ok", rest) => Ok(rest.to_string()),
            ("error", message) => Err(ClientError::Refused {
                message: message.to_string(),
            }),
            _ => Err(ClientError::Unexpected { answer }),
        }
    }
}

fn unsafe_borrow(raw: i32) -> Result<std::os::fd::BorrowedFd<'static>, ClientError> {
    if raw < 3 {
        return Err(ClientError::Standard { fd: raw });
    }
    // SAFETY: only used for the fstat that checks the descriptor is open; an unopened number
    // gives EBADF, not undefined behaviour.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) })
}
