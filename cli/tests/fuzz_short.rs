//! A short fuzz run of every target of `webglide_cli::fuzz` on stable: each
//! seed of `fuzz/corpus/<target>/`, then seeded mutations of them (bit flips,
//! interesting integers, truncation, insertion, deletion, duplication,
//! splicing). Per input: no panic, at most 1 s (release-like builds: the
//! long runs; here a debug build gets 4 s), and no single allocation over the
//! target's bound (a counting allocator; over 2 GiB is refused outright).
//! A finding is saved to `target/fuzz-findings/<target>/` and fails the test.
//! `FUZZ_SHORT_EXECS` sets the mutations per target (default 1500). The long
//! runs are `scripts/fuzz.sh` (libFuzzer); results in docs/reliability.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use webglide_cli::fuzz::{Target, TARGETS};

/// Tracks the largest allocation of the current thread (each test runs its
/// target on its own thread).
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}
const REFUSED: usize = 2 << 30;

fn note(size: usize) -> bool {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    size <= REFUSED
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// xorshift64*: the mutations repeat from run to run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    u64::MAX,
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let w = [1, 2, 4, 8][rng.below(4)].min(len);
                let i = rng.below(len - w + 1);
                input[i..i + w].copy_from_slice(&v[..w]);
            }
            2 => input.truncate(rng.below(len + 1)),
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                input.drain(i..i + n);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let chunk = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            6 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(64 << 10);
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn save_finding(target: &str, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/fuzz-findings")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let h = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{h:016x}"));
    std::fs::write(&path, input).unwrap();
    path
}

/// Runs one input; a description of what went wrong, if anything did.
fn run_one(t: &Target, input: &[u8]) -> Option<String> {
    let limit = if cfg!(debug_assertions) {
        Duration::from_secs(4)
    } else {
        Duration::from_secs(1)
    };
    LARGEST.with(|l| l.set(0));
    let t0 = Instant::now();
    let outcome = std::panic::catch_unwind(|| (t.run)(input));
    let (elapsed, largest) = (t0.elapsed(), LARGEST.with(|l| l.get()));
    let bound = (t.max_alloc)(input.len());
    if let Err(p) = outcome {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        return Some(format!("panic: {msg}"));
    }
    if elapsed > limit {
        return Some(format!("took {elapsed:?} (limit {limit:?})"));
    }
    if largest > bound {
        return Some(format!(
            "allocated {largest} bytes at once for a {}-byte input (bound {bound})",
            input.len()
        ));
    }
    None
}

/// The timed short runs share the machine with each other, but not with the
/// test of the largest images (a minute of decoding and resizing in a debug
/// build, which would push their inputs over the time limit).
static TIMED: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn fuzz(name: &str) {
    let _shared = TIMED.read().unwrap_or_else(|e| e.into_inner());
    let t = TARGETS.iter().find(|t| t.name == name).expect("a target");
    let seeds = corpus(name);
    assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
    let execs: usize = std::env::var("FUZZ_SHORT_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let mut failures = Vec::new();
    let inputs = seeds.iter().cloned().chain((0..execs).map(|_| {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input, &seeds);
        input
    }));
    for input in inputs {
        if let Some(what) = run_one(t, &input) {
            let path = save_finding(name, &input);
            failures.push(format!("{what} ({})", path.display()));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

macro_rules! targets {
    ($($name:ident),*) => {
        $(#[test] fn $name() { fuzz(stringify!($name)); })*
        #[test]
        fn every_target_runs_here() {
            let here = [$(stringify!($name)),*];
            for t in TARGETS {
                assert!(here.contains(&t.name), "{} has no short run", t.name);
            }
        }
    };
}
targets!(
    checkpoint,
    manifest,
    safetensors,
    glide_tokenizer,
    clip_tokenizer,
    image,
    mask,
    png_text,
    settings
);

/// The checkpoint seeds parse as what they are, and each regression input
/// (`regress-*`: inputs that made the reader overflow, recurse, copy or
/// allocate without bound) is a quick error.
#[test]
fn checkpoint_seeds_parse_and_regressions_fail_cleanly() {
    use webglide_cli::pickle::read_checkpoint;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/checkpoint");
    for (seed, tensors) in [
        ("state_dict.pt", 2),
        ("wrapped.ckpt", 1),
        ("stats.th", 2),
        ("torchscript.pt", 2),
    ] {
        let c = read_checkpoint(&std::fs::read(dir.join(seed)).unwrap())
            .unwrap_or_else(|e| panic!("{seed}: {e:#}"));
        assert_eq!(c.tensors.len(), tensors, "{seed}");
    }
    let mut regressions = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("regress-") {
            continue;
        }
        regressions += 1;
        let t0 = Instant::now();
        LARGEST.with(|l| l.set(0));
        let bytes = std::fs::read(&path).unwrap();
        let r = read_checkpoint(&bytes);
        assert!(r.is_err(), "{name} parsed");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{name} took {:?}",
            t0.elapsed()
        );
        let largest = LARGEST.with(|l| l.get());
        assert!(
            largest < 64 << 20,
            "{name} allocated {largest} bytes at once"
        );
    }
    assert!(regressions >= 6, "regression inputs missing");
}

/// The largest image the limits accept, through the image and mask
/// targets: no single allocation over the target's bound. (A 24 MP photo,
/// accepted then, made a 288 MB f32 copy of itself for resizing, over the
/// image target's 256 MiB: found while timing the long run's slowest inputs;
/// the resize now reads the bytes row by row.) Big, so not a seed: a PNG of
/// that size is encoded here; it runs while no timed short run does.
#[test]
fn the_largest_accepted_images_stay_within_their_bounds() {
    use engine::limits::{MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE};
    let bound = |name: &str| {
        let t = TARGETS.iter().find(|t| t.name == name).unwrap();
        (t.max_alloc)(webglide_cli::fuzz::MAX_LEN)
    };
    let _alone = TIMED.write().unwrap_or_else(|e| e.into_inner());
    // The tallest accepted shape: the row pass keeps a row of sums per input row.
    let (w, h) = (MAX_IMAGE_PIXELS / MAX_IMAGE_SIDE, MAX_IMAGE_SIDE);
    assert!(w * h > MAX_IMAGE_PIXELS * 9 / 10);
    let raw: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
    let mut png = std::io::Cursor::new(Vec::new());
    image::write_buffer_with_format(
        &mut png,
        &raw,
        w as u32,
        h as u32,
        image::ColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .unwrap();
    drop(raw);
    let png = png.into_inner();
    for (name, run) in [
        ("image", webglide_cli::fuzz::image as fn(&[u8])),
        ("mask", webglide_cli::fuzz::mask),
    ] {
        LARGEST.with(|l| l.set(0));
        run(&png);
        let largest = LARGEST.with(|l| l.get());
        assert!(
            largest > w * h && largest <= bound(name),
            "{name} of {w}×{h}: {largest} bytes at once, bound {}",
            bound(name)
        );
    }
}
