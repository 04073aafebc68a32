//! `ferrolink backup` and `ferrolink restore`: the data directory copied
//! whole — the database through SQLite's online backup (consistent while
//! the server writes), everything else (certificates and their keys, the
//! trust-signing key, app front ends) file by file with its permissions.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use ferrolink::storage::{DB_FILE, Store};

/// The database's own files, which the online backup replaces.
fn is_database_file(name: &str) -> bool {
    name == DB_FILE || name == format!("{DB_FILE}-wal") || name == format!("{DB_FILE}-shm")
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
    let store = Store::open(data)
        .with_context(|| format!("cannot open the database in {}", data.display()))?;
    store
        .backup_to(&dest.join(DB_FILE))
        .with_context(|| format!("cannot copy the database to {}", dest.display()))?;
    drop(store);
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
    let mut aside: Option<PathBuf> = None;
    if data.exists() && !is_empty_dir(data)? {
        if !replace {
            bail!(
                "{} is not empty; stop the server and pass --replace to move it aside, or restore into a new --data directory",
                data.display()
            );
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!(
            "{}.before-restore-{stamp}",
            data.file_name()
                .map_or("ferrolink-data".into(), |n| n.to_string_lossy())
        );
        let to = data.with_file_name(name);
        std::fs::rename(data, &to)
            .with_context(|| format!("cannot move {} aside to {}", data.display(), to.display()))?;
        aside = Some(to);
    }
    let files = copy_tree(src, data, false)?;
    // Opening runs any migrations a newer binary has, and proves the copy.
    Store::open(data).with_context(|| format!("cannot open the restored {}", data.display()))?;
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
