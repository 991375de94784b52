//! A secret value both services hold (webhook secrets, registry passwords, git tokens): it can
//! be used, never printed. It is `secrecy`'s `SecretString` (wiped from memory when dropped)
//! with a constant-time comparison. `Debug` shows `Secret(***)`; there is no `Display` and no
//! `Serialize`.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Compares in constant time (the time taken says nothing about how much matched).
    pub fn matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.expose().as_bytes().ct_eq(given.as_bytes()).into()
    }
}

/// Equal values compare equal, in constant time.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.expose())
    }
}

impl Eq for Secret {}

/// The token of an `Authorization: Bearer <token>` header value (the scheme is matched without
/// regard to case, RFC 7235); `None` for another scheme or none.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// For `clap` (`--webhook-secret`, `--git-token`, ...).
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_never_shows_the_value() {
        let s = super::Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
        assert!(s.matches("hunter2") && !s.matches("hunter") && !s.matches("hunter22"));
    }

    #[test]
    fn reads_bearer_tokens() {
        assert_eq!(super::bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(super::bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(super::bearer_token("Basic abc"), None);
        assert_eq!(super::bearer_token("Bearer "), None);
    }
}
