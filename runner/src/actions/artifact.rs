//! The artifact: regular files only (BBR copies the directory with per-file SHA-256 and breaks
//! on symlinks, hard links and whitespace in names), each written under a temporary name,
//! fsynced, renamed, and the directory fsynced; then `manifest.json`, written the same way and
//! last, so that its presence means the backup finished. Restore verifies the manifest and
//! every checksum before anything touches the database.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST: &str = "manifest.json";
/// The format this runner writes: 2 adds `contents` (what the backup saw, per table).
pub const MANIFEST_FORMAT: u32 = 2;
/// The formats this runner reads: 1 (no `contents`: restored without a content check) and 2.
pub const MANIFEST_FORMATS_READ: [u32; 2] = [1, 2];
/// Prefix of in-progress names: never accepted by restore, removed on failure.
pub const PARTIAL_PREFIX: &str = ".partial-";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the artifact directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub written_by: String,
    pub adapter: String,
    pub database: String,
    pub tables: Option<Vec<String>>,
    pub server_version: String,
    pub server_major: u32,
    pub client_version: String,
    pub client_major: u32,
    /// `custom`, `directory`, `sql` or `sqlite`.
    pub dump_format: String,
    pub files: Vec<FileEntry>,
    pub started_at: String,
    pub finished_at: String,
    /// What the backup saw, per table, in the dump's own snapshot; absent in format 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<Contents>,
}

/// Per table, the rows and (unless turned off) a digest of their content, taken by the backup in
/// the snapshot its dump read. A restore compares the restored tables with it before it commits
/// or swaps, and so does a rehearsal. Not a signature: whoever can rewrite the manifest can
/// rewrite these too; they catch a dump that does not hold what the database held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    /// How each digest was computed (`postgres-row-hash64-sum/2`, ...): a check computes it alike.
    pub algorithm: String,
    /// How the counts and digests were taken in the dump's snapshot, for the reader.
    pub snapshot: String,
    pub tables: Vec<TableContents>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableContents {
    /// PostgreSQL's schema; absent for MySQL/MariaDB and SQLite (the database is the namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub name: String,
    pub rows: u64,
    /// Absent when digests were turned off (`bbr_runner.digests: false`): rows only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl TableContents {
    /// `schema.name`, or `name`.
    pub fn label(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no {MANIFEST} in {0}: the backup did not finish, or this is not a bbr-acme-db artifact"
    )]
    NoManifest(PathBuf),
    #[error("{path}: the manifest is not valid: {source}")]
    BadManifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("{0}: the artifact is corrupted: {1}")]
    Corrupted(PathBuf, String),
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// SHA-256 and size of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), ArtifactError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let digest = hasher.finalize();
    Ok((digest.iter().map(|b| format!("{b:02x}")).collect(), size))
}

pub fn fsync_path(path: &Path) -> Result<(), ArtifactError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Every regular file below `dir`, relative, sorted; anything else is an error (BBR cannot
/// carry it).
pub fn regular_files(dir: &Path, base: &Path) -> Result<Vec<PathBuf>, ArtifactError> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let kind = e.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            out.extend(regular_files(&path, base)?);
        } else if kind.is_file() {
            out.push(path.strip_prefix(base).unwrap_or(&path).to_path_buf());
        } else {
            return Err(ArtifactError::Corrupted(
                path,
                "not a regular file (BBR carries only regular files)".into(),
            ));
        }
    }
    Ok(out)
}

/// Makes a finished partial file or directory final: fsync its content, rename, fsync the dir.
pub fn publish(dir: &Path, partial: &Path, final_name: &str) -> Result<PathBuf, ArtifactError> {
    if partial.is_dir() {
        for f in regular_files(partial, partial)? {
            fsync_path(&partial.join(f))?;
        }
    }
    fsync_path(partial)?;
    let target = dir.join(final_name);
    std::fs::rename(partial, &target).map_err(io_err(&target))?;
    fsync_path(dir)?;
    Ok(target)
}

