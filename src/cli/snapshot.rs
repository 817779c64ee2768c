//! `hub snapshot save | restore | verify`: a node to a file and back.
//!
//! `save --node URL` streams `GET /api/snapshot` from a running node (admin
//! key) into a temporary file, checks the whole file (checksum, end marker)
//! and only then renames it to FILE; `save --data-dir DIR` dumps a stopped
//! node. `restore` builds a data directory from a file, all or nothing (see
//! [`hub::snapshot::restore`]). Progress goes to stderr once a second.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

use hub::model::NodeId;
use hub::snapshot::format::{Frame, Reader};
use hub::snapshot::{restore, save, Progress};

use super::progress::Progress as Ticker;

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub cmd: SnapshotCmd,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Save a consistent copy of a node (running: --node; stopped: --data-dir).
    #[command(group(clap::ArgGroup::new("source").required(true).args(["data_dir", "node"])))]
    Save {
        /// A stopped node's data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A running node, e.g. http://127.0.0.1:8080 (needs an admin key with --token when it runs with auth).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        remote: super::remote::RemoteArgs,
        /// Share of time (percent, 1-100) a running node spends on the
        /// snapshot; the rest stays with its writes.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
        pace: Option<u8>,
        /// The snapshot file to write (replaced only once it is complete).
        file: PathBuf,
    },
    /// Make a data directory from a snapshot (the directory must be new or empty).
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// Restore as another node (a new member seeded with the data); by
        /// default the snapshot's own node (disaster recovery).
        #[arg(long)]
        node_id: Option<String>,
    },
    /// Check a snapshot file (checksum, records, totals) without restoring it.
    Verify { file: PathBuf },
}

pub async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    match args.cmd {
        SnapshotCmd::Save {
            data_dir,
            node,
            remote,
            pace,
            file,
        } => match (node, data_dir) {
            (Some(url), _) => save_live(&url, &remote, pace, &file).await,
            (None, Some(dir)) => blocking(move || save_offline(&dir, &file)).await,
            (None, None) => {
                anyhow::bail!("give --data-dir DIR (stopped node) or --node URL (running node)")
            }
        },
        SnapshotCmd::Restore {
            file,
            data_dir,
            node_id,
        } => {
            let node_id = node_id
                .map(NodeId::new)
                .transpose()
                .context("bad --node-id")?;
            blocking(move || restore_to(&file, &data_dir, node_id.as_ref())).await
        }
        SnapshotCmd::Verify { file } => blocking(move || verify(&file)).await,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("the snapshot task failed")?
}

/// Progress lines: records and MB so far, and the rate.
fn ticker(what: &'static str, progress: &Arc<Progress>) -> Ticker {
    let p = progress.clone();
    Ticker::start(move |elapsed| {
        let mb = p.bytes.load(Ordering::Relaxed) as f64 / 1e6;
        let records = match p.records.load(Ordering::Relaxed) {
            0 => String::new(), // a download counts bytes only
            n => format!("{n} records, "),
        };
        format!(
            "{what}: {records}{mb:.1} MB in {:.0} s ({:.1} MB/s)",
            elapsed.as_secs_f64(),
            mb / elapsed.as_secs_f64().max(1e-3)
        )
    })
}

fn save_offline(dir: &Path, file: &Path) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let started = std::time::Instant::now();
    let stats = {
        let _t = ticker("saving", &progress);
        save::save_dir(dir, file, &progress)
            .with_context(|| format!("cannot save {} to {}", dir.display(), file.display()))?
    };
    println!(
        "saved node {} to {}: {} entries, {} log deltas, {} peers, {} bytes in {:.1} s; Merkle root {}",
        stats.node_id,
        file.display(),
        stats.entries,
        stats.deltas,
        stats.peers,
        stats.bytes,
        started.elapsed().as_secs_f64(),
        stats.merkle_root
    );
    Ok(())
}

async fn save_live(
    url: &str,
    remote: &super::remote::RemoteArgs,
    pace: Option<u8>,
    file: &Path,
) -> anyhow::Result<()> {
    let (base, client) = remote.connect(url)?;
    let path = match pace {
        Some(p) => format!("/api/snapshot?pace={p}"),
        None => "/api/snapshot".to_string(),
    };
    let target = base.join(&path);
    let progress = Arc::new(Progress::default());
    let started = std::time::Instant::now();
    let mut partial = save::PartialFile::create(file)?;
    let bytes = {
        let _t = ticker("saving", &progress);
        // Plain file writes from the CLI's runtime: it has nothing else to run.
        client
            .download(&target, |chunk| {
                use std::io::Write;
                partial.out().write_all(chunk)?;
                progress
                    .bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Ok(())
            })
            .await
            .with_context(|| format!("cannot save a snapshot from {base}"))?
    };
    let (records, root) = blocking(move || {
        use std::io::Write;
        partial.out().flush()?;
        let f = std::fs::File::open(partial.tmp_path())?;
        let checked = scan(std::io::BufReader::with_capacity(1 << 20, f))
            .context("the snapshot it sent is unusable")?;
        partial.commit()?;
        Ok(checked)
    })
    .await
    .with_context(|| format!("cannot save a snapshot from {base}"))?;
    println!(
        "saved {base} to {}: {records} records, {bytes} bytes in {:.1} s; Merkle root {root}",
        file.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every frame of a snapshot: the record count and the trailer's Merkle root.
fn scan(input: impl std::io::Read) -> Result<(u64, String), hub::snapshot::SnapshotError> {
    let mut r = Reader::open(input)?;
    let mut records = 0;
    let mut root = String::new();
    loop {
        match r.next_frame()? {
            Frame::End => return Ok((records, root)),
            Frame::Trailer(t) => root = t.merkle_root,
            _ => records += 1,
        }
    }
}

fn verify(file: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let (records, root) = scan(std::io::BufReader::with_capacity(1 << 20, f))
        .with_context(|| format!("{} is not a usable snapshot", file.display()))?;
    println!(
        "{}: complete, checksum correct, {records} records; Merkle root {root}",
        file.display()
    );
    Ok(())
}

fn restore_to(file: &Path, dir: &Path, node_id: Option<&NodeId>) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let started = std::time::Instant::now();
    let stats = {
        let _t = ticker("restoring", &progress);
        restore::restore_file(file, dir, node_id, &progress).with_context(|| {
            format!(
                "cannot restore {} into {} (nothing was written)",
                file.display(),
                dir.display()
            )
        })?
    };
    println!(
        "restored {} into {} as node {}: {} entries, {} log runs, {} peers, {} bytes in {:.1} s; Merkle root {}",
        file.display(),
        dir.display(),
        stats.node_id,
        stats.entries,
        stats.runs,
        stats.peers,
        stats.bytes,
        started.elapsed().as_secs_f64(),
        stats.merkle_root
    );
    if stats.fenced_until_peer_check {
        println!(
            "same node id: at start the node takes no local write until a peer has shown which of its own writes it holds, and pulls them back first"
        );
    } else if stats.same_node {
        println!("same node id, no peers remembered: the node writes on from the snapshot");
    } else {
        println!("new node id: start it with --join to a member; it only fetches what changed since the snapshot");
    }
    Ok(())
}
