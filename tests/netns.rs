//! The action's network namespace, for real, as root: a forked child prepares it exactly as the
//! runner's child does (`sandbox::net`: unshare, loopback up, the endpoint's address on `lo`,
//! a listener on it, the listeners sent over a socketpair) and sends its namespace along; the
//! test's "action" is a thread that joined that namespace (setns), and the supervisor's side is
//! `backend::native::forward` running in the test process. Each escape the namespace refuses
//! is paired with its CONTROL (the same attempt from the host's namespace succeeds: the
//! namespace is what denies it) and its ALLOWED NEIGHBOUR (the granted endpoint works from the
//! same namespace).
//!
//! Host addresses: the machine's own non-loopback addresses (getifaddrs). On a machine without
//! one, set by `BBR_NETNS_FAKE_HOST=1` too, the "host" is a separate throwaway namespace with
//! 192.0.2.77 and 2001:db8::77 on its `lo`, where the servers, the controls and the forwarder run.

mod support;

use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bbr_runner::backend::native::forward::{recv_fds, Forwarder, Stats};
use bbr_runner::sandbox::net;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

const MIB: usize = 1024 * 1024;

/// The stop test counts the forwarder's threads by name: no other test may run one meanwhile.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The action's namespace, made by a forked child with the runner's own functions.

/// What the child made: its listeners (one per endpoint, in order) and its namespace.
struct ActionNs {
    listeners: Vec<OwnedFd>,
    ns: OwnedFd,
}

const STEPS: [&str; 7] = [
    "unshare(CLONE_NEWNET)",
    "loopback_up",
    "add_local_address",
    "listen_on",
    "open /proc/self/ns/net",
    "send_fds",
    "too many endpoints",
];

/// Forks a child that enters a new network namespace and prepares `endpoints` as the runner's
/// child does (`add_addresses: false` skips `add_local_address`). Err: the child's failed step
/// and its error's message.
fn action_ns(
    endpoints: &[SocketAddr],
    add_addresses: bool,
) -> Result<ActionNs, (&'static str, String)> {
    support::require_root();
    let (parent, child) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    // SAFETY: the child only makes syscalls through the functions under test (no allocation
    // on their success paths; glibc's malloc is fork-safe on the error path) and _exits.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = child_main(endpoints, add_addresses, child.as_fd(), err_w.as_fd());
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child: pid } => {
            drop(child);
            drop(err_w);
            let status = waitpid(pid, None).expect("waitpid");
            let mut report = Vec::new();
            let mut err_file = std::fs::File::from(err_r);
            err_file
                .read_to_end(&mut report)
                .expect("read the child's report");
            if let Some((&step, message)) = report.split_first() {
                let message = String::from_utf8_lossy(message).into_owned();
                return Err((STEPS[step as usize], message));
            }
            assert_eq!(status, WaitStatus::Exited(pid, 0), "the namespace's child");
            let mut fds = recv_fds(parent.as_fd(), endpoints.len() + 1).expect("recv_fds");
            let ns = fds.pop().expect("the namespace");
            Ok(ActionNs { listeners: fds, ns })
        }
    }
}

fn child_main(
    endpoints: &[SocketAddr],
    add: bool,
    chan: BorrowedFd<'_>,
    err: BorrowedFd<'_>,
) -> i32 {
    // On failure only: the step's number, then the error's message (glibc's malloc is
    // fork-safe, and this path may allocate).
    let fail = |step: u8, e: io::Error| -> i32 {
        let mut report = vec![step];
        report.extend_from_slice(e.to_string().as_bytes());
        // SAFETY: writes report.len() bytes from `report`.
        unsafe { libc::write(err.as_raw_fd(), report.as_ptr().cast(), report.len()) };
        1
    };
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
        return fail(0, e.into());
    }
    if let Err(e) = net::loopback_up() {
        return fail(1, e);
    }
    // No heap: at most 8 endpoints here.
    let mut held: [Option<OwnedFd>; 9] = Default::default();
    if endpoints.len() > 8 {
        return fail(6, io::Error::from_raw_os_error(libc::E2BIG));
    }
    for (i, ep) in endpoints.iter().enumerate() {
        // Twice, as for two endpoints on one host: the second finds the address there.
        for _ in 0..if add { 2 } else { 0 } {
            if let Err(e) = net::add_local_address(ep.ip()) {
                return fail(2, e);
            }
        }
        match net::listen_on(*ep) {
            Ok(fd) => held[i] = Some(fd),
            Err(e) => return fail(3, e),
        }
    }
    // SAFETY: a NUL-terminated path; a non-negative result is a new descriptor we own.
    let ns = unsafe {
        libc::open(
            c"/proc/self/ns/net".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if ns < 0 {
        return fail(4, io::Error::last_os_error());
    }
    // SAFETY: as above.
    held[endpoints.len()] = Some(unsafe { OwnedFd::from_raw_fd(ns) });
    let mut borrowed: [Option<BorrowedFd<'_>>; 9] = [None; 9];
    for (b, h) in borrowed.iter_mut().zip(held.iter()) {
        *b = h.as_ref().map(|f| f.as_fd());
    }
    let mut fds = [chan; 9];
    for (i, b) in borrowed.iter().take(endpoints.len() + 1).enumerate() {
        fds[i] = b.expect("held");
    }
    if let Err(e) = net::send_fds(chan, &fds[..endpoints.len() + 1]) {
        return fail(5, e);
    }
    0
}

/// Runs `f` in a thread that joined `ns` (the action's namespace, or the throwaway host's).
fn within<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in the namespace")
    })
}

