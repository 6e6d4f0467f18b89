//! Content addressing: the SHA-256 of a file's bytes names the blob that holds them
//! (`blobs/<hex>`), so every deployment that contains the same bytes shares one stored object,
//! one cache entry at the edge and one ETag a browser can revalidate across redeploys.
//!
//! The hash is kept as 32 bytes (`Copy`, no allocation per request) and written as 64
//! lowercase hex digits; parsing accepts exactly that form, so a hash taken from a manifest or
//! a URL can never spell a path.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The SHA-256 of one stored representation's bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    /// The hash of a digest computed elsewhere (the crate has no hashing of its own: no I/O and
    /// no dependency beyond the vocabulary).
    pub fn from_digest(digest: [u8; 32]) -> Self {
        ContentHash(digest)
    }

    /// Parses 64 lowercase hex digits; anything else is refused.
    pub fn parse(hex: &str) -> Result<Self, String> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(format!(
                "a content hash is 64 lowercase hex digits, got {} characters",
                bytes.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let digit = |b: u8| match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                _ => None,
            };
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
                _ => return Err("a content hash is 64 lowercase hex digits".into()),
            }
        }
        Ok(ContentHash(out))
    }

    /// The 32 bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The strong ETag of this content (quotes included): the first 128 bits in hex, the form
    /// manifests have always used, so a browser's validator survives the move to blobs.
    pub fn etag(&self) -> String {
        format!("\"{}\"", &self.to_string()[..32])
    }

    /// The hash in base64 (RFC 4648, padded): the form of S3's `x-amz-checksum-sha256`, with
    /// which the store itself checks that an upload's bytes are the ones its key names.
    pub fn base64(&self) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(44);
        for chunk in self.0.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// The ETag of a precompressed representation of this content (`"<128 bits>-br"`).
    pub fn variant_etag(&self, token: &str) -> String {
        format!("\"{}-{token}\"", &self.to_string()[..32])
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&out).unwrap_or_default())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

impl std::str::FromStr for ContentHash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ContentHash::parse(s)
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ContentHash::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_exactly_lowercase_hex() {
        let h = ContentHash::parse(EMPTY).unwrap();
        assert_eq!(h.to_string(), EMPTY);
        assert_eq!(h.bytes()[0], 0xe3);
        assert_eq!(h.etag(), "\"e3b0c44298fc1c149afbf4c8996fb924\"");
        // `printf '' | openssl dgst -sha256 -binary | base64`
        assert_eq!(h.base64(), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(
            ContentHash::from_digest([0xff; 32]).base64(),
            "//////////////////////////////////////////8="
        );
        assert_eq!(
            h.variant_etag("br"),
            "\"e3b0c44298fc1c149afbf4c8996fb924-br\""
        );
        for bad in [
            "",
            &EMPTY[..63],
            &format!("{EMPTY}0"),
            &EMPTY.to_uppercase(),
            &format!("../{}", &EMPTY[3..]),
            &format!("{}\0", &EMPTY[..63]),
            &format!("{}g", &EMPTY[..63]),
            &format!("{}é", &EMPTY[..62]),
        ] {
            assert!(ContentHash::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_is_the_hex_form() {
        let h = ContentHash::parse(EMPTY).unwrap();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<ContentHash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<ContentHash>("\"../etc/passwd\"").is_err());
    }
}
