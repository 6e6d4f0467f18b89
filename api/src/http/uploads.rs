//! The upload protocol over HTTP (rules in [`crate::uploads`]): a client that built a folder
//! itself (`gitdeploy deploy ./dist --prebuilt`) opens an `uploading` deployment, asks which of
//! its files' blobs the store lacks, uploads only those (each checked against its hash here,
//! as it arrives), and finalizes: the manifest is made and checked like a build task's staged
//! upload, and the deployment is ready. A refused finalize publishes nothing and leaves the
//! deployment uploading, so the client can send what was missing and finalize again; any
//! upload after a finalize is refused.

use std::io::Write as _;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use gitdeploy_core::job::{BuildLimits, ServingOptions, SourceArchive};
use gitdeploy_core::{BuildJob, ContentHash, DeploymentId, DeploymentStatus, LogStream, Outcome};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::*;
use crate::archive::{BlobBody, SiteStorage};
use crate::error::ApiError;
use crate::job::{Finished, Job};
use crate::projects::Project;
use crate::store::{Deployment, DeploymentSource};
use crate::uploads::{check_files, manifest, parse, Finalize, Plan};
use crate::{now_ms, ControlPlane};

/// The header naming the variants an uploader made of a blob (`br=<hash>:<size>,gzip=…`).
const VARIANTS_HEADER: &str = "x-gitdeploy-variants";
/// How a storage error refusing a claimed variant starts.
const VARIANT_REFUSED: &str = "refused: ";

/// A blob up to this size is checked in memory; a larger one is spooled to a file.
const IN_MEMORY: usize = 16 << 20;

fn storage(cp: &ControlPlane) -> Result<&dyn SiteStorage, ApiError> {
    cp.storage
        .as_deref()
        .ok_or_else(|| ApiError::unavailable("this server has no storage for uploads"))
}

/// The deployment, refused unless it is still uploading.
async fn uploading(cp: &ControlPlane, raw: &str) -> Result<Deployment, ApiError> {
    let d = lookup(cp, raw).await?;
    if d.status != DeploymentStatus::Uploading {
        return Err(ApiError::conflict(
            "not_uploading",
            format!(
                "deployment {} is {}: its upload is over, nothing more can be sent to it",
                d.id,
                status_name(d.status)
            ),
        ));
    }
    Ok(d)
}