// ---------------------------------------------------------------------------------------------
// The host: this machine's namespace, or a throwaway one standing in for it.

struct Host {
    /// `None`: the test's own (the machine's) namespace.
    ns: Option<OwnedFd>,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
}

impl Host {
    fn get() -> Host {
        if std::env::var_os("BBR_NETNS_FAKE_HOST").is_none() {
            if let (Some(v4), Some(v6)) = machine_addresses() {
                return Host {
                    ns: None,
                    v4: Some(v4),
                    v6: Some(v6),
                };
            }
        }
        eprintln!("host addresses: a throwaway namespace with 192.0.2.77 and 2001:db8::77 on lo");
        Host::fake()
    }

    fn fake() -> Host {
        let endpoints: [SocketAddr; 0] = [];
        let made = action_ns(&endpoints, true).expect("throwaway namespace");
        let v4 = Ipv4Addr::new(192, 0, 2, 77);
        let v6: Ipv6Addr = "2001:db8::77".parse().expect("v6");
        within(&made.ns, || {
            net::add_local_address(IpAddr::V4(v4)).expect("add v4 to the throwaway namespace");
            net::add_local_address(IpAddr::V6(v6)).expect("add v6 to the throwaway namespace");
        });
        Host {
            ns: Some(made.ns),
            v4: Some(v4),
            v6: Some(v6),
        }
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.ns {
            Some(ns) => within(ns, f),
            None => f(),
        }
    }

    fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6.expect("an IPv6 host address"))
        } else {
            IpAddr::V4(self.v4.expect("an IPv4 host address"))
        }
    }
}

/// This machine's first global IPv4 and IPv6 addresses (not loopback, not link-local).
fn machine_addresses() -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list, read below and freed with freeifaddrs.
    assert_eq!(unsafe { libc::getifaddrs(&mut list) }, 0, "getifaddrs");
    let (mut v4, mut v6) = (None, None);
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it names.
        match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
            libc::AF_INET => {
                // SAFETY: AF_INET: a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_link_local() && v4.is_none() {
                    v4 = Some(ip);
                }
            }
            libc::AF_INET6 => {
                // SAFETY: AF_INET6: a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
                if !ip.is_loopback() && !link_local && v6.is_none() {
                    v6 = Some(ip);
                }
            }
            _ => {}
        }
    }
    // SAFETY: frees the list getifaddrs returned, once.
    unsafe { libc::freeifaddrs(list) };
    (v4, v6)
}

// ---------------------------------------------------------------------------------------------
// Servers on the host, and clients.

#[derive(Clone, Copy)]
enum Mode {
    /// Echoes as it reads; half-closes at the client's EOF.
    Echo,
    /// Reads everything to EOF, then sends it all back and closes: needs the client's
    /// half-close to arrive, and the way back to stay open after it.
    AfterEof,
}

struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

/// A TCP server on `ip`, port chosen by the kernel, serving until the test process ends.
fn server(host: &Host, ip: IpAddr, mode: Mode) -> Server {
    let listener = host.run(|| TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind server"));
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut kept = Vec::new();
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => match mode {
                            Mode::Echo => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Mode::AfterEof => kept.extend_from_slice(&buf[..n]),
                        },
                    }
                }
                let _ = s.write_all(&kept);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    Server { addr, accepted }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Sends `len` bytes, half-closes, reads to EOF: what came back.
