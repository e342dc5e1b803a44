//! `webglide-emoji`: renders the emoji dataset cache (see `emoji.rs`).
//! Normally run through scripts/build-emoji.sh, which installs the pinned
//! npm packages first.

use std::path::PathBuf;

use clap::Parser;
use webglide_trainer::emoji::{build, Built, KEEP_COUNTRY_FLAGS};

#[derive(Parser)]
#[command(name = "webglide-emoji", about = "Build the emoji training-data cache")]
struct Args {
    /// The installed @twemoji/svg package folder.
    #[arg(long)]
    twemoji: PathBuf,
    /// The installed emojibase-data package folder.
    #[arg(long)]
    emojibase: PathBuf,
    /// Cache folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Rebuild even when the cache matches the package versions.
    #[arg(long)]
    force: bool,
}

fn main() {
    let a = Args::parse();
    match build(
        &a.twemoji,
        &a.emojibase,
        &a.out,
        a.force,
        KEEP_COUNTRY_FLAGS,
    ) {
        Ok(Built::Cached) => eprintln!("{}: up to date", a.out.display()),
        Ok(Built::Rendered { entries, skipped }) => eprintln!(
            "{}: {entries} images ({skipped} entries left out)",
            a.out.display()
        ),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
