//! Typed mesh identities and their `spiffe://fedmesh/...` URI form.

use std::fmt;
use std::str::FromStr;

use crate::{CryptoError, Result};

/// The URI scheme and trust domain every fedmesh identity starts with.
pub const URI_PREFIX: &str = "spiffe://fedmesh/";

/// Maximum length of a tenant or node name.
pub const MAX_NAME_LEN: usize = 63;

fn validate_name(kind: &'static str, value: &str) -> Result<()> {
    let err = |reason| CryptoError::InvalidName {
        kind,
        value: value.to_owned(),
        reason,
    };
    let bytes = value.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(err("must not be empty"));
    };
    if bytes.len() > MAX_NAME_LEN {
        return Err(err("must be at most 63 characters"));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(err("must start with [a-z0-9]"));
    }
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(err("may only contain [a-z0-9._-]"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// Valid: 1 to 63 characters, the first in `[a-z0-9]`, the rest in
        /// `[a-z0-9._-]`.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(String);

        impl $name {
            /// The validated name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = CryptoError;

            fn from_str(s: &str) -> Result<Self> {
                validate_name($kind, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = CryptoError;

            fn try_from(s: String) -> Result<Self> {
                validate_name($kind, &s)?;
                Ok(Self(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A tenant name: one federation, isolated from all others.
    TenantId,
    "tenant id"
);
name_type!(
    /// A node name (also used for coordinator names).
    NodeId,
    "node id"
);

/// Who a certificate (and so a TLS peer or a signer) is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Identity {
    /// An edge node of one tenant.
    Node {
        /// The node's tenant.
        tenant: TenantId,
        /// The node's name within the tenant.
        node: NodeId,
    },
    /// A coordinator.
    Coordinator {
        /// The coordinator's name.
        name: NodeId,
    },
}

impl Identity {
    /// The URI SAN form: `spiffe://fedmesh/tenant/{tenant}/node/{node}` or
    /// `spiffe://fedmesh/coordinator/{name}`.
    pub fn to_uri(&self) -> String {
        format!("{URI_PREFIX}{self}")
    }

    /// Strictly parses exactly the forms produced by [`Identity::to_uri`].
    pub fn from_uri(uri: &str) -> Result<Identity> {
        let bad = |reason: String| CryptoError::InvalidIdentityUri {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| bad(format!("must start with {URI_PREFIX}")))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["tenant", tenant, "node", node] => Ok(Identity::Node {
                tenant: tenant
                    .parse()
                    .map_err(|e: CryptoError| bad(e.to_string()))?,
                node: node.parse().map_err(|e: CryptoError| bad(e.to_string()))?,
            }),
            ["coordinator", name] => Ok(Identity::Coordinator {
                name: name.parse().map_err(|e: CryptoError| bad(e.to_string()))?,
            }),
            _ => Err(bad(
                "expected tenant/{tenant}/node/{node} or coordinator/{name}".into(),
            )),
        }
    }

    /// The tenant, for a node identity.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Identity::Node { tenant, .. } => Some(tenant),
            Identity::Coordinator { .. } => None,
        }
    }

    /// The node name, for a node identity.
    pub fn node(&self) -> Option<&NodeId> {
        match self {
            Identity::Node { node, .. } => Some(node),
            Identity::Coordinator { .. } => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node { tenant, node } => write!(f, "tenant/{tenant}/node/{node}"),
            Identity::Coordinator { name } => write!(f, "coordinator/{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(t: &str, n: &str) -> Identity {
        Identity::Node {
            tenant: t.parse().unwrap(),
            node: n.parse().unwrap(),
        }
    }

    #[test]
    fn uri_round_trip() {
        let id = node("acme", "n1");
        assert_eq!(id.to_uri(), "spiffe://fedmesh/tenant/acme/node/n1");
        assert_eq!(id.to_string(), "tenant/acme/node/n1");
        assert_eq!(Identity::from_uri(&id.to_uri()).unwrap(), id);
        assert_eq!(id.tenant().unwrap().as_str(), "acme");
        assert_eq!(id.node().unwrap().as_ref(), "n1");

        let c = Identity::Coordinator {
            name: "main".parse().unwrap(),
        };
        assert_eq!(c.to_uri(), "spiffe://fedmesh/coordinator/main");
        assert_eq!(c.to_string(), "coordinator/main");
        assert_eq!(Identity::from_uri(&c.to_uri()).unwrap(), c);
        assert_eq!(c.tenant(), None);
        assert_eq!(c.node(), None);
    }

    #[test]
    fn names_validate() {
        for ok in ["a", "0", "acme", "n-1.b_c", &"x".repeat(63)] {
            assert_eq!(ok.parse::<TenantId>().unwrap().as_str(), ok);
            assert_eq!(NodeId::try_from(ok.to_string()).unwrap().to_string(), ok);
        }
        for bad in [
            "",
            "A",
            "aB",
            "-a",
            ".a",
            "_a",
            "a/b",
            "a b",
            "é",
            &"x".repeat(64),
        ] {
            let err = bad.parse::<NodeId>().unwrap_err();
            assert!(
                matches!(err, CryptoError::InvalidName { kind: "node id", ref value, .. } if value == bad),
                "{bad:?} -> {err:?}"
            );
        }
        assert!(matches!(
            "Bad".parse::<TenantId>(),
            Err(CryptoError::InvalidName {
                kind: "tenant id",
                ..
            })
        ));
    }

    #[test]
    fn from_uri_rejects() {
        for bad in [
            "spiffe://fedmesh/tenant/A/node/n",
            "spiffe://fedmesh/tenant/a/node/N",
            "spiffe://fedmesh/tenant//node/n",
            "spiffe://fedmesh/tenant/a/node/",
            "spiffe://fedmesh/tenant/a/node",
            "spiffe://fedmesh/tenant/a/node/n/",
            "spiffe://fedmesh/tenant/a/node/n/extra",
            "spiffe://fedmesh/tenant/a/node/n?x=1",
            "spiffe://fedmesh/tenant/a/node/n#f",
            "spiffe://fedmesh/coordinator/",
            "spiffe://fedmesh/coordinator",
            "spiffe://fedmesh/coordinator/main/x",
            "spiffe://fedmesh/node/n",
            "spiffe://fedmesh/",
            "spiffe://fedmesh",
            "spiffe://other/tenant/a/node/n",
            "SPIFFE://fedmesh/tenant/a/node/n",
            "https://fedmesh/tenant/a/node/n",
            "tenant/a/node/n",
            "",
        ] {
            assert!(
                matches!(
                    Identity::from_uri(bad),
                    Err(CryptoError::InvalidIdentityUri { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    proptest! {
        #[test]
        fn from_uri_never_panics(s in ".*") {
            let _ = Identity::from_uri(&s);
        }

        #[test]
        fn from_uri_never_panics_near_valid(s in "spiffe://fedmesh/(tenant|coordinator|node)/[a-zA-Z0-9._/-]{0,80}") {
            if let Ok(id) = Identity::from_uri(&s) {
                // Anything accepted must be canonical.
                prop_assert_eq!(id.to_uri(), s);
            }
        }

        #[test]
        fn valid_node_ids_round_trip(t in "[a-z0-9][a-z0-9._-]{0,62}", n in "[a-z0-9][a-z0-9._-]{0,62}") {
            let id = Identity::Node { tenant: t.parse().unwrap(), node: n.parse().unwrap() };
            prop_assert_eq!(Identity::from_uri(&id.to_uri()).unwrap(), id);
        }

        #[test]
        fn valid_coordinator_ids_round_trip(n in "[a-z0-9][a-z0-9._-]{0,62}") {
            let id = Identity::Coordinator { name: n.parse().unwrap() };
            prop_assert_eq!(Identity::from_uri(&id.to_uri()).unwrap(), id);
        }
    }
}
