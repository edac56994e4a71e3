//! `bbr-runner kernel [--json]`

use super::{CommandError, CommandResult};
use crate::cli::KernelArgs;
use crate::kernel::{probe, LandlockState};

pub fn kernel(args: KernelArgs) -> CommandResult {
    let info = probe();
    if args.json {
        let text = serde_json::to_string_pretty(&info)
            .map_err(|e| CommandError::Internal(format!("cannot encode JSON: {e}")))?;
        crate::show!("{text}");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    crate::show!("kernel release:       {}", info.kernel_release);
    match info.landlock {
        LandlockState::Available => match info.landlock_abi_cap {
            Some(cap) => crate::show!(
                "landlock ABI:         {} (the kernel has {}; capped by {}={cap})",
                info.landlock_abi,
                info.landlock_abi_kernel,
                crate::kernel::ABI_MAX_VAR
            ),
            None => crate::show!("landlock ABI:         {}", info.landlock_abi),
        },
        LandlockState::Disabled => crate::show!(
            "landlock ABI:         none (built in, not enabled at boot: add `landlock` to lsm=)"
        ),
        LandlockState::NotBuilt => {
            crate::show!("landlock ABI:         none (not built into this kernel)")
        }
        LandlockState::Filtered => crate::show!(
            "landlock ABI:         none here (this process's seccomp filter answers ENOSYS, as bpm's does; the kernel may have it)"
        ),
    }
    let errata: Vec<String> = (0..32)
        .filter(|b| info.landlock_errata & (1 << b) != 0)
        .map(|b| (b + 1).to_string())
        .collect();
    crate::show!(
        "landlock errata fixed: {}",
        if errata.is_empty() {
            "none reported".into()
        } else {
            errata.join(", ")
        }
    );
    crate::show!("running as root:      {}", yes(info.is_root));
    crate::show!(
        "mount namespaces:     {}",
        yes(info.mount_namespace.unwrap_or(false))
    );
    crate::show!("capability changes:   {}", yes(info.capability_changes));
    match &info.bpm {
        Some(p) => crate::show!("bpm:                  {}", p.display()),
        None => {
            let root = std::path::Path::new(crate::job::DEFAULT_ROOT);
            let places: Vec<String> = crate::kernel::bpm_locations(root)
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            crate::show!("bpm:                  not found ({})", places.join(", "))
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
