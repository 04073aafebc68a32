//! App front ends: each app's static files live in
//! `<data>/apps/<app>/site/`, replaced as a whole by a deploy.

use std::io;
use std::path::{Path, PathBuf};

/// Largest front end a deploy copies (all files together).
pub const MAX_SITE_BYTES: u64 = 256 * 1024 * 1024;

/// The folder an app's front end is served from.
pub fn site_dir(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join("apps").join(app).join("site")
}

/// What a deploy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deployed {
    /// Files copied.
    pub files: usize,
    /// Bytes copied.
    pub bytes: u64,
}

/// Replaces `app`'s front end with the contents of `from`. The new files
/// are copied beside the old ones and swapped in by renames, so a page
/// being served sees either the old site or the new one. Symbolic links
/// are refused (they could point anywhere on the server).
pub fn deploy_dir(data_dir: &Path, app: &str, from: &Path) -> io::Result<Deployed> {
    if !from.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a folder", from.display()),
        ));
    }
    let mut files = Vec::new();
    collect(from, Path::new(""), &mut files, &mut 0)?;
    if !files.iter().any(|(rel, _)| rel == Path::new("index.html")) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} has no index.html; an app's front end starts there",
                from.display()
            ),
        ));
    }
    install(data_dir, app, |staging| {
        let mut deployed = Deployed { files: 0, bytes: 0 };
        for (rel, abs) in &files {
            let to = staging.join(rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            deployed.bytes += std::fs::copy(abs, &to)?;
            deployed.files += 1;
        }
        Ok(deployed)
    })
}

/// Replaces `app`'s front end with files given in memory (the demo app,
/// which ships inside the binary).
pub fn deploy_files(data_dir: &Path, app: &str, files: &[(&str, &[u8])]) -> io::Result<Deployed> {
    install(data_dir, app, |staging| {
        let mut deployed = Deployed { files: 0, bytes: 0 };
        for (name, bytes) in files {
            std::fs::write(staging.join(name), bytes)?;
            deployed.files += 1;
            deployed.bytes += bytes.len() as u64;
        }
        Ok(deployed)
    })
}

fn install(
    data_dir: &Path,
    app: &str,
    fill: impl FnOnce(&Path) -> io::Result<Deployed>,
) -> io::Result<Deployed> {
    let site = site_dir(data_dir, app);
    let parent = site.parent().expect("site_dir has a parent");
    std::fs::create_dir_all(parent)?;
    let staging = parent.join(format!("site.new-{}", std::process::id()));
    let old = parent.join(format!("site.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let deployed = match fill(&staging) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let had_site = site.exists();
    if had_site {
        std::fs::rename(&site, &old)?;
    }
    std::fs::rename(&staging, &site)?;
    if had_site {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(deployed)
}

fn collect(
    root: &Path,
    rel: &Path,
    out: &mut Vec<(PathBuf, PathBuf)>,
    total: &mut u64,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let kind = entry.file_type()?;
        let rel = rel.join(entry.file_name());
        if kind.is_symlink() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is a symbolic link; deploy real files only",
                    root.join(&rel).display()
                ),
            ));
        } else if kind.is_dir() {
            collect(root, &rel, out, total)?;
        } else {
            *total += entry.metadata()?.len();
            if *total > MAX_SITE_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the front end is over {} MiB; serve large media elsewhere",
                        MAX_SITE_BYTES >> 20
                    ),
                ));
            }
            out.push((rel, entry.path()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_replaces_the_whole_site() {
        let data = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("index.html"), "v1").unwrap();
        std::fs::create_dir(src.path().join("js")).unwrap();
        std::fs::write(src.path().join("js/app.js"), "x").unwrap();
        let d = deploy_dir(data.path(), "a", src.path()).unwrap();
        assert_eq!(d.files, 2);
        let site = site_dir(data.path(), "a");
        assert_eq!(
            std::fs::read_to_string(site.join("js/app.js")).unwrap(),
            "x"
        );
        deploy_files(data.path(), "a", &[("index.html", b"v2")]).unwrap();
        assert_eq!(
            std::fs::read_to_string(site.join("index.html")).unwrap(),
            "v2"
        );
        assert!(!site.join("js").exists(), "old files are gone");
        let empty = tempfile::tempdir().unwrap();
        let err = deploy_dir(data.path(), "a", empty.path()).unwrap_err();
        assert!(err.to_string().contains("index.html"), "{err}");
        assert_eq!(
            std::fs::read_to_string(site.join("index.html")).unwrap(),
            "v2",
            "a failed deploy changes nothing"
        );
    }
}