fn round_trip(addr: SocketAddr, len: usize) -> io::Result<Vec<u8>> {
    let data = pattern(len, len as u64 ^ addr.port() as u64);
    let mut s = connect(addr)?;
    let mut w = s.try_clone()?;
    let back = std::thread::scope(|scope| {
        let writer = scope.spawn(|| -> io::Result<()> {
            w.write_all(&data)?;
            // The half-close: the client still reads everything after it.
            w.shutdown(Shutdown::Write)
        });
        let mut back = Vec::new();
        let read = s.read_to_end(&mut back);
        writer.join().expect("writer")?;
        read.map(|_| back)
    })?;
    assert!(
        back == data,
        "{addr}: {} bytes came back, not the {len} sent",
        back.len()
    );
    Ok(back)
}

fn expect_refused(what: &str, r: io::Result<TcpStream>) {
    match r {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{what}: {e}"),
        Ok(_) => panic!("{what}: connected"),
    }
}

fn forwarder(pairs: Vec<(OwnedFd, SocketAddr)>) -> Forwarder {
    Forwarder::start(pairs).expect("start the forwarder")
}

/// The forwarder's threads alive now, by name.
fn forwarder_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("bbr-fwd"))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// ALLOWED: the granted endpoints (127.0.0.1 and ::1) are reached through the forwarder, a few
/// MiB round-trip byte-exact both full-duplex and across a half-close.
#[test]
fn granted_endpoint_round_trips_through_the_forwarder() {
    let _g = serial();
    let host = Host {
        ns: None,
        v4: None,
        v6: None,
    };
    let echo = server(&host, IpAddr::V4(Ipv4Addr::LOCALHOST), Mode::Echo);
    let half = server(&host, IpAddr::V4(Ipv4Addr::LOCALHOST), Mode::AfterEof);
    let echo6 = server(&host, IpAddr::V6(Ipv6Addr::LOCALHOST), Mode::Echo);
    let eps = [echo.addr, half.addr, echo6.addr];
    let made = action_ns(&eps, true).expect("the action's namespace");
    let fwd = forwarder(made.listeners.into_iter().zip(eps).collect());
    within(&made.ns, || {
        round_trip(echo.addr, 4 * MIB).expect("echo through the forwarder");
        round_trip(half.addr, 4 * MIB).expect("half-close through the forwarder");
        round_trip(echo6.addr, MIB).expect("::1 echo through the forwarder");
    });
    let stats = fwd.stop();
    assert_eq!(
        stats,
        Stats {
            connections: 3,
            bytes_out: (9 * MIB) as u64,
            bytes_in: (9 * MIB) as u64,
            refused: 0
        }
    );
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(half.accepted.load(Ordering::SeqCst), 1);
}

/// DENIED: another port on the same host (127.0.0.1:Q). CONTROL: reachable from the host.
/// NEIGHBOUR: the granted 127.0.0.1:P, from the same namespace.
#[test]
fn other_port_on_the_same_host_is_refused() {
    let _g = serial();
    let host = Host {
        ns: None,
        v4: None,
        v6: None,
    };
    let granted = server(&host, IpAddr::V4(Ipv4Addr::LOCALHOST), Mode::Echo);
    let other = server(&host, IpAddr::V4(Ipv4Addr::LOCALHOST), Mode::Echo);
    let made = action_ns(&[granted.addr], true).expect("the action's namespace");
    let _fwd = forwarder(made.listeners.into_iter().zip([granted.addr]).collect());
    within(&made.ns, || {
        expect_refused("other port from inside", connect(other.addr));
        round_trip(granted.addr, 64 * 1024).expect("neighbour: the granted port");
    });
    assert_eq!(other.accepted.load(Ordering::SeqCst), 0);
    round_trip(other.addr, 64 * 1024).expect("control: the other port from the host");
    assert_eq!(other.accepted.load(Ordering::SeqCst), 1);
}

