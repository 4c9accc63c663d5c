//! Standard base64 (RFC 4648, section 4) as Basic credentials carry it: padding optional,
//! but never more than canonical; every other character refused; non-canonical trailing
//! bits refused (so one credential has one encoding).
//!
//! Written here rather than taken from the `base64` crate: the crate's general-purpose
//! decoder was 3.7 KB of the filter module (twiggy), which has a 150 KB budget; this is a
//! few hundred bytes. The fuzz target `credentials` checks it against the crate.

use crate::prelude::*;

fn value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// The bytes `text` encodes, or `None` when it is not canonical standard base64.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    let data_len = text.iter().rposition(|&c| c != b'=').map_or(0, |i| i + 1);
    let (data, padding) = text.split_at_checked(data_len)?;
    let tail = data.len() % 4;
    let canonical_padding = (4 - tail) % 4;
    if tail == 1 || padding.len() > canonical_padding {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    for group in data.chunks(4) {
        let mut bits = 0u32;
        for &c in group {
            bits = bits << 6 | value(c)?;
        }
        match group.len() {
            4 => out.extend_from_slice(&bits.to_be_bytes()[1..]),
            3 => {
                // 18 bits for 2 bytes: the last 2 must be zero.
                if bits & 0b11 != 0 {
                    return None;
                }
                out.extend_from_slice(&(bits >> 2).to_be_bytes()[2..]);
            }
            2 => {
                // 12 bits for 1 byte: the last 4 must be zero.
                if bits & 0b1111 != 0 {
                    return None;
                }
                out.push((bits >> 4) as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::Engine;

    const CRATE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );

    #[test]
    fn agrees_with_the_base64_crate() {
        let mut cases: Vec<Vec<u8>> = [
            "",
            "QQ",
            "QQ=",
            "QQ==",
            "QQ===",
            "QUI",
            "QUI=",
            "QUI==",
            "QUJD",
            "QUJD=",
            "Q",
            "Q===",
            "QR==",
            "QUJ=",
            "====",
            "a+b/",
            "a-b_",
            "QU JD",
            "c2tfdGVzdF9hYmM6",
            "YWNjdF8xOnNrX3Rlc3RfYWJj",
            "=QUJD",
            "QU=JD",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        // Every short string over a small alphabet, padding included.
        let alphabet = b"AQgw+/=";
        for len in 0..=5u32 {
            for n in 0..alphabet.len().pow(len) {
                let mut s = Vec::new();
                let mut m = n;
                for _ in 0..len {
                    s.push(alphabet[m % alphabet.len()]);
                    m /= alphabet.len();
                }
                cases.push(s);
            }
        }
        for case in cases {
            assert_eq!(
                decode(&case),
                CRATE.decode(&case).ok(),
                "{:?}",
                String::from_utf8_lossy(&case)
            );
        }
    }
}
