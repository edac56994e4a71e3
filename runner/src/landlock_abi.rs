//! The Landlock features and the ABI that brought each: the one table the profile's
//! validation, the plan, the decision (`layers`) and the review read. A new ABI's feature is a
//! line here.

/// A Landlock feature and the ABI that brought it: the one table every module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockFeature {
    Filesystem,
    Refer,
    Truncate,
    TcpPorts,
    Scopes,
    DeviceIoctl,
    ResolveUnix,
    Udp,
}

impl LandlockFeature {
    pub fn min_abi(self) -> u8 {
        match self {
            LandlockFeature::Filesystem => 1,
            LandlockFeature::Refer => 2,
            LandlockFeature::Truncate => 3,
            LandlockFeature::TcpPorts => 4,
            LandlockFeature::DeviceIoctl => 5,
            LandlockFeature::Scopes => 6,
            LandlockFeature::ResolveUnix => 9,
            LandlockFeature::Udp => 10,
        }
    }

    pub fn available(self, abi: u8) -> bool {
        abi >= self.min_abi()
    }
}
