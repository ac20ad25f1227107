//! Temporary config files and one-line load helpers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proxyd_config::{Config, ConfigErrors, Sources};

/// A directory under the system temp dir, unique per test, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("proxyd-config-it-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The name test documents are loaded under.
pub(crate) const NAME: &str = "/t/config.toml";

/// Loads `[network]` followed by `body` (so the body starts on line 2).
pub(crate) fn load(body: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(&format!("[network]\n{body}\n"), NAME)
}

pub(crate) fn load_ok(body: &str) -> Config {
    match load(body) {
        Ok(config) => config,
        Err(errors) => panic!("{body:?} should load, got:\n{errors}"),
    }
}

/// The error lines of a load that must fail.
pub(crate) fn load_err(body: &str) -> Vec<String> {
    match load(body) {
        Ok(config) => panic!("{body:?} should fail, loaded {config:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// The effective value of `key`, as TOML text.
pub(crate) fn value(config: &Config, key: &str) -> String {
    let setting = config.settings().into_iter().find(|s| s.key == key);
    setting.unwrap_or_else(|| panic!("no setting {key}")).value.to_string()
}

/// Sources with no system or user file.
pub(crate) fn sources(files: &[&Path], overrides: &[&str]) -> Sources {
    Sources {
        system: None,
        user: None,
        files: files.iter().map(|p| p.to_path_buf()).collect(),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        profile: None,
    }
}
