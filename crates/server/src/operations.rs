//! `ferrolink backup` and `ferrolink restore`: the data directory copied
//! whole — the database through SQLite's online backup (consistent while
//! the server writes), everything else (certificates and their keys, the
//! trust-signing key, app front ends) file by file with its permissions.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use ferrolink::storage::{DB_FILE, Store};

/// The lock `serve` holds on its data directory for as long as it runs.
pub(crate) const LOCK_FILE: &str = "ferrolink.lock";

/// Takes the data directory's lock, or says who holds it. `serve` keeps
/// the returned file open (the lock goes with it when the process ends,
/// however it ends).
pub(crate) fn lock_data_dir(data: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let path = data.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `ferrolink serve` is running on {} (it holds {LOCK_FILE}); stop it first",
            data.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The database's own files, which the online backup replaces, and the
/// lock, which belongs to a running server.
fn is_database_file(name: &str) -> bool {
    name == DB_FILE
        || name == format!("{DB_FILE}-wal")
        || name == format!("{DB_FILE}-shm")
        || name == LOCK_FILE
}

/// Copies `from` into `to` (created), except the database's files at the
/// top level; permissions are kept, symlinks are refused.
fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<u64> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut files = 0;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if top && is_database_file(&name.to_string_lossy()) {
            continue;
        }
        let kind = entry.file_type()?;
        let (src, dst) = (entry.path(), to.join(&name));
        if kind.is_dir() {
            files += copy_tree(&src, &dst, false)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
            files += 1;
        } else {
            bail!(
                "{} is neither a file nor a folder; the data directory should hold neither links nor devices",
                src.display()
            );
        }
    }
    Ok(files)
}

/// `p` with symlinks and `..` resolved as far as it exists: its nearest
/// existing ancestor canonicalized, the rest appended.
fn resolve(p: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(p)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize()?;
    for name in rest.into_iter().rev() {
        resolved.push(name);
    }
    Ok(resolved)
}

fn is_empty_dir(p: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(p)?.next().is_none())
}

/// `ferrolink backup DEST`.
pub(crate) fn backup(data: &Path, dest: &Path) -> Result<()> {
    if !data.join(DB_FILE).is_file() {
        bail!(
            "{} holds no ferrolink database; pass the server's --data directory",
            data.display()
        );
    }
    // A destination inside the data directory would be copied into itself.
    let data_real = data
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", data.display()))?;
    if resolve(dest)?.starts_with(&data_real) {
        bail!(
            "{} is inside the data directory {}; back up to a folder outside it",
            dest.display(),
            data.display()
        );
    }
    if dest.exists() && !(dest.is_dir() && is_empty_dir(dest)?) {
        bail!(
            "{} already exists; back up into a new folder (for example one named by the date)",
            dest.display()
        );
    }
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    // Owner-only, like the data directory: the copy holds private keys.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700))?;
    }
    // The database first: it is the snapshot the rest is taken around.
    Store::backup(data, &dest.join(DB_FILE))
        .with_context(|| format!("cannot copy the database to {}", dest.display()))?;
    let files = copy_tree(data, dest, true)?;
    println!(
        "backed up {} to {} (the database, checked with PRAGMA integrity_check, and {files} other file(s))",
        data.display(),
        dest.display()
    );
    println!(
        "restore with: ferrolink --data DIR restore {} (with the server stopped)",
        dest.display()
    );
    Ok(())
}

/// `ferrolink restore SRC`.
pub(crate) fn restore(src: &Path, data: &Path, replace: bool) -> Result<()> {
    let db = src.join(DB_FILE);
    if !db.is_file() {
        bail!(
            "{} is not a ferrolink backup (no {DB_FILE}); pass a folder `ferrolink backup` wrote",
            src.display()
        );
    }
    // Check the copy before anything is moved.
    {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .with_context(|| format!("cannot open {}", db.display()))?;
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .with_context(|| format!("cannot check {}", db.display()))?;
        if ok != "ok" {
            bail!("{} fails SQLite's integrity check: {ok}", db.display());
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let sibling = |what: &str| {
        let name = data
            .file_name()
            .map_or("ferrolink-data".into(), |n| n.to_string_lossy());
        data.with_file_name(format!("{name}.{what}-{stamp}"))
    };
    let occupied = data.exists() && !is_empty_dir(data)?;
    if occupied {
        if !replace {
            bail!(
                "{} is not empty; stop the server and pass --replace to move it aside, or restore into a new --data directory",
                data.display()
            );
        }
        // A running server would go on writing into the moved directory.
        drop(lock_data_dir(data)?);
    }
    // Copied and opened beside the target first, so a failure (a full
    // disk, a bad copy) leaves the data directory as it was.
    let staging = sibling("restoring");
    let staged = copy_tree(src, &staging, false).and_then(|files| {
        // Opening runs any migrations a newer binary has, and proves the copy.
        Store::open(&staging)
            .with_context(|| format!("cannot open the restored copy {}", staging.display()))?;
        Ok(files)
    });
    let files = match staged {
        Ok(files) => files,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.context(format!("{} was left as it was", data.display())));
        }
    };
    let mut aside: Option<PathBuf> = None;
    if data.exists() {
        let to = if occupied {
            sibling("before-restore")
        } else {
            sibling("empty")
        };
        std::fs::rename(data, &to)
            .with_context(|| format!("cannot move {} aside to {}", data.display(), to.display()))?;
        if occupied {
            aside = Some(to);
        } else {
            let _ = std::fs::remove_dir(&to);
        }
    }
    if let Err(e) = std::fs::rename(&staging, data) {
        if let Some(to) = &aside {
            let _ = std::fs::rename(to, data);
        }
        return Err(e).with_context(|| {
            format!(
                "cannot move the restored copy {} to {}",
                staging.display(),
                data.display()
            )
        });
    }
    println!(
        "restored {} into {} ({files} file(s))",
        src.display(),
        data.display()
    );
    if let Some(to) = aside {
        println!("the previous data directory is at {}", to.display());
    }
    Ok(())
}
