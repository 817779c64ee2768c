//! Private files: the data directory and everything in it are readable by
//! the node's user only (0700 directories, 0600 files). Values and API key
//! hashes live there.

use std::io;
use std::path::Path;

/// Creates `dir` (and parents) if missing and makes it 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

/// Makes every directory under `dir` 0700 and every file 0600 (what sled
/// created with the process umask).
pub fn private_tree(dir: &Path) -> io::Result<()> {
    set_mode(dir, 0o700)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            private_tree(&path)?;
        } else {
            set_mode(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Files the process creates from now on are private (umask 077). For
/// `hub serve` and friends: sled creates new files (snapshots, blobs) later.
pub fn private_umask() {
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}