/// DENIED: the host's non-loopback addresses (IPv4 and IPv6), with a server on each.
/// CONTROL: reachable from the host. NEIGHBOUR: the granted 127.0.0.1:P.
#[test]
fn host_non_loopback_address_is_unreachable() {
    let _g = serial();
    let host = Host::get();
    let lo = Host {
        ns: None,
        v4: None,
        v6: None,
    };
    let granted = server(&lo, IpAddr::V4(Ipv4Addr::LOCALHOST), Mode::Echo);
    let made = action_ns(&[granted.addr], true).expect("the action's namespace");
    let _fwd = forwarder(made.listeners.into_iter().zip([granted.addr]).collect());
    for v6 in [false, true] {
        let target = server(&host, host.ip(v6), Mode::Echo);
        eprintln!("host server at {}", target.addr);
        within(&made.ns, || {
            let r = connect(target.addr);
            match r {
                Err(e) => assert!(
                    matches!(
                        e.raw_os_error(),
                        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ECONNREFUSED)
                    ),
                    "{}: {e}",
                    target.addr
                ),
                Ok(_) => panic!("{} reached from inside", target.addr),
            }
            round_trip(granted.addr, 64 * 1024).expect("neighbour: the granted port");
        });
        assert_eq!(target.accepted.load(Ordering::SeqCst), 0);
        host.run(|| round_trip(target.addr, 64 * 1024))
            .expect("control: from the host");
        assert_eq!(target.accepted.load(Ordering::SeqCst), 1);
    }
}

/// ALLOWED: an endpoint at a non-loopback address IP:P is reached at that same address from
/// inside (add_local_address made IP local there). DENIED: IP:Q. CONTROL: IP:Q from the host;
/// and without add_local_address the listener cannot even be bound (EADDRNOTAVAIL).
fn endpoint_with_a_non_loopback_address(v6: bool) {
    let _g = serial();
    let host = Host::get();
    let ip = host.ip(v6);
    let granted = server(&host, ip, Mode::AfterEof);
    let other = server(&host, ip, Mode::Echo);
    match action_ns(&[granted.addr], false) {
        Err(("listen_on", message)) => assert!(
            message.starts_with("binding the endpoint's listener: ")
                && message.ends_with("(os error 99)"),
            "{message}"
        ),
        Err(e) => panic!("without add_local_address: {e:?}"),
        Ok(_) => panic!("without add_local_address, {} was bound", granted.addr),
    }
    let made = action_ns(&[granted.addr], true).expect("the action's namespace");
    let fwd = host.run(|| forwarder(made.listeners.into_iter().zip([granted.addr]).collect()));
    within(&made.ns, || {
        round_trip(granted.addr, 2 * MIB).expect("the granted endpoint from inside");
        expect_refused("the other port from inside", connect(other.addr));
    });
    assert_eq!(other.accepted.load(Ordering::SeqCst), 0);
    host.run(|| round_trip(other.addr, 64 * 1024))
        .expect("control: from the host");
    let stats = fwd.stop();
    assert_eq!(
        (stats.connections, stats.bytes_out, stats.bytes_in),
        (1, 2 * MIB as u64, 2 * MIB as u64)
    );
}

#[test]
fn endpoint_with_a_non_loopback_ipv4_address() {
    endpoint_with_a_non_loopback_address(false);
}

#[test]
fn endpoint_with_a_non_loopback_ipv6_address() {
    endpoint_with_a_non_loopback_address(true);
}

/// DENIED: UDP to the host's 127.0.0.1:U and to its non-loopback address. CONTROL: both
/// received from the host. NEIGHBOUR: the granted TCP endpoint.
#[test]
fn udp_to_the_host_is_not_received() {
    let _g = serial();
    let host = Host::get();
    let lo = Host {
        ns: None,
        v4: None,
        v6: None,
    };
    let granted = server(&lo, IpAddr::V4(Ipv4Addr::LOCALHOST), Mode::Echo);
    let made = action_ns(&[granted.addr], true).expect("the action's namespace");
    let _fwd = forwarder(made.listeners.into_iter().zip([granted.addr]).collect());
    for (h, ip) in [
        (&lo, IpAddr::V4(Ipv4Addr::LOCALHOST)),
        (&host, host.ip(false)),
    ] {
        let sink = h.run(|| UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind udp"));
        sink.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let to = sink.local_addr().expect("addr");
        let sent = within(&made.ns, || {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind inside");
            let sent = s.send_to(b"from inside", to);
            round_trip(granted.addr, 64 * 1024).expect("neighbour: the granted endpoint");
            sent
        });
        eprintln!("UDP to {to} from inside: {sent:?}");
        let mut buf = [0u8; 64];
        match sink.recv_from(&mut buf) {
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{e}"
            ),
            Ok((n, from)) => panic!("{to} received {:?} from {from}", &buf[..n]),
        }
        h.run(|| {
            let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind on the host");
            s.send_to(b"from the host", to).expect("send from the host");
        });
        let (n, _) = sink
            .recv_from(&mut buf)
            .expect("control: received from the host");
        assert_eq!(&buf[..n], b"from the host");
    }
}

