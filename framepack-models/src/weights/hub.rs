//! Finding checkpoint folders: an explicit path, or the Hugging Face cache.
//!
//! The Hugging Face cache lays a repository out as
//! `<cache>/models--OWNER--NAME/refs/<revision>` (a file holding a commit hash) and
//! `<cache>/models--OWNER--NAME/snapshots/<commit>/...` (the files). We read that layout
//! directly, so checkpoints downloaded by the Python tools (FramePack keeps them under
//! `./hf_download/hub`) are found without copying anything.

use std::path::{Path, PathBuf};

use super::WeightError;

/// A folder of a Hugging Face model repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFolder {
    /// `owner/name`, e.g. `lllyasviel/FramePackI2V_HY`.
    pub repo_id: String,
    /// Branch, tag or commit; `main` by default.
    pub revision: String,
    /// Subfolder inside the repository (`vae`, `text_encoder`, ...), if any.
    pub subfolder: Option<String>,
}

impl RepoFolder {
    /// The root of `repo_id` at `main`.
    pub fn new(repo_id: impl Into<String>) -> Self {
        Self {
            repo_id: repo_id.into(),
            revision: "main".into(),
            subfolder: None,
        }
    }

    /// The same repository, one subfolder down.
    pub fn subfolder(mut self, subfolder: impl Into<String>) -> Self {
        self.subfolder = Some(subfolder.into());
        self
    }

    /// The same repository at another revision.
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// `owner/name[/subfolder]`, for messages.
    pub fn display_name(&self) -> String {
        match &self.subfolder {
            Some(sub) => format!("{}/{}", self.repo_id, sub),
            None => self.repo_id.clone(),
        }
    }

    /// The cache folder name of the repository: `models--OWNER--NAME`.
    pub fn cache_dir_name(&self) -> String {
        format!("models--{}", self.repo_id.replace('/', "--"))
    }
}

/// The cache roots searched, in order: `$HF_HUB_CACHE`, `$HF_HOME/hub`,
/// `~/.cache/huggingface/hub`, and FramePack's own `./hf_download/hub`.
pub fn cache_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        roots.push(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        roots.push(PathBuf::from(home).join("hub"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    roots.push(PathBuf::from("hf_download/hub"));
    roots.dedup();
    roots
}

/// Looks `folder` up in one cache root; returns the snapshot folder if it exists.
pub fn find_in_cache(root: &Path, folder: &RepoFolder) -> Option<PathBuf> {
    let repo_dir = root.join(folder.cache_dir_name());
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(&folder.revision)) {
        Ok(hash) => hash.trim().to_string(),
        // A revision given as a commit hash has no ref file.
        Err(_) => folder.revision.clone(),
    };
    let mut dir = repo_dir.join("snapshots").join(commit);
    if let Some(sub) = &folder.subfolder {
        dir = dir.join(sub);
    }
    dir.is_dir().then_some(dir)
}

/// Finds the local folder of `folder`: `explicit` if given (it must exist), otherwise the
/// first cache root that has it.
pub fn locate(folder: &RepoFolder, explicit: Option<&Path>) -> Result<PathBuf, WeightError> {
    if let Some(path) = explicit {
        return if path.exists() {
            Ok(path.to_path_buf())
        } else {
            Err(WeightError::NotFound {
                what: format!("{} at {}", folder.display_name(), path.display()),
                hint: "the path given does not exist".into(),
            })
        };
    }
    let roots = cache_roots();
    roots
        .iter()
        .find_map(|root| find_in_cache(root, folder))
        .ok_or_else(|| WeightError::NotFound {
            what: format!("{} (revision {})", folder.display_name(), folder.revision),
            hint: format!(
                "searched the Hugging Face caches {}; run `framepack download`, or download \
                 https://huggingface.co/{} yourself and pass its folder explicitly",
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                folder.repo_id
            ),
        })
}

/// The files of a repository listing that belong to `folder`: everything under its subfolder,
/// or, for a repository root, the weights, indices and configs at the top level (not the
/// README or other subfolders).
pub fn files_to_fetch<'a>(
    listing: impl IntoIterator<Item = &'a str>,
    folder: &RepoFolder,
) -> Vec<String> {
    let mut files: Vec<String> = listing
        .into_iter()
        .filter(|name| match &folder.subfolder {
            Some(sub) => name.starts_with(&format!("{sub}/")),
            None => {
                !name.contains('/')
                    && (name.ends_with(".safetensors")
                        || name.ends_with(".json")
                        || name.ends_with(".txt"))
            }
        })
        .map(str::to_string)
        .collect();
    files.sort();
    files
}

/// Downloads `folder` into the Hugging Face cache (the same layout [`find_in_cache`] reads) and
/// returns its local path. Progress bars are drawn on stderr, one per file.
#[cfg(feature = "download")]
pub fn download(folder: &RepoFolder) -> Result<PathBuf, WeightError> {
    download_into(folder, None)
}

/// [`download`] into the Hugging Face cache rooted at `cache_dir` (the folder holding the
/// `models--OWNER--NAME` directories) instead of the one the environment names.
#[cfg(feature = "download")]
pub fn download_into(
    folder: &RepoFolder,
    cache_dir: Option<&Path>,
) -> Result<PathBuf, WeightError> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};

    let failed = |e: &dyn std::fmt::Display| WeightError::NotFound {
        what: format!("{} (revision {})", folder.display_name(), folder.revision),
        hint: format!(
            "download from https://huggingface.co/{} failed: {e}",
            folder.repo_id
        ),
    };
    let mut builder = ApiBuilder::from_env().with_progress(true);
    if let Some(dir) = cache_dir {
        builder = builder.with_cache_dir(dir.to_path_buf());
    }
    let api = builder.build().map_err(|e| failed(&e))?;
    let repo = api.repo(Repo::with_revision(
        folder.repo_id.clone(),
        RepoType::Model,
        folder.revision.clone(),
    ));
    let info = repo.info().map_err(|e| failed(&e))?;
    let files = files_to_fetch(info.siblings.iter().map(|s| s.rfilename.as_str()), folder);
    if files.is_empty() {
        return Err(failed(&"the repository lists no matching files"));
    }
    let mut local = None;
    for file in &files {
        let path = repo.get(file).map_err(|e| failed(&e))?;
        local.get_or_insert(path);
    }
    // `get` returns snapshots/<commit>/<file>; climb back to the folder itself.
    let mut dir = local.ok_or_else(|| failed(&"nothing was downloaded"))?;
    for _ in 0..files[0].split('/').count() {
        dir.pop();
    }
    if let Some(sub) = &folder.subfolder {
        dir = dir.join(sub);
    }
    Ok(dir)
}

/// [`locate`], falling back to [`download`] when the folder is not cached and `allow_download`
/// is set (and the crate was built with the `download` feature).
pub fn locate_or_download(
    folder: &RepoFolder,
    explicit: Option<&Path>,
    allow_download: bool,
) -> Result<PathBuf, WeightError> {
    match locate(folder, explicit) {
        Ok(path) => Ok(path),
        #[cfg(feature = "download")]
        Err(WeightError::NotFound { .. }) if allow_download && explicit.is_none() => {
            download(folder)
        }
        Err(e) => {
            let _ = allow_download;
            Err(e)
        }
    }
}
