//! `Cache-Control` by file: assets whose name carries a content hash never change under that
//! name, so browsers may keep them for a year; everything else (HTML above all) revalidates.

/// For files whose name carries a content hash.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// For everything else.
pub const REVALIDATE: &str = "public, max-age=0, must-revalidate";

/// True when the file name has a content-hash part, as bundlers write them: `app.3f2a1b9c.js`,
/// `index-BkWq3x9Z.js`, `chunk.a1b2c3d4e5f6.css`. HTML is never treated as hashed.
pub fn is_hashed_asset(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return false;
    };
    if ext.eq_ignore_ascii_case("html") || ext.eq_ignore_ascii_case("htm") {
        return false;
    }
    stem.split(['.', '-']).skip(1).any(|token| {
        let len_ok = (8..=64).contains(&token.len());
        let charset_ok = token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let digits = token.bytes().any(|b| b.is_ascii_digit());
        let letters = token.bytes().any(|b| b.is_ascii_alphabetic());
        let mixed_case = token.bytes().any(|b| b.is_ascii_uppercase())
            && token.bytes().any(|b| b.is_ascii_lowercase());
        len_ok && charset_ok && ((digits && letters) || mixed_case)
    })
}

/// The default `Cache-Control` of a file.
pub fn for_path(path: &str) -> &'static str {
    if is_hashed_asset(path) {
        IMMUTABLE
    } else {
        REVALIDATE
    }
}

/// `value` for a response only its visitor may keep: `public` becomes `private` (added when
/// neither is said); `no-store` stays as it is.
pub fn private(value: &str) -> String {
    let directives: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case("public"))
        .collect();
    if directives
        .iter()
        .any(|d| d.eq_ignore_ascii_case("private") || d.eq_ignore_ascii_case("no-store"))
    {
        return directives.join(", ");
    }
    std::iter::once("private")
        .chain(directives)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_table() {
        for (value, want) in [
            (IMMUTABLE, "private, max-age=31536000, immutable"),
            (REVALIDATE, "private, max-age=0, must-revalidate"),
            ("max-age=60", "private, max-age=60"),
            ("Public, s-maxage=600", "private, s-maxage=600"),
            ("no-store", "no-store"),
            ("private, max-age=5", "private, max-age=5"),
            ("", "private"),
        ] {
            assert_eq!(private(value), want, "{value:?}");
        }
    }

    #[test]
    fn hashed_table() {
        for (path, hashed) in [
            ("assets/index-BkWq3x9Z.js", true),
            ("assets/index-DiwrgTda.css", true),
            ("static/js/main.3f2a1b9c.js", true),
            ("_next/static/chunks/app.a1b2c3d4e5f6.js", true),
            ("logo.3f2a1b9c.svg", true),
            ("index.html", false),
            ("page.3f2a1b9c.html", false),
            ("app.js", false),
            ("jquery-3.6.0.min.js", false),
            ("bootstrap.min.css", false),
            ("favicon-32x32.png", false),
            ("my-component-library.js", false),
            ("deadbeef.js", false),
            ("README", false),
        ] {
            assert_eq!(is_hashed_asset(path), hashed, "{path}");
        }
        assert_eq!(for_path("index.html"), REVALIDATE);
        assert_eq!(for_path("a/b.12345abc.js"), IMMUTABLE);
    }
}