/// A target that refuses: the action's connection is reset, not left hanging, and counted.
/// NEIGHBOUR: a granted endpoint that listens works in the same namespace.
#[test]
fn refused_target_resets_the_client() {
    let _g = serial();
    let lo = Host {
        ns: None,
        v4: None,
        v6: None,
    };
    let granted = server(&lo, IpAddr::V4(Ipv4Addr::LOCALHOST), Mode::Echo);
    let closed = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), support::free_port());
    expect_refused("control: the closed port from the host", connect(closed));
    let eps = [granted.addr, closed];
    let made = action_ns(&eps, true).expect("the action's namespace");
    let fwd = forwarder(made.listeners.into_iter().zip(eps).collect());
    within(&made.ns, || {
        // The listener inside accepts; the reset may come before connect(2) returns.
        match connect(closed) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connect to the refused endpoint: {e}"),
            Ok(mut s) => {
                let mut buf = [0u8; 16];
                match s.read(&mut buf) {
                    Ok(0) => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                    other => panic!("from a refused target: {other:?}"),
                }
            }
        }
        // No speed asserted: a client left hanging instead of reset fails above when its
        // read's deadline (30 s, `connect`) passes.
        round_trip(granted.addr, 64 * 1024).expect("neighbour: the granted endpoint");
    });
    let stats = fwd.stop();
    assert_eq!((stats.refused, stats.connections), (1, 1));
}

/// After `stop`: no forwarder thread is left, an open connection is closed, and the listener
/// is closed (connecting is refused). CONTROL: before `stop`, the same connect succeeded.
#[test]
fn stop_joins_every_thread_and_closes_the_listener() {
    let _g = serial();
    let lo = Host {
        ns: None,
        v4: None,
        v6: None,
    };
    let granted = server(&lo, IpAddr::V4(Ipv4Addr::LOCALHOST), Mode::Echo);
    assert_eq!(forwarder_threads(), 0, "a forwarder thread before the test");
    let made = action_ns(&[granted.addr], true).expect("the action's namespace");
    let fwd = forwarder(made.listeners.into_iter().zip([granted.addr]).collect());
    let mut open = within(&made.ns, || {
        let mut s = connect(granted.addr).expect("control: connect before stop");
        s.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("echo");
        assert_eq!(&buf, b"ping");
        s
    });
    // The acceptor, and the connection's two directions.
    assert_eq!(forwarder_threads(), 3);
    // `stop` must return while a connection is open (no speed asserted: a deadline of 30 s
    // only turns a hang into a failure).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fwd.stop());
    });
    let stats = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("stop returned with a connection open");
    assert_eq!(forwarder_threads(), 0, "forwarder threads after stop");
    assert_eq!(stats.connections, 1);
    let mut buf = [0u8; 4];
    match open.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("the open connection after stop: {other:?}"),
    }
    within(&made.ns, || {
        expect_refused("connect after stop", connect(granted.addr))
    });
}

/// The channel closed before the listeners arrive is an error, not a hang.
#[test]
fn recv_fds_reports_a_closed_channel() {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    drop(b);
    let e = recv_fds(a.as_fd(), 1).expect_err("nothing was sent");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
}

// ---------------------------------------------------------------------------------------------
// Measurement: `cargo test -p bbr-runner --release --test netns -- --ignored --nocapture`.

/// A server that sends `len` bytes to each client, then closes; or (upload) reads to EOF.
fn bulk_server(len: usize, upload: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let buf = vec![0x5au8; MIB];
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_nodelay(true);
            if upload {
                let mut sink = vec![0u8; MIB];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            } else {
                for _ in 0..len / MIB {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            }
        }
    });
    addr
}

fn bulk_client(addr: SocketAddr, len: usize, upload: bool) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; MIB];
    if upload {
        for _ in 0..len / MIB {
            s.write_all(&buf).expect("write");
        }
        s.shutdown(Shutdown::Write).expect("shutdown");
        let _ = s.read(&mut buf);
    } else {
        let mut total = 0;
        loop {
            match s.read(&mut buf).expect("read") {
                0 => break,
                n => total += n,
            }
        }
        assert_eq!(total, len);
    }
    started.elapsed()
}

