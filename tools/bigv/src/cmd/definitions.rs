//! `show images|storage|zones|hwprofiles`: the brain's vocabulary, from
//! `GET /definitions` (no login needed).

use serde_json::{Value, json};

use super::Ctx;
use crate::error::Result;

fn listing(ctx: &Ctx, items: Vec<(String, String)>) {
    let value = Value::Array(
        items
            .iter()
            .map(|(n, d)| json!({"name": n, "description": d}))
            .collect(),
    );
    ctx.out.show(
        &value,
        &["Name", "Description"],
        || {
            items
                .iter()
                .map(|(n, d)| vec![n.clone(), d.clone()])
                .collect()
        },
        || {
            if items.is_empty() {
                return "None.\n".into();
            }
            let width = items.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
            items
                .iter()
                .map(|(n, d)| {
                    if d.is_empty() {
                        format!("{n}\n")
                    } else {
                        format!("{n:width$}  {d}\n")
                    }
                })
                .collect()
        },
    );
}

fn described(
    names: &[String],
    descriptions: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| (n.clone(), descriptions.get(n).cloned().unwrap_or_default()))
        .collect()
}

pub fn images(ctx: &Ctx) -> Result<()> {
    let d = ctx.definitions()?;
    listing(
        ctx,
        described(&d.distributions, &d.distribution_descriptions),
    );
    Ok(())
}

pub fn storage(ctx: &Ctx) -> Result<()> {
    let d = ctx.definitions()?;
    listing(
        ctx,
        described(&d.storage_grades, &d.storage_grade_descriptions),
    );
    Ok(())
}

pub fn zones(ctx: &Ctx) -> Result<()> {
    let d = ctx.definitions()?;
    listing(
        ctx,
        d.zone_names
            .iter()
            .map(|z| (z.clone(), String::new()))
            .collect(),
    );
    Ok(())
}

fn profile_description(p: &str) -> &'static str {
    if p.starts_with("virtio") {
        "Virtio devices: fast; for modern operating systems"
    } else if p.starts_with("compat") {
        "Emulated IDE discs and e1000 network: for old or unusual operating systems"
    } else {
        ""
    }
}

pub fn hwprofiles(ctx: &Ctx) -> Result<()> {
    let d = ctx.definitions()?;
    listing(
        ctx,
        d.hardware_profiles
            .iter()
            .map(|p| (p.clone(), profile_description(p).to_owned()))
            .collect(),
    );
    Ok(())
}