/// Opens an upload: records an `uploading` deployment of a local folder (creating its project,
/// without a repository, when it does not exist yet).
pub(super) async fn create_upload(
    cp: &ControlPlane,
    project: Option<String>,
    serving: ServingOptions,
    archive: Option<SourceArchive>,
    environment: Option<crate::projects::Environment>,
) -> Result<Response, ApiError> {
    let storage = storage(cp)?;
    if let Some(a) = &archive {
        check_archive(a, &cp.config.limits)?;
    }
    if let Some(name) = &project {
        validate_project_name(name)?;
        if cp.records.project(name).await?.is_none() {
            match cp
                .records
                .create_project(Project::new(name, "", None, now_ms()))
                .await
            {
                Ok(_) | Err(crate::projects::ProjectError::Exists(_)) => {}
                Err(e) => return Err(project_error(e)),
            }
        }
    }
    let deployment = Deployment {
        id: DeploymentId::random(),
        project,
        repo: String::new(),
        repo_credentials_withheld: false,
        git_ref: None,
        serving,
        build: Default::default(),
        status: DeploymentStatus::Uploading,
        error: None,
        commit: None,
        created_unix_ms: now_ms(),
        started_unix_ms: Some(now_ms()),
        finished_unix_ms: None,
        runner: None,
        cancel_requested: false,
        previous_commit: None,
        skip_reason: None,
        source: DeploymentSource::Folder,
        archive,
        trigger: crate::previews::Trigger {
            environment: environment.filter(|_| archive.is_some()),
            ..Default::default()
        },
        pinned: false,
    };
    cp.bus.create(&deployment.id).await?;
    cp.records.insert(deployment.clone()).await?;
    let mut answer = deployment_json(cp, &deployment);
    let received = match &archive {
        None => "Receiving a local folder through the deploy API".to_owned(),
        Some(a) => {
            // Its lookup records the upload's plan, so a collection keeps the archive it finds.
            let found = storage
                .lookup_blobs(&deployment.id, None, vec![a.hash])
                .await
                .map_err(|e| {
                    ApiError::unavailable(format!("cannot look the archive up (try again): {e}"))
                })?;
            let missing: Vec<ContentHash> =
                found[0].is_none().then_some(a.hash).into_iter().collect();
            answer["missing"] = json!(missing);
            format!(
                "Receiving a source folder through the deploy API ({} bytes{})",
                a.size,
                if missing.is_empty() {
                    ", already stored"
                } else {
                    ""
                }
            )
        }
    };
    job(cp, &deployment.id).system(received).await;
    tracing::info!(id = %deployment.id, source = archive.is_some(), "upload opened");
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// A source archive's claimed size: something, and no more than a file may be.
fn check_archive(a: &SourceArchive, limits: &BuildLimits) -> Result<(), ApiError> {
    if a.size == 0 {
        return Err(ApiError::bad_request(
            "invalid_archive",
            "a source archive is never empty",
        ));
    }
    if a.size > limits.max_file_bytes {
        return Err(ApiError::too_large(format!(
            "the source archive is {} bytes, over the {} accepted: leave build outputs and \
             dependencies out (.gitignore)",
            a.size, limits.max_file_bytes
        )));
    }
    Ok(())
}

fn job<'a>(cp: &'a ControlPlane, id: &DeploymentId) -> Job<'a> {
    Job::new(&cp.records, &cp.bus, cp.queue.metrics(), id.clone())
}

/// `missing`: which of the planned files' blobs the store lacks, and for the ones it holds what
/// it recorded of their variants (`br=<hash>:<size>,gzip=-`), so nothing stored is sent again.
pub(super) async fn missing_blobs(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let storage = storage(&cp)?;
    let d = uploading(&cp, &id).await?;
    if d.archive.is_some() {
        return Err(source_upload(&d));
    }
    let plan: Plan = parse(&body, "plan")?;
    check_files(
        plan.files.iter().map(|f| (f.path.as_str(), f.size)),
        &cp.config.limits,
    )?;
    let base = lookup_base(&cp, d.project.as_deref()).await?;
    let mut hashes: Vec<ContentHash> = plan.files.iter().map(|f| f.hash).collect();
    hashes.sort();
    hashes.dedup();
    let found = storage
        .lookup_blobs(&d.id, base, hashes.clone())
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot look blobs up (try again): {e}")))?;
    let mut missing = Vec::new();
    let mut stored = Map::new();
    for (hash, found) in hashes.iter().zip(found) {
        match found {
            None => missing.push(json!(hash)),
            Some(recorded) => {
                stored.insert(hash.to_string(), json!(recorded));
            }
        }
    }
    Ok(Json(json!({ "missing": missing, "stored": stored })))
}

