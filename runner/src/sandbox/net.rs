//! The action's network namespace, prepared from inside by the forked child (as root, after it
//! has entered a new network namespace): the loopback up, each declared endpoint's address
//! local on `lo`, a listener bound to exactly that address and port, and the listeners handed to
//! the supervisor over a unix socket. The supervisor (outside, in the host's namespace) accepts
//! on them and forwards each connection to the real endpoint (`backend::native::forward`): the
//! namespace has no other interface and no route, so that forwarder is its only way out.
//!
//! Addresses are added with one rtnetlink `RTM_NEWADDR` message, for both families: the prefix
//! is exactly /32 or /128 (an `SIOCSIFADDR` alias would take the classful netmask and need a
//! second ioctl and a label per address), IPv6 gets `IFA_F_NODAD` so the address is usable at
//! once, and the kernel's acknowledgement reports the exact error.
//!
//! Everything here runs after fork: no heap allocation, only stack buffers and raw syscalls.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors [`send_fds`] passes in one message.
pub const MAX_FDS: usize = 64;

/// Backlog of each endpoint's listener.
const BACKLOG: libc::c_int = 64;

const LO: &std::ffi::CStr = c"lo";

pub(crate) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Adds what failed to an OS error, keeping its kind (no allocation until it fails).
pub(crate) fn failed(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor we own.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lo_ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(LO.to_bytes_with_nul()) {
        *dst = *src as libc::c_char;
    }
    req
}

/// Sets `IFF_UP` on `lo` (a new network namespace starts with it down); the kernel then gives it
/// 127.0.0.1/8 and ::1.
pub fn loopback_up() -> io::Result<()> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
        .map_err(|e| failed("socket for the loopback's flags", e))?;
    let mut req = lo_ifreq();
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `req`, which lives
    // for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })
        .map_err(|e| failed("SIOCGIFFLAGS on lo", e))?;
    // SAFETY: after SIOCGIFFLAGS the union's active member is ifru_flags.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads `req`, which lives for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })
        .map_err(|e| failed("SIOCSIFFLAGS IFF_UP on lo", e))?;
    Ok(())
}

