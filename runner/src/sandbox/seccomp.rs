//! The seccomp-bpf layer: a filter on system calls, installed last in the forked child, just
//! before exec.
//!
//! # A deny list, default allow
//!
//! The filter lets every system call through except the ones named in [`denied`]. That is the
//! reverse of bpm's filter and of Docker's default profile, which both list the calls a
//! process may make (some 300 names each) and refuse the rest with EPERM; Docker adds argument
//! checks on a few (`clone`, `personality`, `socket`) and entries that depend on capabilities.
//! An allow list is the tighter design for a container image the operator builds. It does not
//! fit here: the actions run third-party database clients (`pg_dump`, `pg_restore`, `psql`,
//! `mysqldump`, `mariadb`) built against whatever glibc the release or the stemcell ships, and
//! each glibc release starts using new calls (`clone3`, `faccessat2`, `close_range`, `rseq`,
//! `fchmodat2`, `epoll_pwait2`, ...), usually with a fallback that works only on ENOSYS. A name
//! missing from an allow list answers EPERM, and the client fails at run time, in the middle of
//! a backup, on a VM we did not test. A deny list cannot break a client that way: it removes
//! only calls a backup client has no business making.
//!
//! What the deny list gives up is the unknown: a dangerous call added by a future kernel is
//! allowed until it is listed here. That risk is bounded because this filter is not the only
//! layer: the action already runs without capabilities, under no_new_privs, in its own mount
//! namespace and under Landlock. The filter's jobs are narrower: to keep the large kernel
//! surfaces that an unprivileged process can still reach out of reach (user namespaces,
//! io_uring, eBPF, perf events, userfaultfd, the key store), to take away what a leftover
//! capability would allow (mount, modules, kexec, ptrace of a neighbour), and to close the
//! network paths that Landlock's TCP rules do not cover (raw, packet, netlink and vsock
//! sockets; MPTCP and SCTP, which are not TCP sockets for Landlock; TCP Fast Open, which
//! connects from inside `sendto`/`sendmsg` rather than through `connect`).
//!
//! # Answers
//!
//! A denied call fails with EPERM: "refused by policy", the answer a program gets from any
//! other permission check, and what points an operator reading the client's error at the
//! sandbox. The socket refusals use EPERM too, not EAFNOSUPPORT: the families are supported by
//! the kernel (claiming otherwise would send the diagnosis the wrong way), and for MPTCP and
//! SCTP the refusal is about the protocol, not the family. Two refusals answer ENOSYS instead,
//! because that is the answer the caller is written to handle:
//!
//! - `clone3` takes its flags in a structure in memory, which a seccomp filter cannot read, so
//!   it cannot be checked for `CLONE_NEW*`. glibc (threads; `posix_spawn`) falls back to `clone`
//!   on ENOSYS, and `clone`'s flags are a register, which the filter checks.
//! - x32 system calls (x86_64 only): the x32 ABI reaches the same kernel entry points with the
//!   number's bit 30 set (`0x40000000 | nr`). A deny list that matches exact numbers would be
//!   bypassed by calling `0x40000000 | SYS_unshare`; seccompiler matches exact numbers only, so
//!   a prefix of our own, ahead of the compiled program, answers ENOSYS to every number at or
//!   above `0x40000000` (what a kernel built without x32 answers). Calls through the i386 ABI
//!   (`int 0x80`) carry another audit architecture; seccompiler's own first check kills the
//!   process for those.
//!
//! # Cost
//!
//! [`compile`] allocates and runs in the parent, before fork; [`Program::install`] only makes
//! the `seccomp(2)` call (through `seccompiler::apply_filter`, which also sets no_new_privs,
//! already set by then), so it needs no capability and does not allocate. Measured on the
//! development VM (release build, `measure_compile_and_install` in `tests/seccomp.rs`): the
//! program was 437 instructions with every unconditional refusal in seccompiler's linear chain,
//! and its install took 0.2 to 0.33 ms, mostly the kernel walking the program for every system
//! call number to fill its allow cache. With those refusals found by a binary search in our
//! prefix it is 296 instructions (every socket allowed; fewer for the example profile), and
//! installing it 0.09 to 0.12 ms (`BBR_RUNNER_TRACE`, 60 starts, against 0.17 to 0.21 ms
//! before); compile takes 15 to 60 µs, in the parent.

use std::io;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// What the action may do with sockets; everything else on the deny list is always denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// AF_UNIX sockets (socket and socketpair).
    pub unix: bool,
    /// TCP over IPv4/IPv6 (AF_INET/AF_INET6, SOCK_STREAM, protocol 0 or IPPROTO_TCP only: not
    /// MPTCP, not SCTP).
    pub tcp: bool,
    /// UDP over IPv4/IPv6 (SOCK_DGRAM, protocol 0 or IPPROTO_UDP).
    pub udp: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("no seccomp filter is defined for this architecture ({0})")]
    UnsupportedArch(&'static str),
    #[error("cannot compile the seccomp filter: {0}")]
    Compile(#[from] seccompiler::BackendError),
    #[error("the seccomp filter has {0} BPF instructions, over the kernel's limit of {MAX_INSTRUCTIONS}")]
    TooLong(usize),
}

/// The compiled filter: our prefix, then seccompiler's program.
pub struct Program(BpfProgram);

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("instructions", &self.0.len())
            .finish()
    }
}

