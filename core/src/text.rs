//! Text cut to a byte budget: what the edge keeps of a client's path or header for its logs and
//! counts, never splitting a character.

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_table() {
        for (s, max, want) in [
            ("abc", 5, "abc"),
            ("abc", 3, "abc"),
            ("abcdef", 3, "abc"),
            ("aé", 2, "a"),
            ("aé", 3, "aé"),
            ("€€", 4, "€"),
            ("", 0, ""),
            ("x", 0, ""),
        ] {
            assert_eq!(clip(s, max), want, "{s:?} {max}");
        }
    }
}
