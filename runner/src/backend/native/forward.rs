//! The supervisor's side of the action's network: the action's namespace has only `lo`, and on
//! it one listener per declared TCP endpoint, bound to that endpoint's own address and port
//! (`sandbox::net`). The child hands those listeners over ([`recv_fds`]); the supervisor, still
//! in the host's namespace, accepts on them and connects each connection to the real endpoint,
//! so the action reaches exactly the declared host:port and nothing else.
//!
//! Threads, started after the fork: one acceptor per listener (poll on the listener and a stop
//! eventfd), and per connection one thread per direction, each moving bytes with `splice`
//! through its own pipe (zero-copy; read/write if the kernel refuses splice for these
//! descriptors). An EOF on one side becomes `shutdown(SHUT_WR)` on the other, so protocols that
//! half-close work. [`Forwarder::stop`] wakes the acceptors and connecting threads through the
//! eventfd and the copying threads by shutting their sockets down, then joins every thread.

use std::collections::HashMap;
use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a connection to the real endpoint may take before the client is reset.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The pipe each direction splices through (the default pipe-max-size); 64 KiB if refused.
const PIPE_SIZE: libc::c_int = 1 << 20;

const STACK: usize = 256 * 1024;

use crate::sandbox::net::{check, failed};

/// Receives `n` descriptors sent with `SCM_RIGHTS` in one message on the unix socket `channel`
/// (close-on-exec). Fewer or more than `n` is an error, and every received one is then closed.
pub fn recv_fds(channel: BorrowedFd<'_>, n: usize) -> io::Result<Vec<OwnedFd>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut byte = [0u8; 1];
    let got = crate::sandbox::net::recv_fds(channel, &mut byte)
        .map_err(|e| failed("receiving the action's listeners", e))?;
    if got.len == 0 && got.fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "receiving the action's listeners: the child closed the channel without sending them",
        ));
    }
    if got.truncated || got.fds.len() != n {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "receiving the action's listeners: expected {n} descriptors, got {}{}",
                got.fds.len(),
                if got.truncated {
                    " (and more, truncated)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(got.fds)
}

/// What the forwarder did, counted over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted and connected to their endpoint.
    pub connections: u64,
    /// Bytes from the action to the endpoints.
    pub bytes_out: u64,
    /// Bytes from the endpoints to the action.
    pub bytes_in: u64,
    /// Connections accepted whose endpoint could not be reached (refused, unreachable, timed
    /// out): the action's side was reset.
    pub refused: u64,
}

/// Both sockets of one forwarded connection; `stop` shuts them down to end its copies.
#[derive(Debug)]
struct Conn {
    client: OwnedFd,
    target: OwnedFd,
}

