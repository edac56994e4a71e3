//! Landlock: filesystem, TCP ports and scopes, pinned to the profile's ABI. The ruleset is
//! built and applied in the sandboxed child, after the mounts, so paths resolve in the final
//! layout. The returned status is reported exactly; the caller decides what `strict` means.

use std::io;

use landlock::{
    Access, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};

use super::syscall::LandlockOutcome;
use crate::plan::{abi_enum, LandlockPlan};

fn ll_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("landlock: {e}"))
}

pub fn restrict(plan: &LandlockPlan) -> io::Result<LandlockOutcome> {
    let abi = abi_enum(plan.abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(plan.handled_fs)
        .map_err(ll_err)?;
    if plan.handle_tcp {
        let mut net = AccessNet::BindTcp | AccessNet::ConnectTcp;
        if plan.handle_udp {
            net = AccessNet::from_all(abi);
        }
        ruleset = ruleset.handle_access(net).map_err(ll_err)?;
    }
    let mut scopes = landlock::BitFlags::<Scope>::empty();
    if plan.scope_abstract_unix_socket {
        scopes |= Scope::AbstractUnixSocket;
    }
    if plan.scope_signal {
        scopes |= Scope::Signal;
    }
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes).map_err(ll_err)?;
    }
    // no_new_privs is its own step, later, in the order the design fixes.
    let mut created = ruleset.create().map_err(ll_err)?.no_new_privs(false);
    for rule in &plan.rules {
        let fd = PathFd::new(&rule.path).map_err(|e| {
            io::Error::other(format!(
                "landlock: cannot open `{}`: {e}",
                rule.path.display()
            ))
        })?;
        created = created
            .add_rule(PathBeneath::new(fd, rule.access))
            .map_err(ll_err)?;
    }
    // Below ABI 4 (or capped there) TCP is not handled: no port rule to add.
    let (connect, bind): (&[u16], &[u16]) = if plan.handle_tcp {
        (&plan.connect_tcp, &plan.bind_tcp)
    } else {
        (&[], &[])
    };
    for port in connect {
        created = created
            .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
            .map_err(ll_err)?;
    }
    for port in bind {
        created = created
            .add_rule(NetPort::new(*port, AccessNet::BindTcp))
            .map_err(ll_err)?;
    }
    let status = created.restrict_self().map_err(ll_err)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockOutcome::FullyEnforced,
        RulesetStatus::PartiallyEnforced => LandlockOutcome::PartiallyEnforced,
        _ => LandlockOutcome::NotEnforced,
    })
}
