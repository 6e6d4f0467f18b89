//! Choosing a precompressed variant from `Accept-Encoding` (with q-values, `*`, and `q=0`
//! exclusions). Brotli wins a tie because it is smaller.

use gitdeploy_core::Encoding;

/// The q-value the client gives `token` (0 when it does not accept it).
fn quality(header: &str, token: &str) -> f32 {
    let mut star = None;
    for item in header.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .map(|v| v.trim().parse::<f32>().unwrap_or(0.0))
            })
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(token) {
            return q;
        }
        if name == "*" {
            star = Some(q);
        }
    }
    star.unwrap_or(0.0)
}

/// The best available encoding the client accepts, or `None` for identity.
pub fn choose(
    accept_encoding: Option<&[u8]>,
    available: impl Iterator<Item = Encoding>,
) -> Option<Encoding> {
    let header = std::str::from_utf8(accept_encoding?).ok()?;
    let mut best: Option<(Encoding, f32)> = None;
    for enc in available {
        let q = quality(header, enc.token());
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
        ] {
            assert_eq!(
                choose(header.map(str::as_bytes), available.iter().copied()),
                want,
                "{header:?}"
            );
        }
    }
}