impl Program {
    /// Installs the filter on the calling thread. Called in the forked child, last before exec.
    pub fn install(&self) -> io::Result<()> {
        match seccompiler::apply_filter(&self.0) {
            Ok(()) => Ok(()),
            Err(seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e)) => Err(e),
            // Only `EmptyFilter` is left (no TSYNC, nothing to compile here); `compile` never
            // returns an empty program. No message: this runs after fork and must not allocate.
            Err(_) => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    fn instructions(&self) -> &[sock_filter] {
        &self.0
    }
}

/// The kernel's `BPF_MAXINSNS`.
const MAX_INSTRUCTIONS: usize = 4096;

/// x32 system call numbers have this bit set.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `open_tree_attr` (Linux 6.15), not in the libc crate yet; the same number on every
/// architecture (the shared table from 424 on).
const SYS_OPEN_TREE_ATTR: i64 = 467;

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JMP_JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const BPF_JMP_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
#[cfg(target_arch = "x86_64")]
const BPF_JMP_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Offsets of `nr` and `arch` in `struct seccomp_data`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// The native ABI's `AUDIT_ARCH_*` (linux/audit.h).
#[cfg(target_arch = "x86_64")]
const NATIVE_AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const NATIVE_AUDIT_ARCH: u32 = 0xC000_00B7;

const NAMESPACE_FLAGS: [(&str, i32); 8] = [
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
    ("CLONE_NEWNS", libc::CLONE_NEWNS),
    ("CLONE_NEWPID", libc::CLONE_NEWPID),
    ("CLONE_NEWNET", libc::CLONE_NEWNET),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
    // In `clone`'s first argument 0x80 is a bit of the exit-signal byte (CLONE_NEWTIME can only
    // be asked for through unshare and clone3, both refused); a value with it set is a signal
    // number above 64, which the kernel refuses anyway, so checking it breaks nothing.
    ("CLONE_NEWTIME", libc::CLONE_NEWTIME),
];

/// How a listed call is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Refused whatever the arguments (EPERM).
    Always,
    /// Refused with ENOSYS, in the prefix.
    Enosys,
    /// Every number with the x32 bit (ENOSYS, in the prefix).
    X32,
    /// `clone` with any `CLONE_NEW*` flag in its first argument.
    CloneNamespaces,
    /// `personality` with anything but PER_LINUX and the query.
    Personality,
    /// `socket` outside the [`Policy`].
    Socket,
    /// `socketpair` outside AF_UNIX (all of it without `Policy::unix`).
    Socketpair,
    /// A send call whose flags (argument `arg`) carry MSG_FASTOPEN.
    FastOpen { arg: u8 },
    /// `setsockopt(fd, IPPROTO_TCP, optname, ...)`.
    TcpOption { optname: i32 },
}

#[derive(Debug)]
struct Entry {
    name: &'static str,
    /// None for the x32 range.
    nr: Option<i64>,
    check: Check,
    why: &'static str,
}

const fn always(name: &'static str, nr: i64, why: &'static str) -> Entry {
    Entry {
        name,
        nr: Some(nr),
        check: Check::Always,
        why,
    }
}

const fn checked(name: &'static str, nr: i64, check: Check, why: &'static str) -> Entry {
    Entry {
        name,
        nr: Some(nr),
        check,
        why,
    }
}

const NS: &str = "namespaces: a user namespace hands out capabilities over new namespaces and exposes kernel code otherwise reachable only by root";
const MOUNT: &str = "changes the mount view the sandbox built";
const MOUNT_API: &str = "new mount API: changes the mount view the sandbox built";
const KEYS: &str = "the kernel key store: the sandbox gave the action its own session keyring; nothing in a backup needs keys";
const MODULES: &str = "loads or unloads kernel code";
const QUOTA: &str = "disk quota administration";

