//! `banger config show`: the effective settings and where each came from.

use banger_config::{ConfigFile, Source, config_path, effective};
use banger_paths::Layout;
use serde::Serialize;

use super::format::table;
use super::print_json;
use crate::CliError;

/// `config show --json`.
#[derive(Debug, Serialize)]
struct Shown {
    file: String,
    file_exists: bool,
    settings: Vec<ShownSetting>,
}

#[derive(Debug, Serialize)]
struct ShownSetting {
    key: &'static str,
    value: String,
    /// default, file, env or flag.
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<&'static str>,
    overridden_by: &'static str,
}

pub(crate) fn show(layout: &Layout, json: bool) -> Result<(), CliError> {
    let path = config_path(&layout.config_dir);
    let file = ConfigFile::load(&path)?;
    let settings = effective(&file, &|var| std::env::var(var).ok());
    let exists = path.exists();
    if json {
        return print_json(&Shown {
            file: path.display().to_string(),
            file_exists: exists,
            settings: settings
                .into_iter()
                .map(|s| ShownSetting {
                    key: s.key,
                    value: s.value,
                    source: match s.source {
                        Source::Default => "default",
                        Source::File { .. } => "file",
                        Source::Env(_) => "env",
                        Source::Flag(_) => "flag",
                    },
                    line: match s.source {
                        Source::File { line } => Some(line),
                        _ => None,
                    },
                    env: match s.source {
                        Source::Env(var) => Some(var),
                        _ => None,
                    },
                    overridden_by: s.overridden_by,
                })
                .collect(),
        });
    }
    println!(
        "config file: {}{}",
        path.display(),
        if exists {
            ""
        } else {
            " (not there: built-in defaults)"
        }
    );
    let rows: Vec<Vec<String>> = settings
        .into_iter()
        .map(|s| {
            vec![
                s.key.to_owned(),
                s.value,
                s.source.to_string(),
                s.overridden_by.to_owned(),
            ]
        })
        .collect();
    table(&["KEY", "VALUE", "SOURCE", "OVERRIDDEN BY"], &rows);
    Ok(())
}
