//! The `Idempotency-Key` request header: what a valid key is, and the hash that ties a
//! key to the post it created.
//!
//! A client that may send a post twice (its first attempt timed out, the database failed
//! over…) names the attempt with a key. The store keeps each key with the id of the post
//! it created and the hash of what was posted, in the same transaction as the post: a
//! repeated key returns that post instead of storing a second one, and a key reused for
//! different content is refused.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// Longest key, in characters.
pub const MAX_KEY_LEN: usize = 128;

/// A key that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The header is present but empty.
    #[error("Idempotency-Key must not be empty")]
    Empty,
    /// More than [`MAX_KEY_LEN`] characters.
    #[error("Idempotency-Key is {0} characters long; at most {MAX_KEY_LEN} are allowed")]
    TooLong(usize),
    /// A character outside visible ASCII (`!` to `~`).
    #[error(
        "Idempotency-Key may only contain visible ASCII characters (no spaces); found {0:?} at position {1}"
    )]
    BadChar(char, usize),
    /// Bytes that are not text.
    #[error("Idempotency-Key may only contain visible ASCII characters")]
    NotText,
    /// The header appears more than once.
    #[error("Idempotency-Key must be sent once")]
    Repeated,
}

/// A valid idempotency key: 1 to [`MAX_KEY_LEN`] visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a key as the client sent it (nothing is trimmed: keys compare exactly).
    pub fn parse(text: &str) -> Result<IdempotencyKey, KeyError> {
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        if let Some((i, c)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| !c.is_ascii_graphic())
        {
            return Err(KeyError::BadChar(c, i + 1));
        }
        if text.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(text.len()));
        }
        Ok(IdempotencyKey(text.to_string()))
    }

    /// The key of a request, if it has one.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, KeyError> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(KeyError::Repeated);
        }
        let text = value.to_str().map_err(|_| KeyError::NotText)?;
        IdempotencyKey::parse(text).map(Some)
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a key is bound to: SHA-256 of `author`, a NUL and `body`, in lowercase hex.
pub fn request_hash(author: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(author.as_bytes());
    h.update([0u8]);
    h.update(body.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        let long = "k".repeat(MAX_KEY_LEN);
        let too_long = "k".repeat(MAX_KEY_LEN + 1);
        let ok = [
            "a",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "!~",
            long.as_str(),
        ];
        for key in ok {
            assert_eq!(
                IdempotencyKey::parse(key).map(|k| k.as_str().to_string()),
                Ok(key.to_string())
            );
        }
        let bad: [(&str, KeyError); 6] = [
            ("", KeyError::Empty),
            (too_long.as_str(), KeyError::TooLong(MAX_KEY_LEN + 1)),
            ("a b", KeyError::BadChar(' ', 2)),
            ("tab\t", KeyError::BadChar('\t', 4)),
            ("é", KeyError::BadChar('é', 1)),
            ("del\u{7f}", KeyError::BadChar('\u{7f}', 4)),
        ];
        for (key, want) in bad {
            assert_eq!(IdempotencyKey::parse(key), Err(want), "{key:?}");
        }
    }

    #[test]
    fn keys_come_from_one_header() {
        let mut h = HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&h), Ok(None));
        h.insert("Idempotency-Key", HeaderValue::from_static("abc"));
        assert_eq!(
            IdempotencyKey::from_headers(&h),
            Ok(Some(IdempotencyKey("abc".into())))
        );
        h.append("Idempotency-Key", HeaderValue::from_static("def"));
        assert_eq!(IdempotencyKey::from_headers(&h), Err(KeyError::Repeated));
        let mut h = HeaderMap::new();
        h.insert(
            "Idempotency-Key",
            HeaderValue::from_bytes(b"\xff").expect("opaque header value"),
        );
        assert_eq!(IdempotencyKey::from_headers(&h), Err(KeyError::NotText));
        let mut h = HeaderMap::new();
        h.insert("Idempotency-Key", HeaderValue::from_static(""));
        assert_eq!(IdempotencyKey::from_headers(&h), Err(KeyError::Empty));
    }

    #[test]
    fn hash_separates_author_from_body() {
        let h = request_hash("ann", "hi");
        assert_eq!(h.len(), 64);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(h, request_hash("ann", "hi"));
        assert_ne!(h, request_hash("an", "nhi"));
        assert_ne!(h, request_hash("ann", "hi "));
        // `printf 'a\0b' | sha256sum`
        assert_eq!(
            request_hash("a", "b"),
            "59b271ae1bbcb1d31d41929817f4b16fb439eb4f31520b5ad1d5ce98920a7138"
        );
    }
}
