//! Searches of a `str` for one ASCII byte. `str`'s `char` patterns (`split_once(' ')`,
//! `contains('}')`, `find(':')`) bring a `char` searcher of about 1 KB into the wasm module
//! (measured with twiggy); a byte scan does the same for an ASCII byte, which can never be
//! part of a multi-byte character, so every split it makes is on a character boundary.

/// `s.split_once(c)` for an ASCII `c`.
pub fn split_once(s: &str, c: u8) -> Option<(&str, &str)> {
    let at = find(s, c)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// `s.find(c)` for an ASCII `c`.
pub fn find(s: &str, c: u8) -> Option<usize> {
    s.bytes().position(|b| b == c)
}

/// `s.contains(c)` for an ASCII `c`.
pub fn contains(s: &str, c: u8) -> bool {
    s.bytes().any(|b| b == c)
}

/// `s.split(c)` for an ASCII `c`.
pub fn split(s: &str, c: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    core::iter::from_fn(move || {
        let s = rest?;
        match split_once(s, c) {
            Some((head, tail)) => {
                rest = Some(tail);
                Some(head)
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// `s.trim_start_matches(c)` for an ASCII `c`.
pub fn trim_start(s: &str, c: u8) -> &str {
    let n = s.bytes().take_while(|&b| b == c).count();
    s.get(n..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    #[test]
    fn each_matches_strs_own_char_search() {
        for s in [
            "", " ", "a b", "é:ü", "::", "a:", ":a", "  x y", "/a//b/", "€}",
        ] {
            for c in [' ', ':', '/', '}'] {
                let b = c as u8;
                assert_eq!(split_once(s, b), s.split_once(c), "{s:?} {c:?}");
                assert_eq!(find(s, b), s.find(c));
                assert_eq!(contains(s, b), s.contains(c));
                assert_eq!(
                    split(s, b).collect::<Vec<_>>(),
                    s.split(c).collect::<Vec<_>>()
                );
                assert_eq!(trim_start(s, b), s.trim_start_matches(c));
            }
        }
    }
}