/// Every refusal, in one table: [`compile`] builds the filter from it and [`denied`] lists it.
const TABLE: &[Entry] = &[
    #[cfg(target_arch = "x86_64")]
    Entry {
        name: "x32 system calls (nr | 0x40000000)",
        nr: None,
        check: Check::X32,
        why: "ENOSYS: the x32 ABI reaches the same calls under other numbers and would bypass this list",
    },
    checked("clone3", libc::SYS_clone3, Check::Enosys, "ENOSYS: its flags are in memory, which the filter cannot read; glibc falls back to clone, whose flags it checks"),
    checked("clone(CLONE_NEW*)", libc::SYS_clone, Check::CloneNamespaces, "creates namespaces (user, mount, pid, net, ipc, uts, cgroup, time); plain fork and thread clones pass"),
    always("unshare", libc::SYS_unshare, NS),
    always("setns", libc::SYS_setns, "joins another namespace"),
    always("mount", libc::SYS_mount, MOUNT),
    always("umount2", libc::SYS_umount2, "uncovers what the sandbox's mounts hide"),
    always("pivot_root", libc::SYS_pivot_root, MOUNT),
    always("chroot", libc::SYS_chroot, "a changed root is the first step of the classic chroot escapes, and confuses path-based rules"),
    always("move_mount", libc::SYS_move_mount, MOUNT_API),
    always("open_tree", libc::SYS_open_tree, MOUNT_API),
    always("open_tree_attr", SYS_OPEN_TREE_ATTR, MOUNT_API),
    always("fsopen", libc::SYS_fsopen, MOUNT_API),
    always("fsconfig", libc::SYS_fsconfig, MOUNT_API),
    always("fsmount", libc::SYS_fsmount, MOUNT_API),
    always("fspick", libc::SYS_fspick, MOUNT_API),
    always("mount_setattr", libc::SYS_mount_setattr, MOUNT_API),
    always("keyctl", libc::SYS_keyctl, KEYS),
    always("add_key", libc::SYS_add_key, KEYS),
    always("request_key", libc::SYS_request_key, KEYS),
    always("bpf", libc::SYS_bpf, "eBPF: a large kernel surface (verifier, maps, programs)"),
    always("perf_event_open", libc::SYS_perf_event_open, "performance counters: kernel surface and side channels"),
    always("userfaultfd", libc::SYS_userfaultfd, "pauses the kernel in a page fault, a staple of kernel exploits"),
    always("io_uring_setup", libc::SYS_io_uring_setup, "io_uring: a large kernel surface whose operations bypass this filter"),
    always("io_uring_enter", libc::SYS_io_uring_enter, "io_uring: a large kernel surface whose operations bypass this filter"),
    always("io_uring_register", libc::SYS_io_uring_register, "io_uring: a large kernel surface whose operations bypass this filter"),
    always("ptrace", libc::SYS_ptrace, "controls and reads other processes"),
    always("process_vm_readv", libc::SYS_process_vm_readv, "reads another process's memory"),
    always("process_vm_writev", libc::SYS_process_vm_writev, "writes another process's memory"),
    always("kcmp", libc::SYS_kcmp, "compares kernel objects across processes (an address-layout oracle)"),
    always("pidfd_getfd", libc::SYS_pidfd_getfd, "takes a descriptor out of another process"),
    always("kexec_load", libc::SYS_kexec_load, "replaces the running kernel"),
    always("kexec_file_load", libc::SYS_kexec_file_load, "replaces the running kernel"),
    always("init_module", libc::SYS_init_module, MODULES),
    always("finit_module", libc::SYS_finit_module, MODULES),
    always("delete_module", libc::SYS_delete_module, MODULES),
    always("reboot", libc::SYS_reboot, "reboots the VM"),
    always("swapon", libc::SYS_swapon, "swap administration"),
    always("swapoff", libc::SYS_swapoff, "swap administration"),
    always("acct", libc::SYS_acct, "process accounting administration"),
    always("open_by_handle_at", libc::SYS_open_by_handle_at, "opens files by handle, around the mount view (the shocker escape)"),
    #[cfg(target_arch = "x86_64")]
    always("iopl", libc::SYS_iopl, "raw I/O port access"),
    #[cfg(target_arch = "x86_64")]
    always("ioperm", libc::SYS_ioperm, "raw I/O port access"),
    always("syslog", libc::SYS_syslog, "reads the kernel log (addresses, other tenants' messages)"),
    always("quotactl", libc::SYS_quotactl, QUOTA),
    always("quotactl_fd", libc::SYS_quotactl_fd, QUOTA),
    always("lookup_dcookie", libc::SYS_lookup_dcookie, "profiling interface (removed in Linux 6.10; listed for older kernels)"),
    checked("personality", libc::SYS_personality, Check::Personality, "execution domains other than PER_LINUX (e.g. ADDR_NO_RANDOMIZE turns off ASLR); the query 0xffffffff passes"),
    checked("socket", libc::SYS_socket, Check::Socket, "only the policy's families: AF_UNIX; AF_INET/AF_INET6 SOCK_STREAM with protocol 0 or TCP; SOCK_DGRAM with protocol 0 or UDP. No netlink, packet, raw, vsock, MPTCP or SCTP"),
    checked("socketpair", libc::SYS_socketpair, Check::Socketpair, "AF_UNIX only, and only when the policy allows AF_UNIX"),
    checked("sendto(MSG_FASTOPEN)", libc::SYS_sendto, Check::FastOpen { arg: 3 }, "TCP Fast Open connects from inside the send, not through connect"),
    checked("sendmsg(MSG_FASTOPEN)", libc::SYS_sendmsg, Check::FastOpen { arg: 2 }, "TCP Fast Open connects from inside the send, not through connect"),
    checked("sendmmsg(MSG_FASTOPEN)", libc::SYS_sendmmsg, Check::FastOpen { arg: 3 }, "TCP Fast Open connects from inside the send, not through connect"),
    checked("setsockopt(TCP_FASTOPEN_CONNECT)", libc::SYS_setsockopt, Check::TcpOption { optname: libc::TCP_FASTOPEN_CONNECT }, "makes a later connect and write a TCP Fast Open"),
    checked("setsockopt(TCP_REPAIR)", libc::SYS_setsockopt, Check::TcpOption { optname: libc::TCP_REPAIR }, "puts a socket into a connected state without a handshake"),
];

static DENIED: [(&str, &str); TABLE.len()] = {
    let mut out = [("", ""); TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        out[i] = (TABLE[i].name, TABLE[i].why);
        i += 1;
    }
    out
};

/// Human-readable list of what the filter denies, for the review and docs: (name, why).
pub fn denied() -> &'static [(&'static str, &'static str)] {
    &DENIED
}