#[derive(Debug, Default)]
struct State {
    stopping: bool,
    next: u64,
    live: HashMap<u64, Arc<Conn>>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    /// Readable once `stop` began (never read, so it stays readable for every poller).
    stop: OwnedFd,
    state: Mutex<State>,
    connections: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking forwarder thread must not stop the others from being shut down.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Forwards connections accepted on listeners in the action's namespace to real endpoints.
#[derive(Debug)]
pub struct Forwarder {
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
    stopped: bool,
}

impl Forwarder {
    /// Serves each (listener inside the action's namespace, real target) pair until `stop`.
    pub fn start(pairs: Vec<(OwnedFd, SocketAddr)>) -> io::Result<Forwarder> {
        for (listener, target) in &pairs {
            let mut accepting: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt writes one c_int into `accepting`.
            check(unsafe {
                libc::getsockopt(
                    listener.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ACCEPTCONN,
                    (&mut accepting as *mut libc::c_int).cast(),
                    &mut len,
                )
            })
            .map_err(|e| failed(&format!("the listener for {target}"), e))?;
            if accepting == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the descriptor for {target} is not a listening socket"),
                ));
            }
            set_nonblocking(listener.as_raw_fd(), true)
                .map_err(|e| failed(&format!("O_NONBLOCK on the listener for {target}"), e))?;
        }
        // SAFETY: eventfd(2) takes no pointers; a non-negative result is a new descriptor.
        let stop = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
            .map_err(|e| failed("the forwarder's stop eventfd", e))?;
        let shared = Arc::new(Shared {
            // SAFETY: `stop` was just created and nothing else owns it.
            stop: unsafe { OwnedFd::from_raw_fd(stop) },
            state: Mutex::new(State::default()),
            connections: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let mut forwarder = Forwarder {
            shared,
            acceptors: Vec::with_capacity(pairs.len()),
            stopped: false,
        };
        for (listener, target) in pairs {
            let shared = Arc::clone(&forwarder.shared);
            let handle = std::thread::Builder::new()
                .name("bbr-fwd-accept".into())
                .stack_size(STACK)
                .spawn(move || accept_loop(listener, target, shared))
                .map_err(|e| failed(&format!("starting the acceptor for {target}"), e))?;
            // On an error above, Drop stops the acceptors already started.
            forwarder.acceptors.push(handle);
        }
        Ok(forwarder)
    }

    /// Stops accepting, closes every connection, joins the threads. Also on Drop.
    pub fn stop(mut self) -> Stats {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Stats {
        if !self.stopped {
            self.stopped = true;
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from `one` to the eventfd. It cannot fail short of a
            // counter overflow, which one write cannot reach.
            unsafe {
                libc::write(
                    self.shared.stop.as_raw_fd(),
                    (&one as *const u64).cast(),
                    size_of::<u64>(),
                )
            };
            // The acceptors end (closing their listeners: later connects are refused) ...
            for handle in self.acceptors.drain(..) {
                let _ = handle.join();
            }
            // ... then every connection is shut down, and none can register after this.
            let threads = {
                let mut state = self.shared.state();
                state.stopping = true;
                for conn in state.live.values() {
                    shutdown(&conn.client, libc::SHUT_RDWR);
                    shutdown(&conn.target, libc::SHUT_RDWR);
                }
                std::mem::take(&mut state.threads)
            };
            for handle in threads {
                let _ = handle.join();
            }
        }
        Stats {
            connections: self.shared.connections.load(Ordering::Relaxed),
            bytes_out: self.shared.bytes_out.load(Ordering::Relaxed),
            bytes_in: self.shared.bytes_in.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn shutdown(fd: &OwnedFd, how: libc::c_int) {
    // SAFETY: shutdown(2) takes no pointers; the descriptor is open (we hold it).
    unsafe { libc::shutdown(fd.as_raw_fd(), how) };
}

fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL takes an int.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })?;
    Ok(())
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: `value` is a c_int that lives for the call. Best effort: a socket that refuses
    // TCP_NODELAY or SO_LINGER still forwards correctly.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Closes `fd` with a reset (SO_LINGER 0), so the client sees ECONNRESET at once.
fn reset(fd: OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` lives for the call.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(fd);
}

/// SIGPIPE stays blocked in every forwarder thread: splice to a socket the peer closed raises
/// it (no MSG_NOSIGNAL there), and the EPIPE it comes with is handled.
fn block_sigpipe() {
    // SAFETY: sigset_t is plain old data; the calls only touch `set`, and pthread_sigmask
    // changes this thread's mask alone.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Polls `fd` for `events` and the stop eventfd; `Ok(false)` when stop is readable.
fn wait(
    fd: RawFd,
    events: libc::c_short,
    stop: &OwnedFd,
    timeout_ms: libc::c_int,
) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd,
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` holds two pollfds for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        if r == 0 {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        return Ok(true);
    }
}

fn accept_loop(listener: OwnedFd, target: SocketAddr, shared: Arc<Shared>) {
    block_sigpipe();
    loop {
        match wait(listener.as_raw_fd(), libc::POLLIN, &shared.stop, -1) {
            Ok(true) => {}
            Ok(false) => return,
            // poll on two valid descriptors fails only for lack of memory: retry shortly.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        // SAFETY: accept4 with null address pointers; a non-negative result is a new socket.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    // Out of descriptors or memory: let connections end before accepting more.
                    std::thread::sleep(Duration::from_millis(50));
                }
                Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP) => return,
                // EAGAIN, ECONNABORTED, EINTR, EPROTO, a network error on the new connection.
                _ => {}
            }
            continue;
        }
        // SAFETY: `fd` was just returned by accept4 and nothing else owns it.
        let client = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut state = shared.state();
        state.threads.retain(|h| !h.is_finished());
        if state.stopping {
            return;
        }
        let conn_shared = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name("bbr-fwd-conn".into())
            .stack_size(STACK)
            .spawn(move || serve(client, target, conn_shared))
        {
            Ok(handle) => state.threads.push(handle),
            // The closure (and the client with it) is dropped: the client sees EOF.
            Err(_) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One accepted connection: connect to `target`, then copy both ways until both ends are done.
fn serve(client: OwnedFd, target: SocketAddr, shared: Arc<Shared>) {
    block_sigpipe();
    set_int(client.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    let upstream = match connect(target, &shared.stop) {
        Ok(Some(fd)) => fd,
        Ok(None) => return reset(client),
        Err(e) => {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            // The action sees a reset, not the refusal itself: say what happened.
            crate::note!(
                "bbr-runner: the action's TCP connection to {target} (forwarded from its network namespace) failed: {e}"
            );
            return reset(client);
        }
    };
    set_int(
        upstream.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        1,
    );
    let conn = Arc::new(Conn {
        client,
        target: upstream,
    });
    let id = {
        let mut state = shared.state();
        if state.stopping {
            return;
        }
        let id = state.next;
        state.next += 1;
        state.live.insert(id, Arc::clone(&conn));
        id
    };
    shared.connections.fetch_add(1, Ordering::Relaxed);

    let back = {
        let conn = Arc::clone(&conn);
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("bbr-fwd-back".into())
            .stack_size(STACK)
            .spawn(move || {
                block_sigpipe();
                copy_half(&conn.target, &conn.client, &shared.bytes_in);
            })
    };
    // Without the second thread the connection is only closed (the client sees EOF).
    if let Ok(back) = back {
        copy_half(&conn.client, &conn.target, &shared.bytes_out);
        let _ = back.join();
    }
    shared.state().live.remove(&id);
}

/// Connects to `target` within [`CONNECT_TIMEOUT`]; `Ok(None)` when the forwarder stops first.
fn connect(target: SocketAddr, stop: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let (ss, len) = crate::sandbox::net::sockaddr(&target);
    let family = if target.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor.
    let fd = check(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: `fd` was just created and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ss` holds a valid address of `len` bytes for the call.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            match wait(sock.as_raw_fd(), libc::POLLOUT, stop, ms) {
                Ok(true) => break,
                Ok(false) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(e) => return Err(e),
            }
        }
        let mut err: libc::c_int = 0;
        let mut elen = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes one c_int into `err`.
        check(unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut elen,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    set_nonblocking(sock.as_raw_fd(), false)?;
    Ok(Some(sock))
}

/// Copies `from` to `to` until EOF, then half-closes `to`. On an error both sockets are shut
/// down, which ends the other direction too.
fn copy_half(from: &OwnedFd, to: &OwnedFd, counter: &AtomicU64) {
    let done = match splice_loop(from, to, counter) {
        Err(Fallback) => copy_loop(from, to, counter),
        Ok(r) => r,
    };
    match done {
        Ok(()) => shutdown(to, libc::SHUT_WR),
        Err(_) => {
            shutdown(from, libc::SHUT_RDWR);
            shutdown(to, libc::SHUT_RDWR);
        }
    }
}

/// splice(2) is not available for these descriptors: copy with read and write instead.
struct Fallback;

fn splice_loop(
    from: &OwnedFd,
    to: &OwnedFd,
    counter: &AtomicU64,
) -> Result<io::Result<()>, Fallback> {
    let mut ends = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `ends`.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Fallback);
    }
    // SAFETY: both were just created by pipe2 and nothing else owns them.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: F_SETPIPE_SZ takes an int and returns the size set; F_GETPIPE_SZ takes none.
    let size = unsafe {
        match libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) {
            n if n > 0 => n,
            _ => libc::fcntl(wr.as_raw_fd(), libc::F_GETPIPE_SZ).max(4096),
        }
    } as usize;
    let mut first = true;
    loop {
        // SAFETY: splice with null offsets between a socket and our pipe.
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                wr.as_raw_fd(),
                std::ptr::null_mut(),
                size,
                libc::SPLICE_F_MOVE,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL | libc::ENOSYS) if first => return Err(Fallback),
                _ => return Ok(Err(e)),
            }
        }
        if n == 0 {
            return Ok(Ok(()));
        }
        first = false;
        let mut left = n as usize;
        while left > 0 {
            // SAFETY: as above, from our pipe to the other socket.
            let m = unsafe {
                libc::splice(
                    rd.as_raw_fd(),
                    std::ptr::null_mut(),
                    to.as_raw_fd(),
                    std::ptr::null_mut(),
                    left,
                    libc::SPLICE_F_MOVE,
                )
            };
            if m < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Ok(Err(e));
            }
            if m == 0 {
                return Ok(Err(io::Error::from(io::ErrorKind::WriteZero)));
            }
            left -= m as usize;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn copy_loop(from: &OwnedFd, to: &OwnedFd, counter: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        // SAFETY: recv writes at most buf.len() bytes into `buf`.
        let n = unsafe { libc::recv(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(());
        }
        let mut sent = 0;
        while sent < n as usize {
            // SAFETY: sends initialised bytes of `buf`; MSG_NOSIGNAL: EPIPE, no SIGPIPE.
            let m = unsafe {
                libc::send(
                    to.as_raw_fd(),
                    buf[sent..].as_ptr().cast(),
                    n as usize - sent,
                    libc::MSG_NOSIGNAL,
                )
            };
            if m < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            sent += m as usize;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
