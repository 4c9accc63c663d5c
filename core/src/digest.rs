//! SHA-256 digests of keys: the only form in which a key is stored or shipped.

use crate::prelude::*;

use core::fmt;
use sha2::{Digest as _, Sha256};

/// The SHA-256 digest of a whole key (prefix included).
/// Equality is constant-time (see `ct_eq`) so that a hash-map lookup never compares digests
/// with an early exit; hashing feeds only the first 8 bytes, which SHA-256 already spreads.
#[derive(Clone, Copy, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl PartialEq for Digest {
    fn eq(&self, other: &Digest) -> bool {
        self.ct_eq(other)
    }
}

impl Eq for Digest {}

impl core::hash::Hash for Digest {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.index_bits());
    }
}

/// A hasher for `Digest` keys: the digest bits are the hash, no mixing needed.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl core::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-Digest keys; fold bytes in so it still works as a hasher.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Build hasher for maps keyed by `Digest`.
pub type DigestBuildHasher = core::hash::BuildHasherDefault<DigestHasher>;

/// Why a digest string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestError {
    /// Not exactly 64 characters.
    Length(usize),
    /// A character that is not a hex digit.
    NotHex,
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestError::Length(n) => {
                write!(f, "expected 64 hex characters (a SHA-256 digest), got {n}")
            }
            DigestError::NotHex => f.write_str("expected only hex characters 0-9, a-f"),
        }
    }
}

impl Digest {
    pub fn of_key(key: &str) -> Digest {
        Digest(Sha256::digest(key.as_bytes()).into())
    }

    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(DigestError::Length(hex.chars().count()));
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *slot = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Ok(Digest(out))
    }

    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// Compares in constant time: every byte is looked at whatever the first difference.
    pub fn ct_eq(&self, other: &Digest) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        // black_box keeps the optimiser from turning the fold into an early exit.
        core::hint::black_box(diff) == 0
    }

    /// The first 8 bytes, already uniformly distributed: a hash table index needs no more.
    pub fn index_bits(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(first)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

fn hex_value(c: u8) -> Result<u8, DigestError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(DigestError::NotHex),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_a_key_is_its_sha256() {
        assert_eq!(
            Digest::of_key("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trips_and_accepts_upper_case() {
        let d = Digest::of_key("sk_test_x");
        assert_eq!(Digest::from_hex(&d.to_hex()), Ok(d));
        assert_eq!(Digest::from_hex(&d.to_hex().to_uppercase()), Ok(d));
    }

    #[test]
    fn bad_hex_is_refused_with_a_reason() {
        assert_eq!(Digest::from_hex("abc"), Err(DigestError::Length(3)));
        assert_eq!(Digest::from_hex(&"g".repeat(64)), Err(DigestError::NotHex));
        assert_eq!(Digest::from_hex(&"é".repeat(32)), Err(DigestError::NotHex));
        assert_eq!(
            Digest::from_hex(&"é".repeat(40)),
            Err(DigestError::Length(40))
        );
    }

    #[test]
    fn ct_eq_tells_equal_from_different() {
        let a = Digest::of_key("a");
        let mut b = a;
        assert!(a.ct_eq(&b));
        b.0[31] ^= 1;
        assert!(!a.ct_eq(&b));
    }
}