/// A new network namespace with `lo` up, made by the calling thread (which is left in it: a
/// thread of its own, see `backend::native::NetNamespace`), as a descriptor the action's first
/// process enters with `setns`.
pub fn new_namespace_with_loopback() -> io::Result<OwnedFd> {
    // SAFETY: unshare takes no pointers; only the calling thread changes namespace.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) })
        .map_err(|e| failed("unshare(CLONE_NEWNET)", e))?;
    loopback_up()?;
    // SAFETY: a constant NUL-terminated path; a non-negative result is a new descriptor.
    let fd = check(unsafe {
        libc::open(
            c"/proc/thread-self/ns/net".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    })
    .map_err(|e| failed("opening /proc/thread-self/ns/net", e))?;
    // SAFETY: fd was just returned by open(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Enters the network namespace open as `fd`, then closes `fd`.
pub fn enter(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns takes a descriptor number; close only closes it.
    let ret = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    let result = check(ret)
        .map(drop)
        .map_err(|e| failed("setns(CLONE_NEWNET)", e));
    // SAFETY: the descriptor is this process's copy of the supervisor's, used only here.
    unsafe { libc::close(fd) };
    result
}

// The RTM_NEWADDR request: header, ifaddrmsg, then IFA_LOCAL and IFA_ADDRESS (4-byte aligned
// rtattrs, each holding up to 16 address bytes), and for IPv6 IFA_FLAGS.
#[repr(C)]
#[derive(Clone, Copy)]
struct AddrAttr {
    rta: libc::rtattr,
    addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FlagsAttr {
    rta: libc::rtattr,
    flags: u32,
}

#[repr(C)]
struct NewAddr {
    nlh: libc::nlmsghdr,
    ifa: libc::ifaddrmsg,
    attrs: [u8; 2 * size_of::<AddrAttr>() + size_of::<FlagsAttr>()],
}

#[repr(C)]
struct Ack {
    nlh: libc::nlmsghdr,
    err: libc::nlmsgerr,
    // Room for the echoed request (the kernel echoes it unless NETLINK_CAP_ACK) and ext acks.
    rest: [u8; 256],
}

/// Makes `ip` a local address in this network namespace, on `lo`, with a host prefix (/32 or
/// /128). A no-op for loopback addresses (127.0.0.0/8 and ::1 are already local once `lo` is up)
/// and for an address added before.
pub fn add_local_address(ip: IpAddr) -> io::Result<()> {
    if ip.is_loopback() {
        return Ok(());
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an endpoint's address must be a unicast address",
        ));
    }
    // SAFETY: LO is a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(LO.as_ptr()) };
    if index == 0 {
        return Err(failed("if_nametoindex(lo)", io::Error::last_os_error()));
    }
    let (family, bytes, len, prefix): (u8, [u8; 16], usize, u8) = match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (libc::AF_INET as u8, b, 4, 32)
        }
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets(), 16, 128),
    };

    // SAFETY: NewAddr is plain old data; all-zero is a valid value.
    let mut req: NewAddr = unsafe { std::mem::zeroed() };
    let rta_len = (size_of::<libc::rtattr>() + len) as u16;
    let rta_space = (rta_len as usize + 3) & !3;
    let mut off = 0;
    for kind in [libc::IFA_LOCAL, libc::IFA_ADDRESS] {
        let attr = AddrAttr {
            rta: libc::rtattr {
                rta_len,
                rta_type: kind,
            },
            addr: bytes,
        };
        // SAFETY: `off + size_of::<AddrAttr>()` is within `attrs` (two AddrAttrs and a
        // FlagsAttr fit); write_unaligned needs no alignment.
        unsafe {
            std::ptr::write_unaligned(req.attrs.as_mut_ptr().add(off).cast::<AddrAttr>(), attr)
        };
        off += rta_space;
    }
    if family == libc::AF_INET6 as u8 {
        let attr = FlagsAttr {
            rta: libc::rtattr {
                rta_len: size_of::<FlagsAttr>() as u16,
                rta_type: libc::IFA_FLAGS,
            },
            flags: libc::IFA_F_NODAD | libc::IFA_F_PERMANENT,
        };
        // SAFETY: as above, a FlagsAttr fits after two attributes.
        unsafe {
            std::ptr::write_unaligned(req.attrs.as_mut_ptr().add(off).cast::<FlagsAttr>(), attr)
        };
        off += size_of::<FlagsAttr>();
    }
    let total = size_of::<libc::nlmsghdr>() + size_of::<libc::ifaddrmsg>() + off;
    req.nlh.nlmsg_len = total as u32;
    req.nlh.nlmsg_type = libc::RTM_NEWADDR;
    req.nlh.nlmsg_flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    req.nlh.nlmsg_seq = 1;
    req.ifa.ifa_family = family;
    req.ifa.ifa_prefixlen = prefix;
    req.ifa.ifa_flags = if family == libc::AF_INET6 as u8 {
        libc::IFA_F_NODAD as u8 | libc::IFA_F_PERMANENT as u8
    } else {
        libc::IFA_F_PERMANENT as u8
    };
    req.ifa.ifa_scope = libc::RT_SCOPE_UNIVERSE;
    req.ifa.ifa_index = index;

    let sock = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)
        .map_err(|e| failed("rtnetlink socket", e))?;
    // SAFETY: sockaddr_nl is plain old data; all-zero (pid 0: the kernel) is the destination.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        // SAFETY: `req` holds `total` initialised bytes; `kernel` is a valid sockaddr_nl.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                (&req as *const NewAddr).cast(),
                total,
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(failed("sending RTM_NEWADDR", e));
        }
    }
    // SAFETY: Ack is plain old data; all-zero is a valid value.
    let mut ack: Ack = unsafe { std::mem::zeroed() };
    let got = loop {
        // SAFETY: recv writes at most size_of::<Ack>() bytes into `ack`.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                (&mut ack as *mut Ack).cast(),
                size_of::<Ack>(),
                0,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(failed("reading RTM_NEWADDR's acknowledgement", e));
        }
    };
    if got < size_of::<libc::nlmsghdr>() + size_of::<libc::nlmsgerr>()
        || ack.nlh.nlmsg_type != libc::NLMSG_ERROR as u16
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "RTM_NEWADDR: the kernel's answer is not an acknowledgement",
        ));
    }
    match ack.err.error {
        // EEXIST: already local (a second endpoint on the same host).
        0 => Ok(()),
        e if -e == libc::EEXIST => Ok(()),
        e => Err(failed(
            "RTM_NEWADDR on lo",
            io::Error::from_raw_os_error(-e),
        )),
    }
}