/// Compiles the filter for `policy`. Allocates; call it before fork.
pub fn compile(policy: &Policy) -> Result<Program, SeccompError> {
    let arch = target_arch()?;
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = Default::default();
    for entry in TABLE {
        let (Some(nr), Some(conditions)) = (entry.nr, rules_for(entry.check, policy)?) else {
            continue;
        };
        rules.entry(nr).or_default().extend(conditions);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let body: BpfProgram = filter.try_into()?;
    let mut program = prefix();
    program.extend(body);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong(program.len()));
    }
    Ok(Program(program))
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::UnsupportedArch(std::env::consts::ARCH))
    }
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The hand-written start of the program, before seccompiler's (which begins with its
/// architecture check and reloads what it needs):
///
/// ```text
///     ld  [nr]
///     jge #0x40000000, enosys      (x86_64 only: every x32 number)
///     jeq #SYS_clone3, enosys      (one per ENOSYS entry)
///     ja  always
/// enosys:
///     ret #SECCOMP_RET_ERRNO|ENOSYS
/// always:
///     ld  [arch]
///     jeq #NATIVE, 0, body         (another ABI: seccompiler's check kills it)
///     ld  [nr]
///     (a binary search over the calls refused whatever their arguments: jge to halve,
///      jeq at the leaves to eperm, ja body past them)
/// eperm:
///     ret #SECCOMP_RET_ERRNO|EPERM
/// body:
/// ```
///
/// The unconditional refusals are searched, not compared one after the other (as seccompiler
/// lays out its rules): the kernel checks a new filter against every system call number, once
/// per native and compat ABI, for its allow cache, walking the program each time, and that walk
/// was most of the install's cost (0.2 to 0.26 ms for the linear program).
fn prefix() -> BpfProgram {
    let mut enosys: Vec<(u16, u32)> = Vec::new();
    let mut always: Vec<u32> = Vec::new();
    for entry in TABLE {
        match (entry.check, entry.nr.and_then(|nr| u32::try_from(nr).ok())) {
            #[cfg(target_arch = "x86_64")]
            (Check::X32, _) => enosys.push((BPF_JMP_JGE_K, X32_SYSCALL_BIT)),
            (Check::Enosys, Some(nr)) => enosys.push((BPF_JMP_JEQ_K, nr)),
            (Check::Always, Some(nr)) => always.push(nr),
            _ => {}
        }
    }
    always.sort_unstable();
    always.dedup();
    let mut code = Code::default();
    code.op(BPF_LD_W_ABS, SECCOMP_DATA_NR);
    for (op, k) in enosys {
        code.jump(op, k, Label::Enosys, Label::Next);
    }
    code.ja(Label::Always);
    code.label(Label::Enosys);
    code.op(
        BPF_RET_K,
        libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA),
    );
    code.label(Label::Always);
    code.op(BPF_LD_W_ABS, SECCOMP_DATA_ARCH);
    code.jump(BPF_JMP_JEQ_K, NATIVE_AUDIT_ARCH, Label::Next, Label::Body);
    code.op(BPF_LD_W_ABS, SECCOMP_DATA_NR);
    search(&mut code, &always);
    code.label(Label::Eperm);
    code.op(
        BPF_RET_K,
        libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
    );
    code.label(Label::Body);
    code.finish()
}

/// Jumps to `eperm` when the loaded number is one of `sorted`, else to `body`.
fn search(code: &mut Code, sorted: &[u32]) {
    if sorted.len() <= 4 {
        for &nr in sorted {
            code.jump(BPF_JMP_JEQ_K, nr, Label::Eperm, Label::Next);
        }
        code.ja(Label::Body);
        return;
    }
    let (low, high) = sorted.split_at(sorted.len() / 2);
    let upper = code.new_label();
    code.jump(BPF_JMP_JGE_K, high[0], upper, Label::Next);
    search(code, low);
    code.label(upper);
    search(code, high);
}

/// A jump target in [`Code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// The next instruction.
    Next,
    Enosys,
    Always,
    Eperm,
    Body,
    /// A point inside the search.
    At(usize),
}

/// Classic BPF with forward jumps to labels, resolved by [`Code::finish`].
#[derive(Default)]
struct Code {
    ins: Vec<(sock_filter, Label, Label)>,
    /// Where each label was placed.
    placed: Vec<(Label, usize)>,
    labels: usize,
}

impl Code {
    fn op(&mut self, code: u16, k: u32) {
        self.ins.push((stmt(code, k), Label::Next, Label::Next));
    }

    fn jump(&mut self, code: u16, k: u32, jt: Label, jf: Label) {
        self.ins.push((jump(code, k, 0, 0), jt, jf));
    }

    /// `ja` (its offset in `k`).
    fn ja(&mut self, to: Label) {
        self.ins.push((stmt(BPF_JMP_JA, 0), to, Label::Next));
    }

    fn new_label(&mut self) -> Label {
        self.labels += 1;
        Label::At(self.labels)
    }

    fn label(&mut self, label: Label) {
        self.placed.push((label, self.ins.len()));
    }

