//! The dashboard: its static files compiled into the binary and served at the apex host. It is
//! a client of the public API like any other (it holds no privileges of its own), so its routes
//! need no token; the API calls it makes do.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

struct Asset {
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("../dashboard/index.html"),
};

const ASSETS: &[(&str, Asset)] = &[
    (
        "app.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("../dashboard/app.js"),
        },
    ),
    (
        "traffic.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("../dashboard/traffic.js"),
        },
    ),
    (
        "team.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("../dashboard/team.js"),
        },
    ),
    (
        "app.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            body: include_str!("../dashboard/app.css"),
        },
    ),
];

/// Only the dashboard's own files run, nothing is framed, and connections go to this origin
/// (the API and its WebSocket).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A strong validator for each file, computed once from the embedded bytes.
fn etag(name: &str) -> HeaderValue {
    static TAGS: OnceLock<Vec<(&'static str, HeaderValue)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(("index.html", INDEX.body))
            .chain(ASSETS.iter().map(|(n, a)| (*n, a.body)))
            .map(|(n, body)| {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(body.as_bytes());
                let tag = format!("\"{}\"", hex::encode(&digest[..12]));
                (
                    n,
                    HeaderValue::from_str(&tag).expect("hex is a valid header value"),
                )
            })
            .collect()
    });
    tags.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| t.clone())
        .expect("every embedded file has a tag")
}

fn serve(name: &str, asset: &Asset, headers: &HeaderMap) -> Response {
    let tag = etag(name);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let common = [
        (header::ETAG, tag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

/// `GET /`: the dashboard page.
pub(crate) async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &INDEX, &headers)
}

/// `GET /assets/{file}`: its script and stylesheet.
pub(crate) async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|(n, _)| *n == file) {
        Some((name, asset)) => serve(name, asset, &headers),
        None => ApiError::not_found(format!("no asset {file:?}")).into_response(),
    }
}
