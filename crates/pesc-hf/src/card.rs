//! The Hub model card (`README.md`): YAML front matter (`base_model`,
//! `license`, `tags`), a title, a description, a facts table and the command
//! that made the folder.

use crate::Model;
use std::fmt::Write as _;

/// What the card says about the new model.
pub struct Card<'a> {
    /// The dense source.
    pub base: &'a Model,
    /// Hub id or name of the base model (`base_model`).
    pub base_model: String,
    /// Title line.
    pub title: String,
    /// Short description paragraph(s).
    pub description: String,
    /// Rows of the facts table.
    pub facts: Vec<(String, String)>,
    /// Tags.
    pub tags: Vec<&'static str>,
    /// The command that produced the folder.
    pub command: String,
    /// A usage section (PESC folders: loading through the modeling code they carry).
    pub usage: Option<&'static str>,
}

/// `_name_or_path` from the model's config when it looks like a Hub id.
#[must_use]
pub fn hub_id(model: &Model) -> Option<String> {
    let id = model.config.raw.get("_name_or_path").and_then(|v| v.as_str())?;
    (id.split('/').count() == 2 && !id.starts_with('/') && !id.starts_with('.')).then(|| id.to_owned())
}

/// The base model's name: its Hub id (see [`hub_id`]), else its folder name.
#[must_use]
pub fn base_model_name(model: &Model) -> String {
    hub_id(model).unwrap_or_else(|| {
        std::fs::canonicalize(&model.dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "dense-model".into())
    })
}

/// The `license:` of the base folder's model card front matter, if any.
#[must_use]
pub fn base_license(model: &Model) -> Option<String> {
    let text = pesc_io::read_capped(&model.dir.join("README.md"), 1 << 20).ok()?;
    let text = String::from_utf8(text).ok()?;
    let front = text.strip_prefix("---\n")?.split("\n---").next()?;
    front.lines().find_map(|l| l.strip_prefix("license:").map(|v| v.trim().trim_matches('"').to_owned())).filter(|v| !v.is_empty())
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

impl Card<'_> {
    /// Renders the card.
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = String::from("---\n");
        let _ = writeln!(s, "base_model: {}", yaml_str(&self.base_model));
        s.push_str("base_model_relation: merge\n");
        if let Some(l) = base_license(self.base) {
            let _ = writeln!(s, "license: {}", yaml_str(&l));
        }
        s.push_str("tags:\n");
        for t in &self.tags {
            let _ = writeln!(s, "- {t}");
        }
        s.push_str("---\n\n");
        let _ = write!(s, "# {}\n\n{}\n\n", self.title, self.description);
        s.push_str("| | |\n|---|---|\n");
        for (k, v) in &self.facts {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        if let Some(usage) = self.usage {
            let _ = write!(s, "\n## Usage\n\n{usage}\n");
        }
        let _ = write!(
            s,
            "\nMade with pesc-convert {} by:\n\n```sh\n{}\n```\n\nEvery file is listed with its SHA-256 in `SHA256SUMS` (`sha256sum -c SHA256SUMS`) and `pesc-manifest.json` (`pesc-convert verify-manifest .`).\n",
            env!("CARGO_PKG_VERSION"),
            self.command
        );
        s
    }
}

/// Formats a count with thousands separators.
#[must_use]
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
