//! Every secret the PostgreSQL backend derives from the site key, in one place.
//!
//! Both nodes hold the site key (`failover keygen`, mode 0600), so each derives the
//! same secrets by itself and neither stores nor sends them. Each derivation is
//! HKDF-SHA-256 (RFC 5869) of the site key, without a salt, with its own label as the
//! `info` string, so that no two derived secrets are related and learning one (the
//! replication password is written to a 0600 password file for libpq) tells nothing
//! about the site key or the others:
//!
//! | label ([`Label`])                                      | what it makes |
//! |--------------------------------------------------------|---------------|
//! | `tandem postgres replication password v2`              | the replication role's password (32 bytes, as 64 hex digits) |
//! | `tandem postgres replication site CA key v1` + counter | the site CA's P-256 key (see [`super::tls`]) |
//!
//! A new label (a new version number) makes a new, unrelated secret. The peer link
//! (`tandem-peer`) uses the site key itself as its Noise pre-shared key, which its
//! own handshake hashes; nothing here derives from it for the link.

use hkdf::Hkdf;
use sha2::Sha256;

use crate::error::{Error, Result};

/// What a derived secret is for: each has its own HKDF label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    /// The replication role's password.
    ReplicationPassword,
    /// The site CA's key, with a counter byte appended (the next counter is tried
    /// when an output is not a valid P-256 scalar).
    SiteCaKey(u8),
}

impl Label {
    /// The HKDF `info` string.
    fn info(self) -> Vec<u8> {
        match self {
            Label::ReplicationPassword => b"tandem postgres replication password v2".to_vec(),
            Label::SiteCaKey(counter) => {
                let mut info = b"tandem postgres replication site CA key v1".to_vec();
                info.push(counter);
                info
            }
        }
    }
}

/// 32 bytes derived from `site_key` for `label`.
pub(crate) fn derive(site_key: &[u8], label: Label) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(None, site_key)
        .expand(&label.info(), &mut out)
        .map_err(|_| Error::State("HKDF-SHA-256 cannot expand 32 bytes".into()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_derives_its_own_secret() {
        let key = [7u8; 32];
        let password = derive(&key, Label::ReplicationPassword).unwrap();
        let ca0 = derive(&key, Label::SiteCaKey(0)).unwrap();
        let ca1 = derive(&key, Label::SiteCaKey(1)).unwrap();
        assert_ne!(password, ca0);
        assert_ne!(ca0, ca1);
        assert_eq!(password, derive(&key, Label::ReplicationPassword).unwrap());
        assert_ne!(
            password,
            derive(&[8u8; 32], Label::ReplicationPassword).unwrap()
        );
    }

    #[test]
    fn derivation_is_hkdf_sha256_with_the_label_as_info() {
        // RFC 5869, test case 3 (no salt, no info) checks the primitive itself.
        let ikm = [0x0bu8; 22];
        let mut okm = [0u8; 42];
        Hkdf::<Sha256>::new(None, &ikm)
            .expand(&[], &mut okm)
            .unwrap();
        assert_eq!(
            hex::encode(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d\
             9d201395faa4b61a96c8"
        );
    }
}
