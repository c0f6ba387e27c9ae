//! Where serial consoles and process logs go: a folder removed when the
//! scenario passes and kept (its paths printed) when it fails.

use std::path::{Path, PathBuf};

pub struct Logs {
    dir: PathBuf,
    files: Vec<PathBuf>,
    /// Kept whatever happens (the demo's logs).
    keep: bool,
}

impl Logs {
    pub fn new(scenario: &str) -> Logs {
        let dir = std::env::temp_dir().join(format!("bigv-{scenario}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the log folder");
        Logs {
            dir,
            files: vec![],
            keep: false,
        }
    }

    /// Logs in `dir` (created), never removed: the demo's, for its user.
    pub fn kept_in(dir: &Path) -> Logs {
        std::fs::create_dir_all(dir).expect("creating the log folder");
        Logs {
            dir: dir.to_owned(),
            files: vec![],
            keep: true,
        }
    }

    /// A file in the folder, remembered for the failure report.
    pub fn file(&mut self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        self.files.push(p.clone());
        p
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if std::thread::panicking() {
            eprintln!("scenario failed; logs kept:");
            for f in &self.files {
                eprintln!("  {}", f.display());
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
