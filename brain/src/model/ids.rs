//! Typed ids: a VM id cannot be passed where a disc id is expected.

use serde::{Deserialize, Serialize};

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

ids! {
    AccountId,
    GroupId,
    VmId,
    DiscId,
    NicId,
    UserId,
    PrivilegeId,
    ApiKeyId,
    IpRangeId,
    VlanId,
    OperationId,
    AffinityGroupId,
}
