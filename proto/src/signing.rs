//! Signed events: ci-service signs every image-built event with its Ed25519 key, cd-service
//! signs the promotions and replays it publishes with its own, and cd-service applies only what
//! verifies against the public keys it trusts for that kind of event. The signature covers a
//! domain tag, the subject and the exact payload bytes, so neither can be altered or moved to
//! another subject. Keys are PKCS#8 / SPKI PEM, as `openssl genpkey -algorithm ed25519` and
//! `openssl pkey -pubout` write them. Pure: no I/O (the services read the key files).

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use ed25519_dalek::{
    pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey},
    Signature, Signer, SigningKey, Verifier, VerifyingKey,
};
use sha2::{Digest, Sha256};

use crate::headers;

/// What every signature starts with: a signature made for anything else never verifies here.
const DOMAIN: &[u8] = b"conveyor-event-signature-v1\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 private key in PKCS#8 PEM (make one with `openssl genpkey -algorithm ed25519`): {0}")]
    Private(String),
    #[error("not an Ed25519 public key in PEM (`openssl pkey -in KEY -pubout`): {0}")]
    Public(String),
    #[error("no public key found (expected one or more `-----BEGIN PUBLIC KEY-----` blocks)")]
    NoKeys,
}

/// Why a message's signature was not accepted; the text is the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "unsigned event: no {} header (only a signed build of ci-service, or cd-service's own promotion or replay, is applied)",
        headers::SIGNATURE
    )]
    Unsigned,
    #[error("the event is signed by key {key_id}, which is not trusted for {kind}")]
    UnknownKey { key_id: String, kind: &'static str },
    #[error("malformed signature header: {0}")]
    Malformed(String),
    #[error("bad signature by key {key_id}: the payload or subject was altered after signing")]
    Mismatch { key_id: String },
}

/// The id a key is named by in headers and logs: 16 hex digits of the SHA-256 of its raw bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn message(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + subject.len() + 1 + payload.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(subject.as_bytes());
    m.push(0);
    m.extend_from_slice(payload);
    m
}

/// A private signing key. `Debug` never shows it.
#[derive(Clone)]
pub struct EventSigner {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for EventSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventSigner(key {})", self.id)
    }
}

impl EventSigner {
    /// From a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| KeyError::Private(e.to_string()))?;
        Ok(Self::from_key(key))
    }

    /// From the 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self::from_key(SigningKey::from_bytes(&seed))
    }

    fn from_key(key: SigningKey) -> Self {
        let id = key_id(&key.verifying_key());
        Self { key, id }
    }

    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The public half, as a trust set of one key.
    pub fn public(&self) -> TrustedKeys {
        TrustedKeys { keys: vec![(self.id.clone(), self.key.verifying_key())] }
    }

    /// The public half as SPKI PEM (what `openssl pkey -pubout` prints).
    pub fn public_pem(&self) -> String {
        self.key.verifying_key().to_public_key_pem(Default::default()).expect("an Ed25519 public key always encodes")
    }

    /// The two headers to send with `payload` on `subject`: (name, value).
    pub fn headers(&self, subject: &str, payload: &[u8]) -> [(&'static str, String); 2] {
        let signature = self.key.sign(&message(subject, payload));
        [(headers::SIGNATURE, B64.encode(signature.to_bytes())), (headers::KEY_ID, self.id.clone())]
    }
}

/// The public keys trusted for one kind of event (several at once, so a key is rotated by
/// adding the new one, switching the signer, then removing the old one).
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|(id, _)| id)).finish()
    }
}

const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";

