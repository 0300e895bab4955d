//! The replication role's password: derived from the site key (both nodes hold it, so
//! neither stores nor sends a password; see [`super::derive`]), and given to
//! PostgreSQL only as a SCRAM-SHA-256 verifier computed here (RFC 5802, RFC 7677), so
//! the password never appears in a statement or a server log. HMAC, PBKDF2 and base64
//! come from the RustCrypto `hmac` and `pbkdf2` crates and the `base64` crate.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::derive::{Label, derive};
use crate::error::{Error, Result};

/// PostgreSQL's default iteration count.
const ITERATIONS: u32 = 4096;

/// The replication password of a site: 64 hex digits derived from the site key.
pub(crate) fn password(key: &[u8]) -> Result<String> {
    Ok(hex::encode(derive(key, Label::ReplicationPassword)?))
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as `pg_authid` keeps it.
pub(crate) fn verifier(password: &str, salt: &[u8]) -> Result<String> {
    let salted = salted_password(password, salt, ITERATIONS);
    let client_key = hmac(&salted, b"Client Key")?;
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key")?;
    Ok(format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    ))
}

/// SCRAM's `SaltedPassword`: PBKDF2-HMAC-SHA-256 with one 32-byte block. (PostgreSQL
/// applies SASLprep first; the derived password is ASCII hex, which it leaves as is.)
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations)
}

/// HMAC-SHA-256 of `message` under `key`.
fn hmac(key: &[u8], message: &[u8]) -> Result<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .map_err(|_| Error::State("HMAC-SHA-256 refused its key".into()))?;
    mac.update(message);
    Ok(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn pbkdf2_matches_rfc_7914() {
        // RFC 7914, section 11: PBKDF2-HMAC-SHA256 (P="passwd", S="salt", c=1), first 32 bytes.
        let out = salted_password("passwd", b"salt", 1);
        assert_eq!(
            hex::encode(out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn base64_pads() {
        assert_eq!(BASE64.encode(b"f"), "Zg==");
        assert_eq!(BASE64.encode(b"fo"), "Zm8=");
        assert_eq!(BASE64.encode(b"foo"), "Zm9v");
        assert_eq!(BASE64.encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn verifiers_have_postgresql_s_shape() {
        let v = verifier("pencil", b"0123456789abcdef").unwrap();
        assert!(
            v.starts_with("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"),
            "{v}"
        );
        assert_eq!(v.matches(':').count(), 2);
        assert_eq!(password(&[7; 32]).unwrap().len(), 64);
    }

    #[test]
    fn verifier_matches_rfc_7677() {
        // RFC 7677, section 3: user "user", password "pencil", salt
        // W22ZaJ0SNY7soEsUEjb6gQ== and 4096 iterations. The exchange there gives
        // ClientProof and ServerSignature; the verifier's keys are checked against
        // them: ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage) and
        // ServerSignature = HMAC(ServerKey, AuthMessage).
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password("pencil", &salt, 4096);
        let client_key = hmac(&salted, b"Client Key").unwrap();
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
             r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
             c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac(&stored_key, auth_message.as_bytes()).unwrap();
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        assert_eq!(
            BASE64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let verifier = verifier("pencil", &salt).unwrap();
        let server_key = verifier.rsplit(':').next().unwrap();
        let server_key = BASE64.decode(server_key).unwrap();
        let server_signature = hmac(&server_key, auth_message.as_bytes()).unwrap();
        assert_eq!(
            BASE64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let stored = verifier.split('$').nth(2).and_then(|k| k.split(':').next());
        assert_eq!(stored, Some(BASE64.encode(stored_key).as_str()));
    }
}
