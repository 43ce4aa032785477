//! Who is on the other end of a connection: a role and an id, taken from the client
//! certificate's SAN URI `gavel://<role>/<id>` (PRODUCT.md §6), never from a message.

use gavel_engine::BidderId;

/// What a certificate allows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Role {
    /// Places bids and watches.
    Bidder,
    /// An edge device: watches, and bids through its agent.
    Device,
    /// Operates the node: the admin API.
    Admin,
    /// Watches only.
    Watcher,
}

impl Role {
    /// The role's name in a certificate URI and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Bidder => "bidder",
            Role::Device => "device",
            Role::Admin => "admin",
            Role::Watcher => "watcher",
        }
    }

    /// Whether this role may place bids.
    pub fn may_bid(self) -> bool {
        matches!(self, Role::Bidder | Role::Device)
    }
}

impl std::str::FromStr for Role {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Role, IdentityError> {
        match text {
            "bidder" => Ok(Role::Bidder),
            "device" => Ok(Role::Device),
            "admin" => Ok(Role::Admin),
            "watcher" => Ok(Role::Watcher),
            other => Err(IdentityError::UnknownRole(other.to_owned())),
        }
    }
}

/// An authenticated peer.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Identity {
    /// What the certificate allows.
    pub role: Role,
    /// The id within the role; for bidders and devices, the bidder id bids are attributed to.
    pub id: BidderId,
}

/// The URI scheme of identity SANs.
pub const IDENTITY_URI_SCHEME: &str = "gavel://";

impl Identity {
    /// Parses `gavel://<role>/<id>`.
    pub fn from_uri(uri: &str) -> Result<Identity, IdentityError> {
        let rest = uri
            .strip_prefix(IDENTITY_URI_SCHEME)
            .ok_or_else(|| IdentityError::NotAnIdentityUri(uri.to_owned()))?;
        let (role, id) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::NotAnIdentityUri(uri.to_owned()))?;
        let role: Role = role.parse()?;
        let id = BidderId::new(id).map_err(|e| IdentityError::BadId(format!("{id:?}: {e}")))?;
        Ok(Identity { role, id })
    }

    /// The identity as a SAN URI.
    pub fn uri(&self) -> String {
        format!(
            "{IDENTITY_URI_SCHEME}{}/{}",
            self.role.as_str(),
            self.id.as_str()
        )
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.role.as_str(), self.id.as_str())
    }
}

/// Why a certificate names no usable identity.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum IdentityError {
    /// The URI is not `gavel://<role>/<id>`.
    #[error("{0:?} is not an identity URI of the form gavel://<role>/<id>")]
    NotAnIdentityUri(String),
    /// The role is not one of bidder, device, admin, watcher.
    #[error("unknown role {0:?} (expected bidder, device, admin or watcher)")]
    UnknownRole(String),
    /// The id is empty, too long or has characters a bidder id may not have.
    #[error("bad id {0}")]
    BadId(String),
    /// The certificate has no `gavel://` SAN URI.
    #[error("the certificate names no gavel:// identity")]
    Missing,
    /// The certificate has more than one `gavel://` SAN URI.
    #[error("the certificate names more than one gavel:// identity")]
    Ambiguous,
    /// The certificate could not be parsed.
    #[error("unreadable certificate: {0}")]
    BadCertificate(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_identity_uris() {
        let identity = Identity::from_uri("gavel://bidder/acme-7").unwrap();
        assert_eq!(identity.role, Role::Bidder);
        assert_eq!(identity.id.as_str(), "acme-7");
        assert_eq!(identity.uri(), "gavel://bidder/acme-7");
        assert!(identity.role.may_bid());
        assert!(
            !Identity::from_uri("gavel://watcher/w")
                .unwrap()
                .role
                .may_bid()
        );
    }

    #[test]
    fn refuses_malformed_uris() {
        for bad in [
            "https://bidder/x",
            "gavel://bidder",
            "gavel://king/x",
            "gavel://bidder/",
            "gavel://bidder/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad} was accepted");
        }
    }
}