    fn finish(self) -> BpfProgram {
        let at = |label: Label| -> usize {
            self.placed
                .iter()
                .find(|(l, _)| *l == label)
                .map(|(_, i)| *i)
                .expect("every label is placed")
        };
        let offset = |from: usize, label: Label| -> usize {
            match label {
                Label::Next => 0,
                l => {
                    let to = at(l);
                    assert!(to > from, "BPF jumps go forward only");
                    to - from - 1
                }
            }
        };
        let short = |n: usize| u8::try_from(n).expect("a conditional jump within 255");
        self.ins
            .iter()
            .enumerate()
            .map(|(i, (ins, jt, jf))| {
                let mut ins = ins.clone();
                if ins.code == BPF_JMP_JA {
                    ins.k = u32::try_from(offset(i, *jt)).expect("a jump within the program");
                } else if ins.code & 0x07 == libc::BPF_JMP as u16 {
                    ins.jt = short(offset(i, *jt));
                    ins.jf = short(offset(i, *jf));
                }
                ins
            })
            .collect()
    }
}

/// Every argument checked here is an `int` or `unsigned int` to the kernel, which ignores the
/// upper half of the register: compare the lower 32 bits (Dword) only, so that setting upper
/// bits cannot dodge a rule.
fn cond(arg: u8, op: SeccompCmpOp, value: u32) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        u64::from(value),
    )?)
}

fn eq(arg: u8, value: i32) -> Result<SeccompCondition, SeccompError> {
    cond(arg, SeccompCmpOp::Eq, value as u32)
}

fn ne(arg: u8, value: i32) -> Result<SeccompCondition, SeccompError> {
    cond(arg, SeccompCmpOp::Ne, value as u32)
}

/// `(arg & mask) == value`.
fn masked(arg: u8, mask: i32, value: i32) -> Result<SeccompCondition, SeccompError> {
    cond(
        arg,
        SeccompCmpOp::MaskedEq(u64::from(mask as u32)),
        value as u32,
    )
}

fn rule(
    conditions: Vec<Result<SeccompCondition, SeccompError>>,
) -> Result<SeccompRule, SeccompError> {
    let conditions = conditions.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(SeccompRule::new(conditions)?)
}

/// The rules under which `check` refuses its call: any rule matching refuses it. `Some(vec![])`
/// refuses the call whatever its arguments; `None` leaves it to the prefix.
fn rules_for(check: Check, policy: &Policy) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    let rules = match check {
        Check::Enosys | Check::X32 | Check::Always => return Ok(None),
        Check::CloneNamespaces => NAMESPACE_FLAGS
            .iter()
            .map(|&(_, flag)| rule(vec![masked(0, flag, flag)]))
            .collect::<Result<_, _>>()?,
        Check::Personality => vec![rule(vec![ne(0, 0), ne(0, -1)])?],
        Check::Socket => socket_rules(policy)?,
        Check::Socketpair if policy.unix => vec![rule(vec![ne(0, libc::AF_UNIX)])?],
        Check::Socketpair => Vec::new(),
        Check::FastOpen { arg } => {
            vec![rule(vec![masked(
                arg,
                libc::MSG_FASTOPEN,
                libc::MSG_FASTOPEN,
            )])?]
        }
        Check::TcpOption { optname } => {
            vec![rule(vec![eq(1, libc::IPPROTO_TCP), eq(2, optname)])?]
        }
    };
    Ok(Some(rules))
}

