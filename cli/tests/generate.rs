//! `webglide generate` / `inpaint` end to end on models converted from the tiny
//! fixture weights (random weights: the images are noise, but every stage of
//! the notebook procedures runs): PNG size and text chunks, same seed → same
//! image, guidance changes the image, inpainting keeps the unmasked pixels.

mod common;
use common::{read_png, refuses, webglide, FIX};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("webglide-gen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (src, kind, case, quant) in [
            ("text2im_base/checkpoint.pt", "base", "text2im_base", "q8"),
            ("upsample/checkpoint-fp16.pt", "upsample", "upsample", "f16"),
            (
                "inpaint_base/weights.safetensors",
                "base-inpaint",
                "inpaint_base",
                "f32",
            ),
            (
                "inpaint_upsample/weights.safetensors",
                "upsample-inpaint",
                "inpaint_upsample",
                "f32",
            ),
            (
                "clip/image_enc.safetensors",
                "clip-image-enc",
                "clip",
                "f16",
            ),
            ("clip/text_enc.safetensors", "clip-text-enc", "clip", "f32"),
        ] {
            let out = dir.join(kind);
            let r = webglide(&[
                "convert",
                &format!("{FIX}/{src}"),
                "--kind",
                kind,
                "--config",
                &format!("{FIX}/{case}/config.json"),
                "--quant",
                quant,
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        }
        dir
    })
}

