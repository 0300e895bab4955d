//! TLS for the replication connection: a site CA derived from the site key, and a
//! server certificate for each node issued by it at `mp_replication init`.
//!
//! Both nodes already hold the site key (0600), so each derives the same CA key with
//! HKDF-SHA-256 (RFC 5869, its own label: see [`super::derive`]) and `init` on one node needs nothing from
//! the other: the seed's procedure runs `init` on each node by itself. The CA key is
//! never written anywhere; only its certificate is, as the standby's `sslrootcert`.
//! The CA's name carries a fingerprint of its public key, so a certificate of another
//! site's CA is refused as coming from an unknown issuer. A node's server key is
//! fresh at every `init` and names the node address (an IP SAN), which the peer
//! checks with `sslmode=verify-full`. The keys are ECDSA P-256, which PostgreSQL's
//! OpenSSL, libpq and rustls all accept.
//!
//! The certificates do not expire (until 9999-12-31) and carry a fixed start
//! (2025-01-01), so neither a wrong clock on one node nor a forgotten renewal stops
//! replication; to replace them, replace the site key and run `init` on both nodes,
//! or run `init` again for a new server key.

use std::net::IpAddr;

use p256::pkcs8::EncodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SerialNumber,
    date_time_ymd,
};
use sha2::{Digest, Sha256};

use super::derive::{Label, derive};
use crate::error::{Error, Result};
use crate::util::random_u64;

/// The PEM texts `init` writes for one node.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    /// The site CA's certificate (the standby's `sslrootcert`).
    pub(crate) ca: String,
    /// This node's server certificate (`ssl_cert_file`).
    pub(crate) cert: String,
    /// Its private key, PKCS#8 (`ssl_key_file`, mode 0600).
    pub(crate) key: String,
}

fn tls_error(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

/// The site CA's key pair, derived from the site key.
fn ca_key(site_key: &[u8]) -> Result<KeyPair> {
    // About one in 2^32 outputs is not a valid P-256 scalar; the next counter is.
    for counter in 0..=u8::MAX {
        let bytes = derive(site_key, Label::SiteCaKey(counter))?;
        let Ok(secret) = p256::SecretKey::from_slice(&bytes) else {
            continue;
        };
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| Error::Tls(format!("encoding the site CA's key: {e}")))?;
        return KeyPair::try_from(der.as_bytes()).map_err(tls_error("loading the site CA's key"));
    }
    Err(Error::Tls(
        "the site key yields no P-256 key for the site CA".into(),
    ))
}

/// The site CA's certificate parameters: the same on both nodes (its name comes from
/// its public key).
fn ca_params(key: &KeyPair) -> CertificateParams {
    let fingerprint = hex::encode(Sha256::digest(key.der_bytes()));
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "tandem");
    name.push(
        DnType::CommonName,
        format!(
            "tandem replication site CA {}",
            fingerprint.get(..16).unwrap_or_default()
        ),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&[1]));
    params.not_before = date_time_ymd(2025, 1, 1);
    params.not_after = date_time_ymd(9999, 12, 31);
    params
}

/// The site CA's certificate (PEM), derived from the site key: what a node trusts as
/// the root of its peer's certificate. Both nodes compute the same CA (its key and
/// name); its signature bytes differ from run to run.
pub fn site_ca_pem(site_key: &tandem_peer::SiteKey) -> Result<String> {
    let key = ca_key(site_key.as_bytes())?;
    let cert = ca_params(&key)
        .self_signed(&key)
        .map_err(tls_error("signing the site CA's certificate"))?;
    Ok(cert.pem())
}

/// Issues node `node`'s server certificate for its node address `address` with a fresh
/// key, signed by the site CA derived from `site_key`.
pub(crate) fn issue(site_key: &[u8], node: u8, address: IpAddr) -> Result<Issued> {
    let ca_key = ca_key(site_key)?;
    let ca_params = ca_params(&ca_key);
    let ca = ca_params
        .self_signed(&ca_key)
        .map_err(tls_error("signing the site CA's certificate"))?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(tls_error("making the server key"))?;
    let mut params = CertificateParams::new(vec![address.to_string()])
        .map_err(tls_error("naming the node address"))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "tandem");
    name.push(DnType::CommonName, format!("tandem node {node} {address}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut serial = Vec::with_capacity(16);
    serial.extend_from_slice(&random_u64()?.to_be_bytes());
    serial.extend_from_slice(&random_u64()?.to_be_bytes());
    // A positive INTEGER: the top bit clear.
    if let Some(first) = serial.first_mut() {
        *first &= 0x7f;
    }
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = date_time_ymd(2025, 1, 1);
    params.not_after = date_time_ymd(9999, 12, 31);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(tls_error("signing the server certificate"))?;
    Ok(Issued {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_key_depends_on_the_site_key_only() {
        let a = ca_key(&[7; 32]).unwrap();
        let b = ca_key(&[7; 32]).unwrap();
        let c = ca_key(&[8; 32]).unwrap();
        assert_eq!(a.der_bytes(), b.der_bytes());
        assert_ne!(a.der_bytes(), c.der_bytes());
        assert_eq!(
            ca_params(&a).distinguished_name,
            ca_params(&b).distinguished_name
        );
        assert_ne!(
            ca_params(&a).distinguished_name,
            ca_params(&c).distinguished_name
        );
    }

    #[test]
    fn a_node_certificate_names_its_address_and_is_signed_by_the_site_ca() {
        let address: IpAddr = "192.0.2.11".parse().unwrap();
        let one = issue(&[7; 32], 1, address).unwrap();
        let two = issue(&[7; 32], 2, "2001:db8::12".parse().unwrap()).unwrap();
        assert!(one.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(one.key.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(one.key, two.key, "every init makes a fresh server key");
        verify(&one.ca, &one.cert, "192.0.2.11").unwrap();
        // The CA one node writes verifies the other node's certificate.
        verify(&one.ca, &two.cert, "2001:db8::12").unwrap();
        assert!(verify(&one.ca, &one.cert, "192.0.2.12").is_err());
        let other = issue(&[8; 32], 1, address).unwrap();
        assert!(verify(&other.ca, &one.cert, "192.0.2.11").is_err());
    }

    /// Verifies `cert` for `host` against `ca` as rustls (and so sqlx) does.
    fn verify(ca: &str, cert: &str, host: &str) -> std::result::Result<(), String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        // rustls with the `ring` feature only: its default provider is ring's.
        let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .map_err(|e| e.to_string())?;
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
