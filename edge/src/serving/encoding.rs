//! Choosing a precompressed variant from `Accept-Encoding` (with q-values, `*`, and `q=0`
//! exclusions). Brotli wins a tie because it is smaller.

use gitdeploy_core::Encoding;

/// What an `Accept-Encoding` header says of the encodings a variant can have, read in one
/// pass: each token's q-value where the header names it (its first mention counts), and `*`'s
/// (its last mention). Items naming anything else are skipped without reading their q-value.
#[derive(Default)]
struct Qualities {
    br: Option<f32>,
    gzip: Option<f32>,
    star: Option<f32>,
}

impl Qualities {
    fn of(header: &str) -> Self {
        let mut out = Qualities::default();
        for item in header.split(',') {
            let (name, params) = item.split_once(';').unwrap_or((item, ""));
            let name = name.trim();
            let slot = if name.eq_ignore_ascii_case(Encoding::Br.token()) {
                if out.br.is_some() {
                    continue;
                }
                &mut out.br
            } else if name.eq_ignore_ascii_case(Encoding::Gzip.token()) {
                if out.gzip.is_some() {
                    continue;
                }
                &mut out.gzip
            } else if name == "*" {
                &mut out.star
            } else {
                continue;
            };
            let q = params
                .split(';')
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .map(|v| v.trim().parse::<f32>().unwrap_or(0.0))
                })
                .unwrap_or(1.0);
            *slot = Some(q);
        }
        out
    }

    /// The q-value the client gives `enc` (0 when it does not accept it).
    fn of_encoding(&self, enc: Encoding) -> f32 {
        let named = match enc {
            Encoding::Br => self.br,
            Encoding::Gzip => self.gzip,
        };
        named.or(self.star).unwrap_or(0.0)
    }
}

/// The best available encoding the client accepts, or `None` for identity.
pub fn choose(
    accept_encoding: Option<&[u8]>,
    available: impl Iterator<Item = Encoding>,
) -> Option<Encoding> {
    let header = std::str::from_utf8(accept_encoding?).ok()?;
    let qualities = Qualities::of(header);
    let mut best: Option<(Encoding, f32)> = None;
    for enc in available {
        let q = qualities.of_encoding(enc);
        let better = match best {
            None => q > 0.0,
            Some((b, bq)) => q > bq || (q == bq && enc == Encoding::Br && b != Encoding::Br),
        };
        if better {
            best = Some((enc, q));
        }
    }
    best.map(|(e, _)| e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::*;

    #[test]
    fn choose_table() {
        let both = [Gzip, Br];
        for (header, available, want) in [
            (None, &both[..], None),
            (Some("gzip, deflate, br"), &both[..], Some(Br)),
            (Some("gzip"), &both[..], Some(Gzip)),
            (Some("br;q=0.5, gzip;q=0.8"), &both[..], Some(Gzip)),
            (Some("br;q=0, gzip"), &both[..], Some(Gzip)),
            (Some("*"), &both[..], Some(Br)),
            (Some("*;q=0.1, br;q=0"), &both[..], Some(Gzip)),
            (Some("identity"), &both[..], None),
            (Some("gzip;q=0"), &both[..], None),
            (Some("BR"), &both[..], Some(Br)),
            (Some("br"), &[Gzip][..], None),
            (Some("gzip, br"), &[][..], None),
            // A token's first mention counts; `*`'s last; other items are skipped whole.
            (Some("br;q=0, br;q=1, gzip"), &both[..], Some(Gzip)),
            (Some("*;q=0, *;q=0.5"), &both[..], Some(Br)),
            (Some("deflate;q=abc, gzip ; q=0.9"), &both[..], Some(Gzip)),
            (Some(" Gzip ;q=1, br;q=0.99"), &both[..], Some(Gzip)),
        ] {
            assert_eq!(
                choose(header.map(str::as_bytes), available.iter().copied()),
                want,
                "{header:?}"
            );
        }
    }
}