/// A TCP listener bound to exactly `addr` (IPv6: `IPV6_V6ONLY`), backlog 64, close-on-exec.
pub fn listen_on(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let sock = socket(family, libc::SOCK_STREAM, 0).map_err(|e| failed("TCP socket", e))?;
    let one: libc::c_int = 1;
    let set = |level, name, what| {
        // SAFETY: `one` is a c_int that lives for the call.
        check(unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                name,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map_err(|e| failed(what, e))
    };
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR")?;
    if addr.is_ipv6() {
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY")?;
    }
    let (ss, len) = sockaddr(&addr);
    // SAFETY: `ss` holds a valid address of `len` bytes for the call.
    check(unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map_err(|e| failed("binding the endpoint's listener", e))?;
    // SAFETY: listen(2) takes no pointers.
    check(unsafe { libc::listen(sock.as_raw_fd(), BACKLOG) })
        .map_err(|e| failed("listen on the endpoint's listener", e))?;
    Ok(sock)
}

/// `addr` as the kernel takes it (`bind`, `connect`): the address and its length.
pub(crate) fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// One message received by [`recv_fds`].
#[derive(Debug)]
pub struct Received {
    /// The bytes received into the caller's buffer.
    pub len: usize,
    /// The descriptors it carried (close-on-exec), at most [`MAX_FDS`].
    pub fds: Vec<OwnedFd>,
    /// It carried more descriptors than fit (`MSG_CTRUNC`): those are lost.
    pub truncated: bool,
}

/// Receives one message on the unix socket `channel`: its bytes into `buf`, and the
/// descriptors sent with it by [`send_fds`] (`SCM_RIGHTS`). Retries when interrupted.
pub fn recv_fds(channel: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s keep the control buffer aligned for cmsghdr; room for MAX_FDS descriptors.
    let mut control = [0u64; (size_of::<libc::cmsghdr>() + MAX_FDS * size_of::<RawFd>()) / 8 + 2];
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let len = loop {
        // SAFETY: `msg` points at `iov` and `control`, which live for the call.
        let r = unsafe { libc::recvmsg(channel.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsghdrs; the CMSG
    // macros stay inside it, and each SCM_RIGHTS descriptor is new and ours to own.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Sends `fds` (at most [`MAX_FDS`]) as one `SCM_RIGHTS` message, with one data byte, over the
/// unix socket `channel`.
pub fn send_fds(channel: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "send_fds passes between 1 and 64 descriptors",
        ));
    }
    // CMSG_SPACE(64 * 4) = 16 + 256 on 64-bit; u64s keep the buffer aligned for cmsghdr.
    let mut control = [0u64; (size_of::<libc::cmsghdr>() + MAX_FDS * size_of::<RawFd>()) / 8 + 1];
    let payload = (fds.len() * size_of::<RawFd>()) as libc::c_uint;
    // SAFETY: CMSG_SPACE only computes.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `control`, at least `space` bytes and aligned, so the first
    // header and its data (fds.len() descriptors) lie inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            std::ptr::write_unaligned(data.add(i), fd.as_raw_fd());
        }
    }
    loop {
        // SAFETY: `msg` and everything it points to live for the call.
        let n = unsafe { libc::sendmsg(channel.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(failed("sending the listeners (SCM_RIGHTS)", e));
        }
    }
}
