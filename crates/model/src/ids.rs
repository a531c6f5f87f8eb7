use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a name; names are compared byte-wise, so iteration order is stable.
            pub fn new(name: impl Into<String>) -> Self {
                Self(name.into())
            }

            /// The name as written in the config.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

id_type!(
    /// A machine that can run units: a physical server, a hypervisor, or a network namespace.
    HostId
);
id_type!(
    /// A duplex pair: two units, one ACT and one SBY.
    PairId
);
id_type!(
    /// One of the two members of a pair: a VM or a supervised process group.
    UnitId
);