/// `PUT blobs/{hash}`: one blob's bytes, hashed as they arrive; refused unless they are the
/// bytes the hash names, and no larger than a file may be.
pub(super) async fn put_blob(
    State(cp): State<ControlPlane>,
    Path((id, hash)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let variants = match headers.get(VARIANTS_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map(str::to_owned).map_err(|_| {
            ApiError::bad_request("invalid_variants", format!("{VARIANTS_HEADER} is not text"))
        })?),
    };
    let storage = storage(&cp)?;
    let hash = ContentHash::parse(&hash).map_err(|e| ApiError::bad_request("invalid_hash", e))?;
    let d = uploading(&cp, &id).await?;
    if d.archive.is_some_and(|a| a.hash != hash) {
        return Err(source_upload(&d));
    }
    let limit = cp.config.limits.max_file_bytes;
    let mut hasher = Sha256::new();
    let mut memory: Vec<u8> = Vec::new();
    let mut spool: Option<std::fs::File> = None;
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("invalid_body", format!("the upload broke off: {e}"))
        })?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::too_large(format!(
                "blob {hash} is over {limit} bytes, the largest file accepted"
            )));
        }
        hasher.update(&chunk);
        match &mut spool {
            Some(file) => file.write_all(&chunk).map_err(ApiError::internal)?,
            None if memory.len() + chunk.len() > IN_MEMORY => {
                let mut file = tempfile::tempfile().map_err(ApiError::internal)?;
                file.write_all(&memory).map_err(ApiError::internal)?;
                file.write_all(&chunk).map_err(ApiError::internal)?;
                memory = Vec::new();
                spool = Some(file);
            }
            None => memory.extend_from_slice(&chunk),
        }
    }
    let got = ContentHash::from_digest(hasher.finalize().into());
    if got != hash {
        return Err(ApiError::unprocessable(
            "hash_mismatch",
            format!("the bytes sent as blob {hash} hash to {got}"),
        ));
    }
    let body = match spool {
        Some(file) => BlobBody::File(file, size),
        None => BlobBody::Memory(Bytes::from(memory)),
    };
    storage
        .put_blob(&d.id, hash, body, variants)
        .await
        .map_err(|e| match e.strip_prefix(VARIANT_REFUSED) {
            Some(why) => ApiError::unprocessable("variant_mismatch", why),
            None => ApiError::unavailable(format!("cannot store blob {hash} (try again): {e}")),
        })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `finalize`: the manifest made from the list, checked (every blob and variant stored, sizes
/// true, variants the compression of their file), then published; the deployment is ready.
pub(super) async fn finalize_upload(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let storage = storage(&cp)?;
    let d = uploading(&cp, &id).await?;
    if let Some(archive) = d.archive {
        return queue_source(&cp, d, archive, &body).await;
    }
    let upload: Finalize = parse(&body, "finalize")?;
    let (manifest, warnings) = manifest(
        &d.id,
        d.project.as_deref(),
        &d.serving,
        upload,
        &cp.config.limits,
        now_ms(),
    )?;
    let files = manifest.files.len() as u64;
    let bytes: u64 = manifest.files.values().map(|f| f.size).sum();
    let variants: usize = manifest.files.values().map(|f| f.encodings.len()).sum();
    storage.publish_upload(&d.id, manifest).await.map_err(|e| {
        ApiError::unprocessable("upload_refused", format!("the upload was refused: {e}"))
    })?;
    let job = job(&cp, &d.id);
    for line in warnings {
        job.system(line).await;
    }
    let took = now_ms().saturating_sub(d.created_unix_ms);
    job.log(
        now_ms(),
        LogStream::System,
        format!(
            "Published {files} files ({bytes} bytes) and {variants} precompressed variants from a local folder, in {:.1}s",
            took as f64 / 1000.0
        ),
    )
    .await;
    job.finish_and_archive(
        cp.archive.as_deref(),
        Finished {
            outcome: Outcome {
                status: DeploymentStatus::Ready,
                error: None,
                skip_reason: None,
                exit_code: None,
                duration_ms: Some(took),
                files: Some(files),
                bytes: Some(bytes),
            },
            commit: None,
        },
    )
    .await;
    let d = lookup(&cp, &id).await?;
    Ok(Json(deployment_json(&cp, &d)))
}

/// The refusal of a folder's blob request on an upload that sends one source archive.
fn source_upload(d: &Deployment) -> ApiError {
    ApiError::conflict(
        "source_upload",
        format!(
            "deployment {} receives one source archive ({}): put that blob and finalize",
            d.id,
            d.archive.map(|a| a.hash.to_string()).unwrap_or_default()
        ),
    )
}

/// `finalize` of a source upload: once its archive is stored, the deployment is queued and
/// built with its project's settings, as a push to its repository would be.
async fn queue_source(
    cp: &ControlPlane,
    d: Deployment,
    archive: SourceArchive,
    body: &[u8],
) -> Result<Json<Value>, ApiError> {
    let empty: Map<String, Value> = parse(body, "finalize")?;
    if !empty.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "a source upload's finalize takes no fields: the archive is the deployment",
        ));
    }
    let found = storage(cp)?
        .lookup_blobs(&d.id, None, vec![archive.hash])
        .await
        .map_err(|e| {
            ApiError::unavailable(format!("cannot look the archive up (try again): {e}"))
        })?;
    if found[0].is_none() {
        return Err(ApiError::unprocessable(
            "upload_refused",
            format!("the source archive {} was never uploaded", archive.hash),
        ));
    }
    let build = match &d.project {
        Some(name) => cp
            .records
            .project(name)
            .await?
            .map(|p| {
                let environment = d
                    .trigger
                    .environment
                    .unwrap_or(crate::projects::Environment::Preview);
                p.build_for(environment, false)
            })
            .unwrap_or_default(),
        None => Default::default(),
    };
    build
        .validate(cp.config.limits.timeout_secs)
        .map_err(|e| ApiError::bad_request("invalid_build", e))?;
    let place = cp.queue.reserve().map_err(submit_error)?;
    let base = lookup_base(cp, d.project.as_deref()).await?;
    let me = cp.queue.instance().to_owned();
    let mut won = false;
    let stored = build.without_secret_values();
    let queued = cp
        .records
        .update(&d.id, |rec| {
            won = rec.status == DeploymentStatus::Uploading;
            if won {
                rec.status = DeploymentStatus::Queued;
                rec.runner = Some(me.clone());
                rec.build = stored.clone();
                rec.started_unix_ms = None;
            }
            Ok::<_, ApiError>(())
        })
        .await?;
    let Some(queued) = queued.filter(|_| won) else {
        return Err(uploading(cp, d.id.as_str()).await.err().unwrap_or_else(|| {
            ApiError::conflict("not_uploading", "the upload ended while it was finalized")
        }));
    };
    place
        .submit(BuildJob {
            deployment: d.id.clone(),
            project: d.project.clone(),
            repo: String::new(),
            git_ref: None,
            serving: d.serving.clone(),
            build,
            limits: cp.config.limits.clone(),
            cache_key: Some(queued.cache_key()),
            previous_commit: None,
            base,
            archive: Some(archive),
        })
        .map_err(submit_error)?;
    cp.records
        .announce(crate::events::EventKind::Queued, &queued, None);
    job(cp, &d.id)
        .system(format!(
            "Received the source folder ({} bytes); queued for a build",
            archive.size
        ))
        .await;
    tracing::info!(id = %d.id, "source upload queued");
    Ok(Json(deployment_json(cp, &queued)))
}

/// `POST /api/gc`: one garbage collection of blobs now (edges also run one periodically).
pub(super) async fn collect_garbage(
    State(cp): State<ControlPlane>,
) -> Result<Json<Value>, ApiError> {
    let report = storage(&cp)?
        .collect_garbage(cp.config.gc_grace)
        .await
        .map_err(|e| {
            ApiError::unavailable(format!(
                "the collection stopped (nothing more deleted): {e}"
            ))
        })?;
    tracing::info!(
        deleted = report.deleted,
        freed = report.freed_bytes,
        "blobs collected"
    );
    Ok(Json(json!(report)))
}

/// Cancels an upload (nothing was published): the deployment ends `canceled`.
pub(super) async fn cancel_upload(cp: &ControlPlane, id: &DeploymentId) {
    job(cp, id)
        .finish_and_archive(cp.archive.as_deref(), Finished::canceled())
        .await;
}