/// Records every regular file of the artifact (but the manifest) and writes the manifest last.
pub fn write_manifest(dir: &Path, mut manifest: Manifest) -> Result<Manifest, ArtifactError> {
    manifest.files.clear();
    for rel in regular_files(dir, dir)? {
        let name = rel.to_string_lossy().into_owned();
        if name == MANIFEST || name.starts_with(PARTIAL_PREFIX) {
            continue;
        }
        if name.chars().any(char::is_whitespace) {
            return Err(ArtifactError::Corrupted(
                dir.join(&rel),
                "whitespace in a file name breaks BBR's checksums".into(),
            ));
        }
        let (sha256, size) = sha256_file(&dir.join(&rel))?;
        manifest.files.push(FileEntry {
            path: name,
            size,
            sha256,
        });
    }
    let partial = dir.join(format!("{PARTIAL_PREFIX}{MANIFEST}"));
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| ArtifactError::BadManifest {
        path: partial.clone(),
        source: ManifestError::Json(e),
    })?;
    let mut f = File::create(&partial).map_err(io_err(&partial))?;
    f.write_all(&text).map_err(io_err(&partial))?;
    f.sync_all().map_err(io_err(&partial))?;
    drop(f);
    publish(dir, &partial, MANIFEST)?;
    Ok(manifest)
}

fn safe_relative(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !path.starts_with(PARTIAL_PREFIX)
}

/// Why a manifest's content is not a manifest this runner reads.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is {bytes} bytes; more than 16 MiB is not a manifest")]
    TooLarge { bytes: usize },
    /// Not JSON, or not the manifest's fields.
    #[error("{0}")]
    Json(#[source] serde_json::Error),
    #[error(
        "format_version {version} is not known; this runner reads {}",
        MANIFEST_FORMATS_READ.map(|v| v.to_string()).join(" and ")
    )]
    UnknownFormat { version: u32 },
    #[error("it lists no files")]
    NoFiles,
    /// A listed path that could leave the artifact directory, or names a partial file.
    #[error("file path `{path}` is not a plain relative path")]
    UnsafePath { path: String },
    #[error("file `{path}`: sha256 is not 64 hex digits")]
    BadSha256 { path: String },
}

/// Parses and checks a manifest's own content (not the files it lists): the manifest reader.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    if bytes.len() > 16 << 20 {
        return Err(ManifestError::TooLarge { bytes: bytes.len() });
    }
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
    if !MANIFEST_FORMATS_READ.contains(&manifest.format_version) {
        return Err(ManifestError::UnknownFormat {
            version: manifest.format_version,
        });
    }
    if manifest.files.is_empty() {
        return Err(ManifestError::NoFiles);
    }
    for f in &manifest.files {
        if !safe_relative(&f.path) {
            return Err(ManifestError::UnsafePath {
                path: f.path.clone(),
            });
        }
        if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ManifestError::BadSha256 {
                path: f.path.clone(),
            });
        }
    }
    Ok(manifest)
}

/// Reads the manifest and checks every file it lists: size, then SHA-256; and that the
/// directory holds nothing else: a file the manifest does not list could change what is
/// restored (pg_restore reads `N.dat` before `N.dat.gz`), so it is refused, not ignored.
pub fn verify(dir: &Path) -> Result<Manifest, ArtifactError> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ArtifactError::NoManifest(dir.to_path_buf()))
        }
        Err(e) => return Err(ArtifactError::Io { path, source: e }),
    };
    let manifest =
        parse_manifest(&text).map_err(|source| ArtifactError::BadManifest { path, source })?;
    for f in &manifest.files {
        let file = dir.join(&f.path);
        let meta = std::fs::symlink_metadata(&file).map_err(io_err(&file))?;
        if !meta.file_type().is_file() {
            return Err(ArtifactError::Corrupted(file, "not a regular file".into()));
        }
        if meta.len() != f.size {
            return Err(ArtifactError::Corrupted(
                file,
                format!(
                    "size is {} bytes, the manifest says {} (truncated?)",
                    meta.len(),
                    f.size
                ),
            ));
        }
        let (sha, _) = sha256_file(&file)?;
        if sha != f.sha256 {
            return Err(ArtifactError::Corrupted(
                file,
                format!("SHA-256 is {sha}, the manifest says {}", f.sha256),
            ));
        }
    }
    let listed: std::collections::BTreeSet<&str> =
        manifest.files.iter().map(|f| f.path.as_str()).collect();
    for rel in regular_files(dir, dir)? {
        let name = rel.to_string_lossy();
        if name != MANIFEST && !listed.contains(name.as_ref()) {
            return Err(ArtifactError::Corrupted(
                dir.join(&rel),
                "the manifest does not list it: an artifact holds exactly what its backup wrote, and an extra file could change what is restored; remove it, or restore from an untouched copy".into(),
            ));
        }
    }
    Ok(manifest)
}

