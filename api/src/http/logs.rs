//! Build logs over HTTP: NDJSON so far, Server-Sent Events and the WebSocket to the end,
//! from the bus or, once it has expired there, from the archive.

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::*;
use crate::error::ApiError;
use crate::store::Deployment;
use crate::ControlPlane;

#[derive(Deserialize)]
pub(super) struct SinceQuery {
    #[serde(default)]
    since: u64,
    /// Stream as Server-Sent Events until the final record.
    #[serde(default)]
    follow: Option<String>,
    /// WebSocket: records that are ready together share one text frame, newline-separated.
    #[serde(default)]
    batch: Option<String>,
}

pub(super) async fn read_logs(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    Query(q): Query<SinceQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let d = lookup(&cp, &id).await?;
    if q.follow.as_deref().is_some_and(|f| f == "1" || f == "true") {
        // A reconnecting EventSource sends the last id it saw: resume right after it.
        let resume = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|seq| seq + 1);
        let since = resume.unwrap_or(0).max(q.since);
        let follower = follow_log(&cp, &d, since).await?;
        return Ok(sse_log(follower).into_response());
    }
    let records = match archived_log(&cp, &d).await? {
        Some(all) => all.into_iter().filter(|r| r.seq >= q.since).collect(),
        None => cp.bus.read(&d.id, q.since).await?,
    };
    let mut body = Vec::new();
    for r in records {
        serde_json::to_writer(&mut body, &r).map_err(ApiError::internal)?;
        body.push(b'\n');
    }
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from(body),
    )
        .into_response())
}

pub(super) async fn follow_logs_ws(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    Query(q): Query<SinceQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let d = lookup(&cp, &id).await?;
    let follower = follow_log(&cp, &d, q.since).await?;
    let batch = q.batch.as_deref().is_some_and(|b| b == "1" || b == "true");
    Ok(ws.on_upgrade(move |socket| stream_log(socket, follower, batch)))
}

/// The archived log of a finished deployment whose log the bus no longer holds (Redis streams
/// expire after the build); `None` when the bus has it (or there is no archive).
pub(super) async fn archived_log(
    cp: &ControlPlane,
    d: &Deployment,
) -> Result<Option<Vec<gitdeploy_core::LogRecord>>, ApiError> {
    let Some(archive) = &cp.archive else {
        return Ok(None);
    };
    if !d.status.is_terminal() || !cp.bus.read(&d.id, 0).await?.is_empty() {
        return Ok(None);
    }
    let Some(ndjson) = archive.fetch(&d.id).await.map_err(ApiError::internal)? else {
        return Ok(None);
    };
    let records = ndjson
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<Vec<gitdeploy_core::LogRecord>, _>>()
        .map_err(ApiError::internal)?;
    Ok(Some(records))
}

/// A follower of the deployment's log: live from the bus, or replayed from the archive.
pub(super) async fn follow_log(
    cp: &ControlPlane,
    d: &Deployment,
    since: u64,
) -> Result<crate::logbus::Follower, ApiError> {
    if let Some(all) = archived_log(cp, d).await? {
        let rest = all.into_iter().filter(|r| r.seq >= since).collect();
        return Ok(crate::logbus::Follower::new(
            Box::new(crate::logbus::ArchivedLog(rest)),
            since,
            crate::metrics::ApiMetrics::unregistered(),
        ));
    }
    Ok(cp.bus.follow(&d.id, since).await?)
}

/// The log as Server-Sent Events: one `log` event per record with `id: <seq>`, ending after the
/// final record.
pub(super) fn sse_log(follower: crate::logbus::Follower) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stream = futures_util::stream::unfold(follower, |mut f| async move {
        match f.next().await {
            Ok(Some(record)) => {
                let data = serde_json::to_string(&record).unwrap_or_default();
                let event = Event::default()
                    .id(record.seq.to_string())
                    .event("log")
                    .data(data);
                Some((Ok::<_, std::convert::Infallible>(event), f))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!("log follower failed: {e}");
                None
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A batch frame is sent once it holds this many bytes.
pub(super) const BATCH_BYTES: usize = 256 << 10;

/// Sends records until the final one, then closes. Ends early when the client goes away.
/// With `batch`, the records of one burst go out as one text frame, one JSON object per line:
/// one frame to encode, send and parse instead of one per line.
/// Ends a stream that is not at the end of its log: code 1011, so the client resumes from its
/// last record rather than taking the stream for complete.
async fn close_unfinished(mut socket: WebSocket) {
    let frame = axum::extract::ws::CloseFrame {
        code: 1011,
        reason: "the log could not be read; resume from the last record".into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

pub(super) async fn stream_log(
    mut socket: WebSocket,
    mut follower: crate::logbus::Follower,
    batch: bool,
) {
    // A client's read side can end (a half-closed connection, as a proxy may leave it) while it
    // still receives: keep sending until a send fails or the client says close.
    let mut client_reading = true;
    loop {
        tokio::select! {
            next = follower.next_live() => match next {
                Ok(Some(record)) => {
                    // Queue this record and every one already waiting, then write them out
                    // together: one flush per burst instead of one per line.
                    use futures_util::{FutureExt, SinkExt};
                    let mut ended = false;
                    let mut failed = false;
                    let mut pending = Some(record);
                    let mut queued = 0;
                    let mut lines = String::new();
                    while let Some(live) = pending.take() {
                        // The bus's own JSON when it has it: serialized once, not per follower.
                        let text = match live.json.map(axum::extract::ws::Utf8Bytes::try_from) {
                            Some(Ok(text)) => text,
                            _ => match serde_json::to_string(&live.record) {
                                Ok(text) => text.into(),
                                Err(_) => return,
                            },
                        };
                        queued += 1;
                        if batch {
                            if !lines.is_empty() {
                                lines.push('\n');
                            }
                            lines.push_str(text.as_str());
                            if lines.len() >= BATCH_BYTES {
                                break;
                            }
                        } else if socket.feed(Message::Text(text)).await.is_err() {
                            return;
                        }
                        if queued == 512 {
                            break;
                        }
                        match follower.next_live().now_or_never() {
                            Some(Ok(Some(next))) => pending = Some(next),
                            Some(Ok(None)) => ended = true,
                            Some(Err(e)) => {
                                tracing::error!("log follower failed: {e}");
                                failed = true;
                            }
                            None => {}
                        }
                    }
                    if !lines.is_empty() && socket.feed(Message::Text(lines.into())).await.is_err() {
                        return;
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                    if failed {
                        return close_unfinished(socket).await;
                    }
                    if ended {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("log follower failed: {e}");
                    return close_unfinished(socket).await;
                }
            },
            incoming = socket.recv(), if client_reading => match incoming {
                // Clients have nothing to say; anything but a close is ignored.
                Some(Ok(Message::Close(_))) => return,
                None | Some(Err(_)) => {
                    tracing::debug!("log client stopped sending; still streaming to it");
                    client_reading = false;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    // Close politely: wait (briefly) for the client's close frame, so the connection is not torn
    // down under a reply that is still in flight.
    if socket.send(Message::Close(None)).await.is_ok() && client_reading {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(Ok(msg)) = socket.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}