impl TrustedKeys {
    /// Every `PUBLIC KEY` block in `text` (a file may hold several; other text is ignored).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let mut keys = Self::default();
        for block in text.split(PEM_BEGIN).skip(1) {
            let Some(end) = block.find("-----END PUBLIC KEY-----") else {
                return Err(KeyError::Public("a BEGIN PUBLIC KEY block has no END line".into()));
            };
            let pem = format!("{PEM_BEGIN}{}-----END PUBLIC KEY-----\n", &block[..end]);
            let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::Public(e.to_string()))?;
            keys.insert(key);
        }
        if keys.keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(keys)
    }

    fn insert(&mut self, key: VerifyingKey) {
        let id = key_id(&key);
        if !self.keys.iter().any(|(k, _)| *k == id) {
            self.keys.push((id, key));
        }
    }

    /// Adds every key of `other`.
    pub fn extend(&mut self, other: &TrustedKeys) {
        for (_, key) in &other.keys {
            self.insert(*key);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The ids of the trusted keys (for logs).
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Checks the signature headers of a message; returns the id of the key that signed it.
    /// `kind` names what these keys are trusted for, in the error.
    pub fn verify(
        &self,
        kind: &'static str,
        subject: &str,
        payload: &[u8],
        key_id: Option<&str>,
        signature: Option<&str>,
    ) -> Result<String, SignatureError> {
        let signature = signature.ok_or(SignatureError::Unsigned)?;
        let key_id = key_id.ok_or_else(|| SignatureError::Malformed(format!("{} without {}", headers::SIGNATURE, headers::KEY_ID)))?;
        let Some((id, key)) = self.keys.iter().find(|(id, _)| id == key_id) else {
            let shown: String = key_id.chars().filter(char::is_ascii_alphanumeric).take(32).collect();
            return Err(SignatureError::UnknownKey { key_id: shown, kind });
        };
        let bytes = B64.decode(signature.trim()).map_err(|e| SignatureError::Malformed(format!("signature is not base64: {e}")))?;
        let signature = Signature::from_slice(&bytes).map_err(|_| SignatureError::Malformed("signature is not 64 bytes".into()))?;
        key.verify(&message(subject, payload), &signature).map_err(|_| SignatureError::Mismatch { key_id: id.clone() })?;
        Ok(id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "conveyor.images.built.web";

    fn verify(keys: &TrustedKeys, subject: &str, payload: &[u8], h: &[(&'static str, String); 2]) -> Result<String, SignatureError> {
        keys.verify("build events", subject, payload, Some(&h[1].1), Some(&h[0].1))
    }

    #[test]
    fn a_signature_verifies_only_for_its_subject_and_payload() {
        let signer = EventSigner::from_seed([7; 32]);
        let keys = signer.public();
        let h = signer.headers(SUBJECT, b"{\"tag\":\"v1\"}");
        assert_eq!(verify(&keys, SUBJECT, b"{\"tag\":\"v1\"}", &h), Ok(signer.key_id().to_string()));
        assert!(matches!(verify(&keys, SUBJECT, b"{\"tag\":\"v2\"}", &h), Err(SignatureError::Mismatch { .. })));
        assert!(matches!(verify(&keys, "conveyor.images.built.other", b"{\"tag\":\"v1\"}", &h), Err(SignatureError::Mismatch { .. })));
    }

    #[test]
    fn unsigned_unknown_and_malformed_are_told_apart() {
        let signer = EventSigner::from_seed([7; 32]);
        let other = EventSigner::from_seed([8; 32]);
        let keys = signer.public();
        assert_eq!(keys.verify("build events", SUBJECT, b"x", None, None), Err(SignatureError::Unsigned));
        let h = other.headers(SUBJECT, b"x");
        let err = verify(&keys, SUBJECT, b"x", &h).unwrap_err();
        assert!(matches!(&err, SignatureError::UnknownKey { key_id, .. } if key_id == other.key_id()), "{err}");
        assert!(err.to_string().contains("not trusted for build events"), "{err}");
        assert!(matches!(keys.verify("build events", SUBJECT, b"x", Some(signer.key_id()), Some("!!")), Err(SignatureError::Malformed(_))));
        assert!(matches!(
            keys.verify("build events", SUBJECT, b"x", Some(signer.key_id()), Some("AAAA")),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn several_keys_are_trusted_at_once_for_rotation() {
        let old = EventSigner::from_seed([1; 32]);
        let new = EventSigner::from_seed([2; 32]);
        let text = format!("# old key, remove after the switch\n{}\n{}", old.public_pem(), new.public_pem());
        let keys = TrustedKeys::from_pem(&text).expect("two keys");
        assert_eq!(keys.ids().len(), 2);
        for signer in [&old, &new] {
            let h = signer.headers(SUBJECT, b"p");
            assert!(verify(&keys, SUBJECT, b"p", &h).is_ok());
        }
        assert_eq!(TrustedKeys::from_pem("nothing here").unwrap_err(), KeyError::NoKeys);
        assert!(EventSigner::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").is_err());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let signer = EventSigner::from_seed([9; 32]);
        assert_eq!(format!("{signer:?}"), format!("EventSigner(key {})", signer.key_id()));
    }
}