/// Removes what a failed backup left: every partial name in the artifact directory.
pub fn remove_partials(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX) {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format_version: MANIFEST_FORMAT,
            written_by: "test".into(),
            adapter: "sqlite".into(),
            database: "acme".into(),
            tables: None,
            server_version: "3".into(),
            server_major: 3,
            client_version: "3".into(),
            client_major: 3,
            dump_format: "sqlite".into(),
            files: Vec::new(),
            started_at: now_rfc3339(),
            finished_at: now_rfc3339(),
            contents: None,
        }
    }

    #[test]
    fn a_format_1_manifest_without_contents_still_reads() {
        let mut m = manifest();
        m.format_version = 1;
        m.files.push(FileEntry {
            path: "acme-db.sqlite".into(),
            size: 1,
            sha256: "0".repeat(64),
        });
        let text = serde_json::to_string(&m).expect("json");
        assert!(!text.contains("contents"), "{text}");
        assert_eq!(parse_manifest(text.as_bytes()).expect("reads"), m);
        m.format_version = 3;
        let e = parse_manifest(&serde_json::to_vec(&m).expect("json")).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "format_version 3 is not known; this runner reads 1 and 2"
        );
    }

    #[test]
    fn written_manifest_verifies_and_detects_truncation_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("dump"), b"hello world").expect("write");
        let m = write_manifest(dir.path(), manifest()).expect("manifest");
        assert_eq!(m.files.len(), 1);
        assert_eq!(
            m.files[0].sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        verify(dir.path()).expect("verifies");
        std::fs::write(dir.path().join("dump"), b"hello worle").expect("write");
        assert!(matches!(
            verify(dir.path()),
            Err(ArtifactError::Corrupted(..))
        ));
        std::fs::write(dir.path().join("dump"), b"hello").expect("write");
        let e = verify(dir.path()).expect_err("truncated");
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn missing_manifest_and_hostile_paths_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            verify(dir.path()),
            Err(ArtifactError::NoManifest(_))
        ));
        let mut m = manifest();
        m.files.push(FileEntry {
            path: "../etc/passwd".into(),
            size: 1,
            sha256: "x".into(),
        });
        std::fs::write(
            dir.path().join(MANIFEST),
            serde_json::to_vec(&m).expect("json"),
        )
        .expect("write");
        assert!(matches!(
            verify(dir.path()),
            Err(ArtifactError::BadManifest { .. })
        ));
    }

    #[test]
    fn a_file_the_manifest_does_not_list_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("acme-db.dir")).expect("mkdir");
        std::fs::write(d.path().join("acme-db.dir/3344.dat.gz"), b"gz").expect("write");
        write_manifest(d.path(), manifest()).expect("manifest");
        verify(d.path()).expect("the written artifact verifies");
        std::fs::write(d.path().join("acme-db.dir/3344.dat"), b"edited").expect("write");
        let e = verify(d.path()).expect_err("an unlisted file is refused");
        assert!(
            e.to_string()
                .contains("3344.dat: the artifact is corrupted: the manifest does not list it"),
            "{e}"
        );
    }

    #[test]
    fn symlinks_in_the_artifact_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).expect("symlink");
        assert!(matches!(
            write_manifest(dir.path(), manifest()),
            Err(ArtifactError::Corrupted(..))
        ));
    }
}
