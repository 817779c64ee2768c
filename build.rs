//! Puts the git revision into `hub --version` (HUB_GIT_REV). Without git or
//! outside a checkout (a source tarball, `cargo install` from a copy) it is
//! "unknown". Reruns only when HEAD or the branch it points to moves, not on
//! every source edit.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    // The commit only: a "modified" flag would go stale, since the script
    // does not rerun on source edits.
    let text = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HUB_GIT_REV={text}");
    // Watch HEAD, the ref it names and packed-refs (wherever this checkout
    // or worktree keeps them); nothing at all without git.
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(&["rev-parse", "--git-path", &head_ref]));
    }
    watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watch.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
