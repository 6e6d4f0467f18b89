//! What an identity blob records of its precompressed variants, in the blob's own S3 metadata
//! (`x-amz-meta-gitdeploy-variants`): for each encoding tried, the variant kept or "none
//! smaller". A publish reads it to reuse variants instead of compressing again
//! ([`super::blobs`]), a collection to keep the variants of the blobs it keeps ([`super::gc`]),
//! and the check of an untrusted uploader's variants writes it once they are verified
//! ([`super::verify`]). Malformed text is not trusted: the variants are then made again.

use std::collections::BTreeMap;

use gitdeploy_core::{ContentHash, Encoding};

/// The metadata key (`x-amz-meta-gitdeploy-variants`) of [`Recorded`].
pub(super) const VARIANTS_METADATA: &str = "gitdeploy-variants";

/// What an identity blob's metadata says of its variants: for each encoding tried, the variant
/// kept (its blob and size), or `None` when it came out no smaller than the file.
pub type Recorded = BTreeMap<Encoding, Option<(ContentHash, u64)>>;

/// [`Recorded`] as metadata text: `br=<hex>:<size>,gzip=-`.
pub fn write_recorded(recorded: &Recorded) -> String {
    recorded
        .iter()
        .map(|(enc, kept)| match kept {
            Some((hash, size)) => format!("{}={hash}:{size}", enc.token()),
            None => format!("{}=-", enc.token()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads [`write_recorded`]'s text; `None` when any part is malformed (then nothing recorded is
/// trusted and the variants are made again).
pub fn read_recorded(text: &str) -> Option<Recorded> {
    let mut out = Recorded::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (token, kept) = part.split_once('=')?;
        let enc = match token {
            "br" => Encoding::Br,
            "gzip" => Encoding::Gzip,
            _ => return None,
        };
        let kept = match kept {
            "-" => None,
            kept => {
                let (hash, size) = kept.split_once(':')?;
                Some((ContentHash::parse(hash).ok()?, size.parse().ok()?))
            }
        };
        if out.insert(enc, kept).is_some() {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_variants_round_trip_and_malformed_text_is_not_trusted() {
        let h = ContentHash::from_digest([0x0f; 32]);
        let mut r = Recorded::new();
        assert_eq!(write_recorded(&r), "");
        assert_eq!(read_recorded(""), Some(Recorded::new()));
        r.insert(Encoding::Br, Some((h, 120)));
        r.insert(Encoding::Gzip, None);
        let text = write_recorded(&r);
        assert_eq!(text, format!("br={h}:120,gzip=-"));
        assert_eq!(read_recorded(&text), Some(r));
        for bad in [
            "br",
            "zstd=-",
            "br=-,br=-",
            "br=abc:1",
            &format!("br={h}"),
            &format!("br={h}:-1"),
            &format!("br={h}:1:2"),
        ] {
            assert_eq!(read_recorded(bad), None, "{bad}");
        }
    }
}
