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

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use crate::model::Model;

/// Grades offered even before any pool of that grade exists.
pub const BASE_STORAGE_GRADES: &[&str] = &["sata", "ssd"];

pub const HARDWARE_PROFILES: &[&str] = &["virtio2013", "compatibility2013"];

/// qemu's keymap names (`-k`).
pub const KEYMAPS: &[&str] = &[
    "ar", "bepo", "cz", "da", "de", "de-ch", "en-gb", "en-us", "es", "et", "fi", "fo", "fr",
    "fr-be", "fr-ca", "fr-ch", "hr", "hu", "is", "it", "ja", "lt", "lv", "mk", "nl", "no", "pl",
    "pt", "pt-br", "ru", "sl", "sv", "th", "tr",
];

/// qemu key names (QKeyCode) a `sendkey` signal may combine with `-`,
/// e.g. `ctrl-alt-delete`.
pub const SENDKEYS: &[&str] = &[
    // Modifiers.
    "shift",
    "shift_r",
    "alt",
    "alt_r",
    "ctrl",
    "ctrl_r",
    "meta_l",
    "meta_r",
    "menu",
    // Editing and navigation.
    "esc",
    "tab",
    "ret",
    "spc",
    "backspace",
    "caps_lock",
    "insert",
    "delete",
    "home",
    "end",
    "pgup",
    "pgdn",
    "left",
    "up",
    "down",
    "right",
    "print",
    "sysrq",
    "pause",
    "num_lock",
    "scroll_lock",
    // Function keys.
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "f6",
    "f7",
    "f8",
    "f9",
    "f10",
    "f11",
    "f12",
    // Digits and letters.
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "p",
    "q",
    "r",
    "s",
    "t",
    "u",
    "v",
    "w",
    "x",
    "y",
    "z",
    // Punctuation.
    "minus",
    "equal",
    "bracket_left",
    "bracket_right",
    "semicolon",
    "apostrophe",
    "grave_accent",
    "backslash",
    "comma",
    "dot",
    "slash",
    "asterisk",
    "less",
    // Keypad.
    "kp_0",
    "kp_1",
    "kp_2",
    "kp_3",
    "kp_4",
    "kp_5",
    "kp_6",
    "kp_7",
    "kp_8",
    "kp_9",
    "kp_divide",
    "kp_multiply",
    "kp_subtract",
    "kp_add",
    "kp_enter",
    "kp_decimal",
];

pub fn routes() -> Router<AppState> {
    Router::new().route("/definitions", get(definitions))
}

/// Every grade a disc may ask for: pools' grades plus the base ones.
pub fn storage_grades(model: &Model) -> Vec<String> {
    let mut grades: BTreeSet<String> = model.pools.values().map(|p| p.grade.clone()).collect();
    grades.extend(BASE_STORAGE_GRADES.iter().map(|g| g.to_string()));
    grades.into_iter().collect()
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
