//! `GET /definitions` (bigv-api.md §3): the vocabulary clients check input
//! against before they send it. The only endpoint that needs no login.
//!
//! The lists are public so other handlers validate against the same
//! words the clients were told about.
//!
//! Decisions ([G]):
//! - `distributions` are the stored images, sorted by name.
//! - `storage_grades` are the grades of the pools tails have reported,
//!   plus `sata` and `ssd` always: a fresh cluster (or one whose tails are
//!   all down) still tells clients the grades it sells, and a disc of
//!   either grade simply waits for a pool to appear.
//! - `hardware_profiles` are the two the heads implement; `keymaps` and
//!   `sendkeys` are qemu's own names, so they pass straight through to it.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::discs::storage_grades;
use super::names::{HARDWARE_PROFILES, KEYMAPS, SENDKEYS};
use crate::model::Model;

pub fn routes() -> Router<AppState> {
    Router::new().route("/definitions", get(definitions))
}

fn grade_description(grade: &str) -> String {
    match grade {
        "sata" => "Standard storage on spinning SATA discs".into(),
        "ssd" => "Fast storage on solid-state discs".into(),
        "sas" => "Faster storage on spinning SAS discs".into(),
        "archive" => "Cheap, slow storage for backups and archives".into(),
        "iceberg" => "Cold storage for backups".into(),
        other => format!("{other} storage"),
    }
}

fn definitions_json(model: &Model) -> Value {
    let distributions: Vec<&str> = model.images.keys().map(String::as_str).collect();
    let distribution_descriptions: BTreeMap<&str, &str> = model
        .images
        .values()
        .map(|i| (i.name.as_str(), i.description.as_str()))
        .collect();
    let grades = storage_grades(model);
    let grade_descriptions: BTreeMap<&str, String> = grades
        .iter()
        .map(|g| (g.as_str(), grade_description(g)))
        .collect();
    let item = |id: &str, data: Value| json!({"id": id, "data": data});
    json!([
        item("distributions", json!(distributions)),
        item(
            "distribution_descriptions",
            json!(distribution_descriptions)
        ),
        item("storage_grades", json!(grades)),
        item("storage_grade_descriptions", json!(grade_descriptions)),
        item("zone_names", json!(model.settings.zones)),
        item("hardware_profiles", json!(HARDWARE_PROFILES)),
        item("keymaps", json!(KEYMAPS)),
        item("sendkeys", json!(SENDKEYS)),
    ])
}

async fn definitions(State(state): State<AppState>) -> Json<Value> {
    Json(definitions_json(&state.db.read()))
}
