//! Finding and loading the topology file the way Compose does: `-f FILE`, else
//! `compose.yaml` (and its usual siblings) in the current directory; variables from the
//! environment over the project's `.env`.

use std::path::{Path, PathBuf};

use berth_protocol::topology::{
    Diagnostic, EnvEntry, LoadOptions, Loaded, LocalFiles, TopologyError, Variables, load,
    parse_env_file,
};

/// The file names looked for, in order, when no `-f` is given.
pub(crate) const DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Why a project could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProjectError {
    /// No file given and none of the default names exists.
    #[error("no topology file: none of {} is in {}; name one with -f FILE", DEFAULT_FILES.join(", "), dir.display())]
    NotFound {
        /// Where we looked.
        dir: PathBuf,
    },
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The project's `.env` is malformed.
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    DotEnv {
        /// Each bad line.
        problems: Vec<Diagnostic>,
    },
    /// The topology has problems.
    #[error(transparent)]
    Invalid(#[from] TopologyError),
}

/// Resolves the topology file: the one given, or the first default name present.
pub(crate) fn find_file(given: Option<&Path>) -> Result<PathBuf, ProjectError> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let dir = std::env::current_dir().map_err(|source| ProjectError::Unreadable {
        path: PathBuf::from("."),
        source,
    })?;
    DEFAULT_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(ProjectError::NotFound { dir })
}

/// Loads and validates the topology in `file`.
pub(crate) fn load_project(file: &Path) -> Result<Loaded, ProjectError> {
    let text = std::fs::read_to_string(file).map_err(|source| ProjectError::Unreadable {
        path: file.to_path_buf(),
        source,
    })?;
    let dir = project_dir(file);
    let vars = variables(&dir)?;
    let default_name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("default")
        .to_owned();
    let file_name = file.display().to_string();
    let loaded = load(
        &text,
        &LoadOptions {
            file_name: &file_name,
            dir: &dir,
            default_name: &default_name,
            vars: &vars,
            files: &LocalFiles,
        },
    )?;
    Ok(loaded)
}

/// The directory a topology file's relative paths are read from.
pub(crate) fn project_dir(file: &Path) -> PathBuf {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf())
}

/// The process environment over the project's `.env` file, if there is one.
fn variables(dir: &Path) -> Result<Variables, ProjectError> {
    let mut vars = Variables::from_pairs(std::env::vars());
    let dotenv = dir.join(".env");
    let Ok(text) = std::fs::read_to_string(&dotenv) else {
        return Ok(vars);
    };
    match parse_env_file(&text) {
        Ok(entries) => {
            // Compose expands `${...}` in `.env` values too, in order: each value sees
            // the environment and the entries above it.
            let mut problems = Vec::new();
            for entry in entries {
                let EnvEntry::Value(k, v) = entry else {
                    continue;
                };
                match berth_protocol::topology::interpolate(&v, &vars) {
                    Ok(done) => vars.fill_missing([(k, done.value)]),
                    Err(message) => problems.push(Diagnostic {
                        file: dotenv.display().to_string(),
                        line: 0,
                        column: 1,
                        path: k,
                        message,
                    }),
                }
            }
            if problems.is_empty() {
                Ok(vars)
            } else {
                Err(ProjectError::DotEnv { problems })
            }
        }
        Err(problems) => Err(ProjectError::DotEnv {
            problems: problems
                .into_iter()
                .map(|p| Diagnostic {
                    file: dotenv.display().to_string(),
                    line: p.line,
                    column: 1,
                    path: String::new(),
                    message: p.message,
                })
                .collect(),
        }),
    }
}
