//! OS images: template disc files the tails hold, registered here so
//! customers can name them as a `distribution` when imaging a disc.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{admin, body, name_problem, required_u64_in, running};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::model::{Image, OperationKind};

/// Largest template: the 2 TiB disc limit, in MiB.
const MAX_SIZE: u64 = 2 * 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/images", get(list_images).post(create_image))
        .route("/admin/images/{name}", get(show_image).delete(delete_image))
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
    Ok(StatusCode::NO_CONTENT)
}