#[test]
#[ignore = "measurement: pushes 1 GiB each way, direct and through the forwarder"]
fn forward_throughput_1gib() {
    let _g = serial();
    const GIB: usize = 1024 * MIB;
    for upload in [false, true] {
        let addr = bulk_server(GIB, upload);
        let made = action_ns(&[addr], true).expect("the action's namespace");
        let fwd = forwarder(made.listeners.into_iter().zip([addr]).collect());
        let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            direct.push(bulk_client(addr, GIB, upload));
            forwarded.push(within(&made.ns, || bulk_client(addr, GIB, upload)));
        }
        let stats = fwd.stop();
        direct.sort();
        forwarded.sort();
        let (d, f) = (direct[1], forwarded[1]);
        println!(
            "{}: 1 GiB direct {direct:?} (median {d:?}), forwarded {forwarded:?} (median {f:?}), ratio {:.3}; {stats:?}",
            if upload { "action -> server" } else { "server -> action" },
            f.as_secs_f64() / d.as_secs_f64()
        );
    }
}

/// The acceptance measurement: pg_dump of a PostgreSQL database over TCP, direct and from the
/// action's namespace through the forwarder, interleaved, 3 runs each. The database is built
/// like `bench/run.sh`'s (`pgbench -i -s 70` + 500000 rows of text and bytea, about 1.2 GiB;
/// `BBR_NETNS_PG_SCALE`/`BBR_NETNS_PG_ROWS` for a smaller one).
#[test]
#[ignore = "measurement: builds a 1.2 GiB database, then pg_dumps it 6 times"]
fn pg_dump_through_the_forwarder() {
    use std::process::{Command, Stdio};
    let _g = serial();
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let (scale, rows) = (
        env("BBR_NETNS_PG_SCALE", "70"),
        env("BBR_NETNS_PG_ROWS", "500000"),
    );
    let pg = support::db::Postgres::start();
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), pg.port);
    let tcp = |c: &mut Command| {
        c.env_clear()
            .env("PGPASSWORD", support::db::APP_PASSWORD)
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U"])
            .arg(support::db::APP_USER);
    };
    let built = Instant::now();
    let mut init = Command::new(pg.bin.join("pgbench"));
    tcp(&mut init);
    let status = init
        .args(["-q", "-i", "-s", &scale, support::db::APP_DB])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("pgbench");
    assert!(status.success(), "pgbench -i");
    pg.app_sql(&format!(
        "CREATE TABLE blobs AS SELECT g AS id, md5(g::text) || repeat(' text', 40) AS t, \
         decode(repeat(md5(g::text), 8), 'hex') AS b FROM generate_series(1, {rows}) g; \
         ALTER TABLE blobs ADD PRIMARY KEY (id)"
    ));
    pg.app_sql("VACUUM ANALYZE");
    let size = pg.app_sql(&format!(
        "SELECT pg_database_size('{}')",
        support::db::APP_DB
    ));
    println!(
        "database: {} bytes, built in {:?}",
        size.trim(),
        built.elapsed()
    );

    let out = tempfile::tempdir().expect("tempdir");
    let dump = |name: &str| -> Duration {
        let file = out.path().join(name);
        let mut c = Command::new(pg.bin.join("pg_dump"));
        tcp(&mut c);
        c.args(["--format=custom", "-Z", "1", "--file"])
            .arg(&file)
            .arg(support::db::APP_DB);
        let started = Instant::now();
        let status = c.status().expect("pg_dump");
        let took = started.elapsed();
        assert!(status.success(), "pg_dump {name}");
        let _ = std::fs::remove_file(&file);
        took
    };
    let made = action_ns(&[addr], true).expect("the action's namespace");
    let fwd = forwarder(made.listeners.into_iter().zip([addr]).collect());
    // The test process's own CPU time: during a forwarded dump, that is the forwarder's.
    let cpu = || {
        // SAFETY: getrusage fills the rusage it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(ru.ru_utime) + t(ru.ru_stime)
    };
    let runs: usize = env("BBR_NETNS_PG_RUNS", "3").parse().expect("runs");
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let d = dump("direct.dump");
        let before = cpu();
        let f = within(&made.ns, || dump("forwarded.dump"));
        println!(
            "run {}: pg_dump direct {d:?}, through the forwarder {f:?}, ratio {:.3}; forwarder CPU {:.2}s",
            i + 1,
            f.as_secs_f64() / d.as_secs_f64(),
            cpu() - before
        );
        direct.push(d);
        forwarded.push(f);
    }
    let stats = fwd.stop();
    let sum = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).sum::<f64>();
    println!(
        "pg_dump total: direct {:.2}s, forwarded {:.2}s, ratio {:.3}; {stats:?}",
        sum(&direct),
        sum(&forwarded),
        sum(&forwarded) / sum(&direct)
    );
}