fn gen(out: &Path, extra: &[&str]) -> (u32, u32, Vec<u8>, Vec<(String, String)>) {
    let m = models().to_str().unwrap().to_string();
    let mut args = vec![
        "generate",
        "--prompt",
        "an oil painting of a corgi",
        "--model",
        &m,
        "--steps",
        "4",
        "--upsample-steps",
        "3",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let r = webglide(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    read_png(out)
}

#[test]
fn generate_writes_deterministic_pngs_with_parameters() {
    let dir = tempdir("g");
    let (w, h, a, text) = gen(&dir.join("a.png"), &["--seed", "11", "--guidance", "3"]);
    assert_eq!((w, h), (64, 64), "base 16 px -> upsampler 64 px");
    assert!(
        text.iter()
            .any(|(k, v)| k == "webglide:prompt" && v == "an oil painting of a corgi"),
        "{text:?}"
    );
    assert!(text.iter().any(|(k, v)| k == "webglide:seed" && v == "11"));
    let (_, _, b, _) = gen(&dir.join("b.png"), &["--seed", "11", "--guidance", "3"]);
    assert_eq!(a, b, "same seed, same image");
    let (_, _, c, _) = gen(&dir.join("c.png"), &["--seed", "11", "--guidance", "8"]);
    assert_ne!(a, c, "guidance changes the image");
    let (w, _, _, _) = gen(
        &dir.join("d.png"),
        &["--seed", "11", "--no-upsample", "--sampler", "ddim"],
    );
    assert_eq!(w, 16);
    std::fs::remove_dir_all(&dir).ok();
}

/// CLIP guidance (clip_guided.ipynb) with the tiny noisy CLIP: reproducible
/// per seed, recorded in the PNG, the scale changes the image, and the
/// combinations the notebook does not define are refused with a clear error.
#[test]
fn clip_guided_generation() {
    let dir = tempdir("clip");
    let clip = |name: &str, scale: &str| {
        gen(
            &dir.join(name),
            &["--seed", "5", "--no-upsample", "--clip-guidance", scale],
        )
    };
    let (w, _, a, text) = clip("a.png", "3");
    assert_eq!(w, 16);
    assert!(
        text.iter()
            .any(|(k, v)| k == "webglide:clip_guidance" && v == "3"),
        "{text:?}"
    );
    assert!(
        !text.iter().any(|(k, _)| k == "webglide:guidance"),
        "{text:?}"
    );
    assert_eq!(a, clip("b.png", "3").2, "same seed, same image");
    assert_ne!(a, clip("c.png", "0").2, "the CLIP scale changes the image");
    // With the upsampler after it, as the notebook.
    let (w, _, _, _) = gen(&dir.join("d.png"), &["--seed", "5", "--clip-guidance", "3"]);
    assert_eq!(w, 64);
    let m = models().to_str().unwrap().to_string();
    let fail = |extra: &[&str]| {
        let mut args = vec!["generate", "--prompt", "a corgi", "--steps", "3", "--out"];
        let out = dir.join("x.png");
        args.push(out.to_str().unwrap());
        args.extend_from_slice(extra);
        let r = webglide(&args);
        assert!(!r.status.success() && !out.exists());
        String::from_utf8_lossy(&r.stderr).to_string()
    };
    let e = fail(&["--model", &m, "--clip-guidance", "3", "--sampler", "ddim"]);
    assert!(e.contains("ancestral") && !e.contains("panicked"), "{e}");
    let e = fail(&["--model", &m, "--clip-guidance", "nan"]);
    assert!(
        e.contains("CLIP guidance scale") && !e.contains("panicked"),
        "{e}"
    );
    // A folder without the noisy CLIP says what to convert.
    let bare = dir.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    copy_dir(&models().join("base"), &bare.join("base"));
    let e = fail(&["--model", bare.to_str().unwrap(), "--clip-guidance", "3"]);
    assert!(
        e.contains("clip-image-enc") && e.contains("webglide convert"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The GPU lost (the CLI's fault-injection hook destroys the device after N
/// submissions; here the base's 6 steps take 9 and the upsampler's 3 four
/// more, so N = 1 is lost while the first step runs, 4 mid-sampling, 11 in
/// the upsampler; a run that outlives its N succeeds and fails this test):
/// a clear error, a failing exit status, and no image or partial file left.
#[test]
fn a_lost_device_fails_clearly_and_leaves_no_file() {
    let m = models().to_str().unwrap().to_string();
    for (after, upsampler) in [("1", false), ("4", false), ("11", true)] {
        let dir = tempdir(&format!("lost-device-{after}"));
        let out = dir.join("lost.png");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_webglide"));
        cmd.args([
            "generate", "--prompt", "a corgi", "--model", &m, "--steps", "6",
        ])
        .args(["--out", out.to_str().unwrap()])
        .env("WEBGLIDE_TEST_LOSE_DEVICE_AFTER", after);
        if upsampler {
            cmd.args(["--upsample-steps", "3"]);
        } else {
            cmd.arg("--no-upsample");
        }
        let r = cmd.output().expect("run webglide");
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "after {after}: {stderr}");
        assert!(
            stderr.contains("GPU device lost"),
            "after {after}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "after {after}: {stderr}");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "after {after}, left behind: {left:?}");
    }
}

#[test]
fn over_limit_inputs_fail_clearly_and_leave_no_file() {
    let dir = tempdir("limits");
    let inputs = tempdir("limits-in");
    let m = models().to_str().unwrap().to_string();
    let out = dir.join("o.png");
    let out = out.to_str().unwrap();
    // Over the side limit, and over the pixel limit with both sides within it
    // (only the header is read: the 16-MP grey image compresses to ~16 kB).
    let wide = inputs.join("wide.png");
    image::GrayImage::new(9000, 1).save(&wide).unwrap();
    let big = inputs.join("big.png");
    image::GrayImage::new(4001, 4001).save(&big).unwrap();
    let ok = inputs.join("ok.png");
    image::GrayImage::new(64, 64).save(&ok).unwrap();
    let (wide, big, ok) = (
        wide.to_str().unwrap(),
        big.to_str().unwrap(),
        ok.to_str().unwrap(),
    );
    fn inpaint<'a>(image: &'a str, mask: &'a str, model: &'a str, out: &'a str) -> Vec<&'a str> {
        let args = ["inpaint", "--image", image, "--mask", mask, "--prompt", "x"];
        [&args[..], &["--model", model, "--steps", "2", "--out", out]].concat()
    }
    let too_wide = "the image is too large (at most 8192 px a side";
    let too_many = "a 4001×4001 image is too large";
    for (image, mask, expect) in [
        (wide, ok, too_wide),
        (big, ok, too_many),
        (ok, wide, too_wide),
        (ok, big, too_many),
    ] {
        refuses(&inpaint(image, mask, &m, out), expect, &dir);
    }
    // A prompt just over the limit, and a long one (near the 128-kB argument
    // limit of Linux) refused as fast.
    for (len, expect) in [
        (2049, "a prompt of 2049 bytes"),
        (120_000, "a prompt of 120000 bytes"),
    ] {
        let prompt = "a".repeat(len);
        let args = ["generate", "--prompt", &prompt, "--model", &m, "--out", out];
        refuses(&args, expect, &dir);
    }
    // Absurd batches, before anything of their size is allocated.
    for batch in ["0", "65", "1000000000000000"] {
        let args = ["generate", "--prompt", "x", "--model", &m, "--batch", batch];
        let args = [&args[..], &["--steps", "2", "--out", out]].concat();
        refuses(&args, &format!("batch size {batch} (1..=64)"), &dir);
        refuses(
            &[&inpaint(ok, ok, &m, out)[..], &["--batch", batch]].concat(),
            "batch size",
            &dir,
        );
    }
}

/// Manifests over `engine::limits` (the shard and model sizes, the shard count,
/// the manifest's own size), each in a copy of the base folder's manifest: a
/// lying manifest is refused before any shard is read.
fn over_limit_manifests(real: &[u8]) -> Vec<(&'static str, Vec<u8>, String)> {
    let real: serde_json::Value = serde_json::from_slice(real).unwrap();
    let with_shards = |shards: Vec<serde_json::Value>| {
        let mut m = real.clone();
        m["shards"] = serde_json::Value::Array(shards);
        serde_json::to_vec(&m).unwrap()
    };
    let shard = |i: usize, bytes: u64| serde_json::json!({"file": format!("model-{i:05}.safetensors"), "bytes": bytes, "sha256": "0".repeat(64)});
    let mut padded = serde_json::to_vec_pretty(&real).unwrap();
    padded.resize((4 << 20) + 1, b' ');
    vec![
        (
            "shard-size",
            with_shards(vec![shard(1, 3 << 30)]),
            "shard model-00001.safetensors of 3221225472 bytes (at most 2147483648)".into(),
        ),
        (
            "model-size",
            with_shards((1..=17).map(|i| shard(i, 2 << 30)).collect()),
            "36507222016 bytes of shards (at most 34359738368)".into(),
        ),
        (
            "shard-count",
            with_shards((1..=4097).map(|i| shard(i, 1)).collect()),
            "4097 shards (at most 4096)".into(),
        ),
        (
            "manifest-size",
            padded,
            "4194305 bytes, at most 4194304 expected".into(),
        ),
    ]
}

#[test]
fn over_limit_model_folders_fail_clearly_and_leave_no_file() {
    let dir = tempdir("manifests");
    let out_dir = tempdir("manifests-out");
    let out = out_dir.join("o.png");
    let real = std::fs::read(models().join("base/manifest.json")).unwrap();
    for (case, manifest, expect) in over_limit_manifests(&real) {
        let set = dir.join(case);
        std::fs::create_dir_all(set.join("base")).unwrap();
        std::fs::write(set.join("base/manifest.json"), manifest).unwrap();
        let args = [
            "generate",
            "--prompt",
            "x",
            "--model",
            set.to_str().unwrap(),
        ];
        let args = [
            &args[..],
            &["--no-upsample", "--out", out.to_str().unwrap()],
        ]
        .concat();
        refuses(&args, &expect, &out_dir);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("webglide-gen-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn inpaint_keeps_the_unmasked_pixels() {
    let dir = tempdir("i");
    // A 90x70 gradient image, transparent (then half) at the left like a
    // cut-out; the mask regenerates the right half.
    let src = image::RgbaImage::from_fn(90, 70, |x, y| {
        let a = match x {
            0..10 => 0,
            10..20 => 128,
            _ => 255,
        };
        image::Rgba([(x * 2) as u8, (y * 3) as u8, 128, a])
    });
    src.save(dir.join("src.png")).unwrap();
    let mask =
        image::GrayImage::from_fn(90, 70, |x, _| image::Luma([if x >= 45 { 255 } else { 0 }]));
    mask.save(dir.join("mask.png")).unwrap();
    let m = models().to_str().unwrap().to_string();
    let out = dir.join("out.png");
    let r = webglide(&[
        "inpaint",
        "--image",
        dir.join("src.png").to_str().unwrap(),
        "--mask",
        dir.join("mask.png").to_str().unwrap(),
        "--prompt",
        "a corgi in a field",
        "--model",
        &m,
        "--steps",
        "4",
        "--upsample-steps",
        "3",
        "--guidance",
        "5",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (w, h, px, _) = read_png(&out);
    assert_eq!((w, h), (64, 64));
    // Expected kept pixels: the source resized to 64 like the CLI does (antialiased bicubic).
    // Transparent pixels count as white (as the web app reads them).
    let img = image::open(dir.join("src.png")).unwrap().to_rgba8();
    let mut planes = vec![0f32; 3 * 90 * 70];
    for (i, p) in img.pixels().enumerate() {
        let a = p[3] as f32 / 255.0;
        for c in 0..3 {
            let v = (p[c] as f32 * a + 255.0 * (1.0 - a)).round();
            planes[c * 90 * 70 + i] = v / 127.5 - 1.0;
        }
    }
    let want = engine::reference::bicubic_aa(&planes, 3, 70, 90, 64, 64);
    let mut checked = 0;
    for y in 0..64 {
        // Left columns: kept at the 16-px base resolution (4 px per base pixel), away from the seam.
        for x in 0..16 {
            for c in 0..3 {
                let w = ((want[c * 4096 + y * 64 + x] + 1.0) * 127.5)
                    .round()
                    .clamp(0.0, 255.0) as i32;
                let g = px[(y * 64 + x) * 3 + c] as i32;
                assert!(
                    (g - w).abs() <= 1,
                    "pixel ({x},{y}) channel {c}: {g} vs {w}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
    // A bad image is a clear error and writes nothing.
    std::fs::write(dir.join("bad.png"), b"not an image").unwrap();
    let out2 = dir.join("out2.png");
    let r = webglide(&[
        "inpaint",
        "--image",
        dir.join("bad.png").to_str().unwrap(),
        "--mask",
        dir.join("mask.png").to_str().unwrap(),
        "--prompt",
        "x",
        "--model",
        &m,
        "--out",
        out2.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && stderr.contains("not a readable") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(!out2.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eval_shapes_prints_scores_per_guidance_and_writes_a_grid() {
    let dir = tempdir("e");
    let grid = dir.join("grid.png");
    let m = models().to_str().unwrap().to_string();
    let r = webglide(&[
        "eval",
        "shapes",
        "--model",
        &m,
        "--n",
        "2",
        "--steps",
        "2",
        "--guidance",
        "0,3",
        "--clip-guidance",
        "3",
        "--grid",
        grid.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = String::from_utf8_lossy(&r.stdout);
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| {
            ["cfg 0.0", "cfg 3.0", "clip 3.0"]
                .iter()
                .any(|p| l.trim_start().starts_with(p))
        })
        .collect();
    assert_eq!(rows.len(), 3, "one score row per method and scale:\n{out}");
    for row in rows {
        let cols: Vec<f32> = row
            .split_whitespace()
            .skip(2)
            .take(3)
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(cols.iter().all(|v| (0.0..=1.0).contains(v)), "{row}");
        // The last column is the exact-match rate.
        let exact: f32 = row.split_whitespace().last().unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&exact), "{row}");
    }
    assert!(
        out.contains("relation  exact"),
        "no exact-match column:\n{out}"
    );
    // Three rows (method and scale) × two prompts of the 16-px fixture model.
    let (w, h, _, text) = read_png(&grid);
    assert_eq!((w, h), (32, 48));
    assert!(text.iter().any(|(k, _)| k == "webglide:columns"));
    assert!(out.contains("steps 2 (ancestral)"), "{out}");
    // A `ddimN` respacing samples with DDIM unless told otherwise.
    for (extra, sampler) in [(None, "ddim"), (Some("ancestral"), "ancestral")] {
        let mut args = vec![
            "eval",
            "shapes",
            "--model",
            &m,
            "--n",
            "1",
            "--steps",
            "ddim2",
            "--guidance",
            "3",
        ];
        args.extend(extra.iter().flat_map(|s| ["--sampler", *s]));
        let r = webglide(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(out.contains(&format!("steps ddim2 ({sampler})")), "{out}");
        assert!(out.contains("exact with 1 / 2 / 3 objects named"), "{out}");
    }
    // Bad input is an error, not a panic.
    let r = webglide(&["eval", "shapes", "--model", &m, "--n", "0"]);
    assert_eq!(r.status.code(), Some(2));
    let r = webglide(&["eval", "shapes", "--model", &m, "--sampler", "euler"]);
    assert_eq!(r.status.code(), Some(2));
}

#[test]
fn eval_inpaint_scores_the_regenerated_object_and_writes_a_grid() {
    let dir = tempdir("ei");
    let grid = dir.join("grid.png");
    let m = models().to_str().unwrap().to_string();
    let r = webglide(&[
        "eval",
        "inpaint",
        "--model",
        &m,
        "--n",
        "3",
        "--steps",
        "2",
        "--guidance",
        "0,3",
        "--grid",
        grid.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.contains("relation  exact    new"),
        "no new-object column:\n{out}"
    );
    let rows: Vec<Vec<f32>> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("cfg "))
        .map(|l| {
            l.split_whitespace()
                .skip(2)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 2, "one score row per scale:\n{out}");
    for row in rows {
        // colour, shape, binding, relation (when a scene has one), exact, new
        assert!(row.len() >= 5, "{out}");
        assert!(row.iter().all(|v| (0.0..=1.0).contains(v)), "{out}");
    }
    // Rows: the sources with their regions greyed, then cfg 0 and cfg 3;
    // three 16-px tiles each.
    let (w, h, _, text) = read_png(&grid);
    assert_eq!((w, h), (48, 48));
    assert!(text
        .iter()
        .any(|(k, v)| k == "webglide:rows" && v == "source | cfg 0.0 | cfg 3.0"));
    // CLIP guidance has no inpainting form here: an error, not a panic.
    let r = webglide(&[
        "eval",
        "inpaint",
        "--model",
        &m,
        "--n",
        "1",
        "--clip-guidance",
        "3",
    ]);
    assert_eq!(r.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}
