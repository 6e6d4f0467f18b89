//! Precompressed variants: text assets over 1 KiB get a brotli and a gzip copy beside them,
//! each kept only when it is smaller, so the edge can serve compressed bytes without compressing
//! on every request.

use std::collections::BTreeSet;
use std::io::Write;

use gitdeploy_core::Encoding;

/// Files smaller than this are not worth compressing.
pub const MIN_SIZE: usize = 1024;

/// Whether a content type is text-like enough to compress.
pub fn is_compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/manifest+json"
                | "application/xml"
                | "application/xhtml+xml"
                | "application/rss+xml"
                | "application/atom+xml"
                | "application/wasm"
                | "image/svg+xml"
                | "image/x-icon"
                | "font/ttf"
                | "font/otf"
                | "application/vnd.ms-fontobject"
        )
}

/// Compresses `bytes` with `encoding` at a level suited to build time (brotli 11 below 1 MiB,
/// 9 above; gzip 9). Brotli's window is no larger than the input needs (at least 1 KiB, at most
/// 4 MiB): the same output for a small file, without preparing a 4 MiB window for it.
pub fn compress(bytes: &[u8], encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Br => {
            let quality = if bytes.len() <= 1 << 20 { 11 } else { 9 };
            let window =
                (usize::BITS - bytes.len().saturating_sub(1).leading_zeros()).clamp(10, 22);
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 64 * 1024, quality, window);
                // Writing to a Vec cannot fail.
                let _ = w.write_all(bytes);
            }
            out
        }
        Encoding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let _ = w.write_all(bytes);
            w.finish().unwrap_or_default()
        }
    }
}

/// The encodings worth trying for file `relative` of `size` bytes. One is skipped when the site
/// has a real file of that name (`app.js.gz` next to `app.js`): the site's own file is served
/// under its name, and a request for `app.js` gets no variant the author did not mean.
pub fn wanted(
    relative: &str,
    size: u64,
    content_type: &str,
    site_files: &BTreeSet<String>,
) -> Vec<Encoding> {
    if size < MIN_SIZE as u64 || !is_compressible(content_type) {
        return Vec::new();
    }
    [Encoding::Br, Encoding::Gzip]
        .into_iter()
        .filter(|enc| !site_files.contains(&format!("{relative}{}", enc.suffix())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The variants worth keeping for file `relative`: each [`wanted`] encoding, kept when smaller.
    fn variants(
        relative: &str,
        bytes: &[u8],
        content_type: &str,
        site_files: &BTreeSet<String>,
    ) -> Vec<(Encoding, Vec<u8>)> {
        wanted(relative, bytes.len() as u64, content_type, site_files)
            .into_iter()
            .map(|enc| (enc, compress(bytes, enc)))
            .filter(|(_, compressed)| compressed.len() < bytes.len())
            .collect()
    }
    use std::io::Read;

    #[test]
    fn variants_table() {
        let text = "hello world, ".repeat(200);
        let none = BTreeSet::new();
        let got = variants(
            "a.js",
            text.as_bytes(),
            "text/javascript; charset=utf-8",
            &none,
        );
        assert_eq!(
            got.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            [Encoding::Br, Encoding::Gzip]
        );
        for (enc, bytes) in &got {
            assert!(bytes.len() < text.len(), "{enc:?}");
        }
        // Decompresses back to the original.
        let (_, br) = &got[0];
        let mut out = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, text.as_bytes());
        let (_, gz) = &got[1];
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, text.as_bytes());
        // Sizes around the smallest and largest windows round-trip.
        for n in [1024usize, 1025, 70_000] {
            let text = "abcdefghij0123456789".repeat(n / 20 + 1)[..n].to_owned();
            let br = compress(text.as_bytes(), Encoding::Br);
            let mut out = Vec::new();
            brotli::Decompressor::new(&br[..], 4096)
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, text.as_bytes(), "{n}");
        }

        assert!(variants("small.js", b"x", "text/javascript", &none).is_empty());
        assert!(variants("a.png", text.as_bytes(), "image/png", &none).is_empty());
        // Incompressible data keeps no variant.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert!(variants("n.txt", &noise, "text/plain", &none).is_empty());
        // A real file at the variant's name wins.
        let taken: BTreeSet<String> = ["a.js.gz".to_owned()].into();
        let got = variants("a.js", text.as_bytes(), "text/javascript", &taken);
        assert_eq!(
            got.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            [Encoding::Br]
        );
    }
}