/// `socket(domain, type, protocol)` is refused when any of these match:
///
/// - a domain other than AF_UNIX, AF_INET, AF_INET6;
/// - AF_UNIX without `policy.unix`;
/// - AF_INET/AF_INET6 with a type that is not exactly an allowed one (SOCK_STREAM with
///   `policy.tcp`, SOCK_DGRAM with `policy.udp`), alone or with SOCK_CLOEXEC/SOCK_NONBLOCK;
/// - AF_INET/AF_INET6 SOCK_STREAM with a protocol other than 0 and IPPROTO_TCP (MPTCP, SCTP);
/// - AF_INET/AF_INET6 SOCK_DGRAM with a protocol other than 0 and IPPROTO_UDP.
///
/// Never `Vec::new()`: an empty rule list would refuse every socket, AF_UNIX included.
fn socket_rules(policy: &Policy) -> Result<Vec<SeccompRule>, SeccompError> {
    let mut rules = vec![rule(vec![
        ne(0, libc::AF_UNIX),
        ne(0, libc::AF_INET),
        ne(0, libc::AF_INET6),
    ])?];
    if !policy.unix {
        rules.push(rule(vec![eq(0, libc::AF_UNIX)])?);
    }
    let mut types = Vec::new();
    if policy.tcp {
        types.push(libc::SOCK_STREAM);
    }
    if policy.udp {
        types.push(libc::SOCK_DGRAM);
    }
    for family in [libc::AF_INET, libc::AF_INET6] {
        let mut other_type = vec![eq(0, family)];
        for &ty in &types {
            for flags in [
                0,
                libc::SOCK_CLOEXEC,
                libc::SOCK_NONBLOCK,
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            ] {
                other_type.push(ne(1, ty | flags));
            }
        }
        rules.push(rule(other_type)?);
        // Past the rule above, the type is one of the allowed ones plus flags: its low four
        // bits (SOCK_TYPE_MASK) tell which.
        if policy.tcp {
            rules.push(rule(vec![
                eq(0, family),
                masked(1, 0xf, libc::SOCK_STREAM),
                ne(2, 0),
                ne(2, libc::IPPROTO_TCP),
            ])?);
        }
        if policy.udp {
            rules.push(rule(vec![
                eq(0, family),
                masked(1, 0xf, libc::SOCK_DGRAM),
                ne(2, 0),
                ne(2, libc::IPPROTO_UDP),
            ])?);
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    const NATIVE_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const NATIVE_ARCH: u32 = 0xC000_00B7;
    const I386_ARCH: u32 = 0x4000_0003;

    #[derive(Debug, PartialEq, Eq)]
    enum Verdict {
        Allow,
        Errno(i32),
        Kill,
    }

    /// A classic-BPF interpreter for the instructions the filter uses, with the kernel's
    /// semantics, so the filter's decisions are tested without a kernel.
    fn run(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> Verdict {
        let word = |offset: u32| -> u32 {
            match offset {
                0 => nr,
                4 => arch,
                8 | 12 => 0,
                16..=63 => {
                    let arg = args[((offset - 16) / 8) as usize];
                    if (offset - 16) % 8 == 4 {
                        (arg >> 32) as u32
                    } else {
                        arg as u32
                    }
                }
                _ => panic!("load from offset {offset} outside seccomp_data"),
            }
        };
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let ins = &program[pc];
            pc += 1;
            let branch = |taken: bool| usize::from(if taken { ins.jt } else { ins.jf });
            match ins.code {
                0x20 => a = word(ins.k),
                0x54 => a &= ins.k,
                0x05 => pc += ins.k as usize,
                0x15 => pc += branch(a == ins.k),
                0x25 => pc += branch(a > ins.k),
                0x35 => pc += branch(a >= ins.k),
                0x45 => pc += branch(a & ins.k != 0),
                0x06 => {
                    return match ins.k & libc::SECCOMP_RET_ACTION_FULL {
                        libc::SECCOMP_RET_ALLOW => Verdict::Allow,
                        libc::SECCOMP_RET_ERRNO => {
                            Verdict::Errno((ins.k & libc::SECCOMP_RET_DATA) as i32)
                        }
                        libc::SECCOMP_RET_KILL_PROCESS => Verdict::Kill,
                        other => panic!("unexpected action {other:#x}"),
                    }
                }
                code => panic!("opcode {code:#x} not handled by the test interpreter"),
            }
        }
    }

    fn verdict(policy: Policy, nr: i64, args: [u64; 6]) -> Verdict {
        let program = compile(&policy).expect("compiles");
        run(program.instructions(), NATIVE_ARCH, nr as u32, args)
    }

    fn all_policies() -> Vec<Policy> {
        let mut out = Vec::new();
        for bits in 0..8u8 {
            out.push(Policy {
                unix: bits & 1 != 0,
                tcp: bits & 2 != 0,
                udp: bits & 4 != 0,
            });
        }
        out
    }

    fn args(a: &[i64]) -> [u64; 6] {
        let mut out = [0u64; 6];
        for (slot, v) in out.iter_mut().zip(a) {
            *slot = *v as u64;
        }
        out
    }

    const EPERM: Verdict = Verdict::Errno(libc::EPERM);
    const ENOSYS: Verdict = Verdict::Errno(libc::ENOSYS);

    #[test]
    fn every_policy_compiles_within_the_kernel_limit() {
        for policy in all_policies() {
            let program = compile(&policy).expect("compiles");
            assert!(!program.is_empty());
            assert!(
                program.len() < MAX_INSTRUCTIONS,
                "{policy:?}: {}",
                program.len()
            );
        }
        let strict = compile(&Policy::default()).expect("compiles");
        let open = compile(&Policy {
            unix: true,
            tcp: true,
            udp: true,
        })
        .expect("compiles");
        assert_ne!(strict.instructions(), open.instructions());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_x32_check_comes_first() {
        let program = compile(&Policy::default()).expect("compiles");
        let ins = program.instructions();
        assert_eq!(
            ins[0],
            stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
            "loads nr first"
        );
        assert_eq!(ins[1].code, BPF_JMP_JGE_K);
        assert_eq!(ins[1].k, 0x4000_0000);
        let target = &ins[2 + usize::from(ins[1].jt)];
        assert_eq!(
            target,
            &stmt(BPF_RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32)
        );
        // ... and before seccompiler's architecture check.
        let arch_check = ins.iter().position(|i| i.code == BPF_LD_W_ABS && i.k == 4);
        assert!(arch_check.expect("has an arch check") > 1);
        for nr in [libc::SYS_getpid, libc::SYS_unshare, libc::SYS_mount, 0, 511] {
            let x32 = 0x4000_0000 | nr as u32;
            assert_eq!(run(ins, NATIVE_ARCH, x32, [0; 6]), ENOSYS, "x32 {nr}");
        }
        assert_eq!(run(ins, NATIVE_ARCH, u32::MAX, [0; 6]), ENOSYS);
    }

    #[test]
    fn denied_is_listed_with_unique_names() {
        let list = denied();
        assert!(list.len() > 40, "{}", list.len());
        let mut names: Vec<&str> = list.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate names in denied()");
        for (name, why) in list {
            assert!(!name.is_empty() && !why.is_empty(), "{name}: {why}");
        }
        assert!(names.contains(&"unshare") && names.contains(&"socket"));
    }

    #[test]
    fn a_call_is_either_always_refused_or_checked_never_both() {
        for entry in TABLE.iter().filter(|e| e.check == Check::Always) {
            let others = TABLE
                .iter()
                .filter(|e| e.nr == entry.nr && e.check != Check::Always)
                .count();
            assert_eq!(
                others, 0,
                "{} is both unconditional and checked",
                entry.name
            );
        }
    }

    #[test]
    fn every_unconditional_entry_is_refused_with_eperm_whatever_its_arguments() {
        for policy in all_policies() {
            for entry in TABLE.iter().filter(|e| e.check == Check::Always) {
                let nr = entry.nr.expect("has a number");
                assert_eq!(verdict(policy, nr, [0; 6]), EPERM, "{}", entry.name);
                assert_eq!(verdict(policy, nr, [u64::MAX; 6]), EPERM, "{}", entry.name);
            }
        }
    }

    #[test]
    fn the_briefs_list_is_refused_with_eperm() {
        // The required refusals, written out apart from TABLE.
        let mut required = vec![
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_fsopen,
            libc::SYS_fsconfig,
            libc::SYS_fsmount,
            libc::SYS_fspick,
            libc::SYS_mount_setattr,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_kcmp,
            libc::SYS_pidfd_getfd,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_swapoff,
            libc::SYS_acct,
            libc::SYS_open_by_handle_at,
            libc::SYS_syslog,
            libc::SYS_quotactl,
            libc::SYS_lookup_dcookie,
        ];
        #[cfg(target_arch = "x86_64")]
        required.extend([libc::SYS_iopl, libc::SYS_ioperm]);
        for p in all_policies() {
            for &nr in &required {
                assert_eq!(verdict(p, nr, [0; 6]), EPERM, "{p:?} {nr}");
            }
        }
    }

    #[test]
    fn ordinary_calls_pass_and_foreign_abis_are_stopped() {
        let p = Policy::default();
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_connect,
            libc::SYS_seccomp,
            libc::SYS_landlock_restrict_self,
        ] {
            assert_eq!(verdict(p, nr, [7; 6]), Verdict::Allow, "{nr}");
        }
        assert_eq!(verdict(p, libc::SYS_clone3, [0; 6]), ENOSYS);
        let program = compile(&p).expect("compiles");
        assert_eq!(
            run(program.instructions(), I386_ARCH, 20, [0; 6]),
            Verdict::Kill
        );
    }

    #[test]
    fn clone_may_fork_and_start_threads_but_not_make_namespaces() {
        let p = Policy::default();
        let fork = i64::from(libc::SIGCHLD);
        let thread = i64::from(
            libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD
                | libc::CLONE_SYSVSEM
                | libc::CLONE_SETTLS
                | libc::CLONE_PARENT_SETTID
                | libc::CLONE_CHILD_CLEARTID,
        );
        let vfork = i64::from(libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD);
        for flags in [0, fork, thread, vfork] {
            assert_eq!(verdict(p, libc::SYS_clone, args(&[flags])), Verdict::Allow);
        }
        // Written out again rather than taken from NAMESPACE_FLAGS, so a wrong table fails here.
        for (name, flag) in [
            ("user", libc::CLONE_NEWUSER),
            ("mount", libc::CLONE_NEWNS),
            ("pid", libc::CLONE_NEWPID),
            ("net", libc::CLONE_NEWNET),
            ("ipc", libc::CLONE_NEWIPC),
            ("uts", libc::CLONE_NEWUTS),
            ("cgroup", libc::CLONE_NEWCGROUP),
            ("time", libc::CLONE_NEWTIME),
        ] {
            let flags = i64::from(flag) | fork;
            assert_eq!(verdict(p, libc::SYS_clone, args(&[flags])), EPERM, "{name}");
            // The kernel reads the lower 32 bits: bits above cannot hide the flag.
            let high = flags | (1 << 40);
            assert_eq!(verdict(p, libc::SYS_clone, args(&[high])), EPERM, "{name}");
        }
        for flags in [libc::CLONE_NEWUSER, libc::CLONE_NEWNET] {
            let flags = i64::from(flags);
            assert_eq!(verdict(p, libc::SYS_unshare, args(&[flags])), EPERM);
        }
    }

    #[test]
    fn every_number_gets_its_tables_answer_through_the_search() {
        // Exhaustive over the numbers a kernel has (and some above): the search in the prefix
        // refuses exactly the unconditional entries; the checked calls, given arguments that
        // no rule refuses, pass; every other call passes; another ABI is killed.
        let harmless = |nr: i64| match nr {
            n if n == libc::SYS_socket => args(&[libc::AF_UNIX.into(), 1]),
            n if n == libc::SYS_socketpair => args(&[libc::AF_UNIX.into(), 1]),
            n if n == libc::SYS_personality => args(&[0]),
            n if n == libc::SYS_setsockopt => args(&[3, 1, 1]),
            _ => [0; 6],
        };
        let p = Policy {
            unix: true,
            ..Policy::default()
        };
        let program = compile(&p).expect("compiles");
        for nr in 0..1024i64 {
            let listed: Vec<&Entry> = TABLE.iter().filter(|e| e.nr == Some(nr)).collect();
            let expected = match listed.first().map(|e| e.check) {
                Some(Check::Always) => EPERM,
                Some(Check::Enosys) => ENOSYS,
                _ => Verdict::Allow,
            };
            let got = run(program.instructions(), NATIVE_ARCH, nr as u32, harmless(nr));
            assert_eq!(got, expected, "{nr} {listed:?}");
            let foreign = run(program.instructions(), I386_ARCH, nr as u32, [0; 6]);
            let expected = if expected == ENOSYS {
                ENOSYS
            } else {
                Verdict::Kill
            };
            assert_eq!(foreign, expected, "i386 {nr}");
        }
    }

    #[test]
    fn personality_may_only_be_queried_or_set_to_linux() {
        let p = Policy::default();
        assert_eq!(
            verdict(p, libc::SYS_personality, args(&[0])),
            Verdict::Allow
        );
        let query = args(&[0xffff_ffff]);
        assert_eq!(verdict(p, libc::SYS_personality, query), Verdict::Allow);
        for persona in [8, 0x0040000, 0x0020000, 0x0400000] {
            let call = args(&[persona]);
            assert_eq!(
                verdict(p, libc::SYS_personality, call),
                EPERM,
                "{persona:#x}"
            );
        }
    }

    /// The specification, written apart from the rules: is this socket allowed?
    fn socket_allowed(p: Policy, domain: i32, ty: i32, protocol: i32) -> bool {
        let base = ty & 0xf;
        let flags_ok = ty & !0xf & !(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) == 0;
        match domain {
            libc::AF_UNIX => p.unix,
            libc::AF_INET | libc::AF_INET6 => {
                flags_ok
                    && ((p.tcp
                        && base == libc::SOCK_STREAM
                        && (protocol == 0 || protocol == libc::IPPROTO_TCP))
                        || (p.udp
                            && base == libc::SOCK_DGRAM
                            && (protocol == 0 || protocol == libc::IPPROTO_UDP)))
            }
            _ => false,
        }
    }

    #[test]
    fn sockets_follow_the_policy() {
        let domains = [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
            libc::AF_PACKET,
            libc::AF_VSOCK,
            libc::AF_UNSPEC,
            libc::AF_BLUETOOTH,
        ];
        let types = [
            libc::SOCK_STREAM,
            libc::SOCK_DGRAM,
            libc::SOCK_RAW,
            libc::SOCK_SEQPACKET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::SOCK_STREAM | 0x100,
        ];
        let protocols = [
            0,
            libc::IPPROTO_TCP,
            libc::IPPROTO_UDP,
            libc::IPPROTO_MPTCP,
            libc::IPPROTO_SCTP,
            libc::IPPROTO_RAW,
            libc::IPPROTO_ICMP,
        ];
        let mut checked = 0;
        for p in all_policies() {
            let program = compile(&p).expect("compiles");
            for domain in domains {
                for ty in types {
                    for protocol in protocols {
                        let expected = if socket_allowed(p, domain, ty, protocol) {
                            Verdict::Allow
                        } else {
                            EPERM
                        };
                        let call = args(&[domain.into(), ty.into(), protocol.into()]);
                        let nr = libc::SYS_socket as u32;
                        let got = run(program.instructions(), NATIVE_ARCH, nr, call);
                        assert_eq!(got, expected, "{p:?} socket({domain}, {ty:#x}, {protocol})");
                        // Upper bits of the registers are ignored by the kernel and the filter.
                        let high = call.map(|v| v | (1 << 35));
                        let got = run(program.instructions(), NATIVE_ARCH, nr, high);
                        assert_eq!(
                            got, expected,
                            "{p:?} socket({domain}, {ty:#x}, {protocol}) high"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 8 * 8 * 7 * 7);
    }

    #[test]
    fn socketpair_is_unix_only() {
        for p in all_policies() {
            let unix = args(&[libc::AF_UNIX.into(), libc::SOCK_STREAM.into()]);
            let expected = if p.unix { Verdict::Allow } else { EPERM };
            assert_eq!(verdict(p, libc::SYS_socketpair, unix), expected, "{p:?}");
            let inet = args(&[libc::AF_INET.into(), libc::SOCK_STREAM.into()]);
            assert_eq!(verdict(p, libc::SYS_socketpair, inet), EPERM, "{p:?}");
        }
    }

    #[test]
    fn tcp_fast_open_and_repair_are_refused_but_other_sends_and_options_pass() {
        let p = Policy {
            unix: true,
            tcp: true,
            udp: true,
        };
        let fo = i64::from(libc::MSG_FASTOPEN);
        let nosignal = i64::from(libc::MSG_NOSIGNAL);
        for (nr, at) in [
            (libc::SYS_sendto, 3),
            (libc::SYS_sendmsg, 2),
            (libc::SYS_sendmmsg, 3),
        ] {
            let mut call = [3u64, 0, 1, 0, 0, 0];
            call[at] = nosignal as u64;
            assert_eq!(verdict(p, nr, call), Verdict::Allow, "{nr}");
            call[at] = (fo | nosignal) as u64;
            assert_eq!(verdict(p, nr, call), EPERM, "{nr}");
        }
        let tcp = i64::from(libc::IPPROTO_TCP);
        for (level, opt, expected) in [
            (tcp, libc::TCP_FASTOPEN_CONNECT, EPERM),
            (tcp, libc::TCP_REPAIR, EPERM),
            (tcp, libc::TCP_NODELAY, Verdict::Allow),
            (tcp, libc::TCP_FASTOPEN, Verdict::Allow),
            (
                libc::SOL_SOCKET.into(),
                libc::TCP_FASTOPEN_CONNECT,
                Verdict::Allow,
            ),
        ] {
            let call = args(&[3, level, opt.into(), 0, 4]);
            assert_eq!(
                verdict(p, libc::SYS_setsockopt, call),
                expected,
                "{level} {opt}"
            );
        }
    }
}
