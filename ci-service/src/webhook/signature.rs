//! Webhook authentication: HMAC-SHA256 body signatures (GitHub, Gitea/Forgejo, the generic hook)
//! and shared tokens (GitLab), always compared in constant time. It only answers yes or no.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secrets::Secret;

type HmacSha256 = Hmac<Sha256>;

/// `hex(HMAC-SHA256(secret, body))`, what a sender puts in its signature header.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// True if `signature_hex` (bare hex, or `sha256=<hex>`) is the HMAC of `body` under one of
/// `secrets`. Every secret is tried, so the time taken does not depend on which one matched.
pub fn verify_hmac(secrets: &[Secret], body: &[u8], signature_hex: &str) -> bool {
    let hex_part = signature_hex.trim().strip_prefix("sha256=").unwrap_or(signature_hex.trim());
    let Ok(provided) = hex::decode(hex_part) else { return false };
    let mut ok = false;
    for secret in secrets {
        let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes()).expect("HMAC accepts keys of any length");
        mac.update(body);
        // verify_slice compares in constant time.
        ok |= mac.verify_slice(&provided).is_ok();
    }
    ok
}

/// True if `token` equals one of `secrets` (GitLab's `X-Gitlab-Token`), in constant time.
pub fn verify_token(secrets: &[Secret], token: &str) -> bool {
    let mut ok = subtle::Choice::from(0);
    for secret in secrets {
        ok |= secret.expose().as_bytes().ct_eq(token.as_bytes());
    }
    ok.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries" docs.
        let secret = Secret::new("It's a Secret to Everybody");
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(&secret, b"Hello, World!"), sig);
        assert!(verify_hmac(std::slice::from_ref(&secret), b"Hello, World!", &format!("sha256={sig}")));
        assert!(verify_hmac(std::slice::from_ref(&secret), b"Hello, World!", sig), "bare hex (Gitea) is accepted too");
        assert!(!verify_hmac(std::slice::from_ref(&secret), b"Hello, World?", sig));
        assert!(!verify_hmac(&[secret], b"Hello, World!", "sha256=zz"));
    }

    #[test]
    fn any_of_several_secrets_verifies_so_secrets_can_rotate() {
        let (old, new) = (Secret::new("old-secret"), Secret::new("new-secret"));
        let body = br#"{"ref":"refs/heads/main"}"#;
        assert!(verify_hmac(&[new.clone(), old.clone()], body, &sign(&old, body)));
        assert!(verify_hmac(&[new.clone(), old.clone()], body, &sign(&new, body)));
        assert!(!verify_hmac(std::slice::from_ref(&new), body, &sign(&old, body)));
        assert!(!verify_hmac(&[], body, &sign(&old, body)), "no secret verifies nothing");
        assert!(verify_token(&[new.clone(), old.clone()], "old-secret"));
        assert!(!verify_token(&[new], "old-secre"));
    }
}
