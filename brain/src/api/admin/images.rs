//! OS images: template disc files the tails hold, registered here so
//! customers can name them as a `distribution` when imaging a disc.
//!
//! `PUT /admin/images/{name}/content` uploads the template's bytes (a raw
//! disc image, at most the registered `size`) into
//! `<data dir>/templates/NAME.raw`; the boot HTTP server serves that
//! folder at `/templates/`, where a tail without its own copy fetches the
//! template before it copies it onto a disc (docs/storage.md, "Templates").

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{admin, body, name_problem, required_u64_in, running};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::model::{Image, OperationKind};

/// Largest template: the 2 TiB disc limit, in MiB.
const MAX_SIZE: u64 = 2 * 1024 * 1024;

/// Where template files live, under the data dir.
pub const TEMPLATES_DIR: &str = "templates";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/images", get(list_images).post(create_image))
        .route("/admin/images/{name}", get(show_image).delete(delete_image))
        .route(
            "/admin/images/{name}/content",
            put(upload_content).layer(DefaultBodyLimit::disable()),
        )
}

/// Streams the body into `NAME.raw` (a temporary file renamed into place
/// once complete and synced, so tails never fetch half a template).
async fn upload_content(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let limit = {
        let model = state.db.read();
        model.images.get(&name).ok_or(ApiError::NotFound)?.size * 1024 * 1024
    };
    let internal =
        |what: &str, e: std::io::Error| ApiError::Internal(format!("template {name}: {what}: {e}"));
    let dir = state.templates.as_ref().clone();
    let tmp = dir.join(format!(".{name}.raw.part"));
    let path = dir.join(format!("{name}.raw"));
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| internal("creating", e))?;
    let mut stream = body.into_data_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(ApiError::refused(format!(
                    "upload of {name} broke off: {e}"
                )));
            }
        };
        bytes += chunk.len() as u64;
        if bytes > limit {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ApiError::field(
                "content",
                format!(
                    "is larger than the image's size ({} MiB)",
                    limit / 1024 / 1024
                ),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| internal("writing", e))?;
    }
    file.sync_all().await.map_err(|e| internal("syncing", e))?;
    drop(file);
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| internal("renaming", e))?;
    if let Ok(d) = tokio::fs::File::open(&dir).await {
        let _ = d.sync_all().await;
    }
    tracing::info!(image = %name, bytes, "template content stored");
    Ok(Json(json!({"name": name, "bytes": bytes})))
}

fn image_view(image: &Image) -> Value {
    json!({
        "name": image.name,
        "description": image.description,
        "size": image.size,
    })
}

async fn list_images(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    Ok(Json(Value::Array(
        model.images.values().map(image_view).collect(),
    )))
}

async fn show_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let image = model.images.get(&name).ok_or(ApiError::NotFound)?;
    Ok(Json(image_view(image)))
}

async fn create_image(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let name = f.required_string("name");
    if let Some(problem) = name.as_deref().and_then(name_problem) {
        f.error("name", problem);
    }
    let description = f.string("description").unwrap_or_default();
    if description.chars().count() > 200 {
        f.error("description", "is too long (maximum is 200 characters)");
    }
    let size = required_u64_in(&mut f, "size", 1, MAX_SIZE);
    let image = state
        .db
        .write(move |tx| {
            if let Some(name) = &name
                && tx.model().images.contains_key(name)
            {
                f.error("name", "has already been taken");
            }
            f.finish()?;
            let (Some(name), Some(size)) = (name, size) else {
                return Err(ApiError::Internal("validated image fields missing".into()));
            };
            let image = Image {
                name,
                description,
                size,
            };
            tx.put(image.clone())?;
            tracing::info!(image = %image.name, size = image.size, "image registered");
            Ok(image)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(image_view(&image))))
}

async fn delete_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&state, &caller)?;
    let file = state.templates.join(format!("{name}.raw"));
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            if !model.images.contains_key(&name) {
                return Err(ApiError::NotFound);
            }
            let busy = running(model, |k| {
                matches!(k, OperationKind::Reimage { distribution, .. } if *distribution == name)
            });
            if let Some(op) = busy {
                return Err(ApiError::refused(format!(
                    "image {name} is being copied onto a disc (operation {}); try again when it finishes",
                    op.id
                )));
            }
            tx.delete::<Image>(name.clone())?;
            tracing::info!(image = %name, "image removed");
            Ok::<_, ApiError>(())
        })
        .await?;
    // Its content, if uploaded (tails keep their copies until restarted).
    let _ = tokio::fs::remove_file(&file).await;
    Ok(StatusCode::NO_CONTENT)
}
