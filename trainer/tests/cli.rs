//! `webglide-train` end to end on tiny sizes: a short run, resume from an
//! EMA-only folder and from the committed (int8) checkpoint, a new run from
//! the shipped base, the CPU eval
//! (shapes and free prompts) and the bench, and their argument errors.

use std::path::Path;
use std::process::{Command, Output};

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_webglide-train"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A PNG's pixels, as the grids are written (8-bit RGB).
fn read_rgb(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

fn step_of(dir: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    v["step"].as_u64().unwrap()
}

#[test]
fn train_resume_from_ema_eval_and_bench() {
    let dir = std::env::temp_dir().join(format!("webglide-train-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let run = |steps: &str| {
        train(&[
            "--kind",
            "base",
            "--out",
            d,
            "--steps",
            steps,
            "--batch",
            "1",
            "--size",
            "16",
            "--min-snr",
            "5",
            "--warmup",
            "1",
            "--save-every",
            "1",
        ])
    };
    let out = run("2");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(step_of(&dir), 2);
    assert!(dir.join("weights.safetensors").exists());
    // Every file is written under a temporary name and renamed.
    let partial: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");

    // A resume on the same machine takes the saved moments and weights.
    let out = run("3");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("resuming") && !t.contains("fresh AdamW moments"),
        "{t}"
    );
    assert_eq!(step_of(&dir), 3);

    // A committed checkpoint holds state.json + ema.safetensors only.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::remove_file(dir.join("optim.bpk")).unwrap();
    let out = run("4");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("continuing from the EMA weights") && t.contains("fresh AdamW moments"),
        "{t}"
    );
    assert_eq!(step_of(&dir), 4);

    let eval_grid = |guidance: &str, seed: &str| {
        let grid = dir.join(format!("eval-{guidance}-{seed}.png"));
        let out = train(&[
            "eval",
            "--run",
            d,
            "--n",
            "2",
            "--guidance",
            guidance,
            "--steps",
            "ddim2",
            "--size",
            "16",
            "--seed",
            seed,
            "--grid",
            grid.to_str().unwrap(),
        ]);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        (t, read_rgb(&grid))
    };
    let (t, both) = eval_grid("0,3", "0");
    let rows: Vec<&str> = t
        .lines()
        .filter(|l| {
            ["cfg 0.0", "cfg 3.0"]
                .iter()
                .any(|p| l.trim_start().starts_with(p))
        })
        .collect();
    assert_eq!(rows.len(), 2, "{t}");
    assert!(t.contains("binding of held-out / seen pairs"), "{t}");
    // Every row starts from the same noise: guidance 3 alone draws what
    // the second row of "0,3" drew.
    let (_, alone) = eval_grid("3", "0");
    assert_eq!(both.len(), 2 * alone.len());
    assert!(
        both[alone.len()..] == alone[..],
        "the cfg 3 row depends on the rows before it"
    );
    let (_, other_seed) = eval_grid("3", "1");
    assert!(other_seed != alone, "the images do not depend on the noise");
    for bad in [["--n", "0"], ["--guidance", "x"], ["--size", "12"]] {
        let mut args = vec!["eval", "--run", d];
        args.extend(bad);
        let out = train(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    }

    // The shipped upsampler takes the grid's images up (16 → 64 px here):
    // per scale a row of the base's, enlarged, and one of the upsampled.
    let shipped_up = Path::new(env!("CARGO_MANIFEST_DIR")).join("../public/models/demo/upsample");
    let up_grid = dir.join("up.png");
    let up_args = [
        "eval",
        "--run",
        d,
        "--n",
        "2",
        "--steps",
        "ddim2",
        "--upsample-steps",
        "ddim2",
        "--size",
        "16",
        "--upsample",
        shipped_up.to_str().unwrap(),
        "--grid",
        up_grid.to_str().unwrap(),
    ];
    let out = train(&up_args);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(t.matches(", first 2, upsampled ").count(), 2, "{t}");
    let png = std::fs::read(&up_grid).unwrap();
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (2 * 64, 4 * 64));
    // Without --grid, or with a base as the upsampler: an argument error.
    let base_run = ["--upsample", d, "--grid", up_grid.to_str().unwrap()];
    for bad in [
        &up_args[..up_args.len() - 2],
        &[&up_args[..11], &base_run[..]].concat(),
    ] {
        let out = train(bad);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    }
    assert!(text(&train(&[&up_args[..11], &base_run[..]].concat())).contains("not an upsampler"));

    // Free prompts into a grid: rows of 8 prompts, one row per scale.
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "emoji of fire\n\n  a red circle  \nrocket\n").unwrap();
    let grid = dir.join("grid.png");
    let (p, g) = (prompts.to_str().unwrap(), grid.to_str().unwrap());
    let args = [
        "eval",
        "--run",
        d,
        "--prompts",
        p,
        "--grid",
        g,
        "--guidance",
        "0,3",
        "--steps",
        "ddim2",
        "--size",
        "16",
    ];
    let out = train(&args);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("  a red circle\n"),
        "{t}"
    );
    let png = std::fs::read(&grid).unwrap();
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (3 * 16, 2 * 16));
    std::fs::write(&prompts, "\n \n").unwrap();
    for bad in [&args[..], &args[..5], &["eval", "--run", d, "--emoji", d]] {
        let out = train(bad);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    }

    // The committed checkpoint (int8) resumes a run.
    let ck = dir.join("ck");
    let out = train(&["checkpoint", "--run", d, "--out", ck.to_str().unwrap()]);
    assert!(
        out.status.success() && text(&out).contains("(q8)"),
        "{}",
        text(&out)
    );
    let out = train(&[
        "--kind",
        "base",
        "--out",
        ck.to_str().unwrap(),
        "--steps",
        "4",
        "--batch",
        "1",
        "--size",
        "16",
        "--warmup",
        "1",
    ]);
    assert!(
        out.status.success() && text(&out).contains("continuing from the EMA weights"),
        "{}",
        text(&out)
    );
    assert_eq!(step_of(&ck), 4);

    // A new run starts from the shipped (converted, q8) base: every tensor.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../public/models/demo/base");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped.join("manifest.json")).unwrap()).unwrap();
    let tensors = manifest["tensors"].as_object().unwrap().len();
    let fresh = dir.join("from-shipped");
    let from = |init: &Path| {
        train(&[
            "--kind",
            "base",
            "--out",
            fresh.to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
            "--steps",
            "1",
            "--batch",
            "1",
            "--size",
            "16",
        ])
    };
    let out = from(&shipped);
    assert!(
        out.status.success() && text(&out).contains(&format!("initialised {tensors} tensors from")),
        "{}",
        text(&out)
    );
    assert_eq!(step_of(&fresh), 1);
    std::fs::remove_dir_all(&fresh).unwrap();
    // A folder that is not a converted model is an error that names it.
    let out = from(&ck);
    assert!(
        out.status.code() == Some(2) && text(&out).contains("manifest.json"),
        "{}",
        text(&out)
    );

    let out = train(&["bench", "--batch", "1", "--size", "16", "--steps", "1"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for row in [
        "cpu matmul",
        "input gradient",
        "weight gradient",
        "samples/s",
        "% of the matmul rate",
    ] {
        assert!(t.contains(row), "no '{row}' in:\n{t}");
    }
    // The upsampler's --size is its crop.
    let out = train(&[
        "bench", "--kind", "upsample", "--batch", "1", "--size", "32", "--steps", "1",
    ]);
    assert!(
        out.status.success() && text(&out).contains("at 32 px"),
        "{}",
        text(&out)
    );
    for bad in [["--conv", "winograd"], ["--alloc", "jemalloc"]] {
        let out = train(&[&["bench"], &bad[..]].concat());
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    }
    // Training without --out is an error, not a panic.
    let out = train(&["--kind", "base"]);
    assert!(
        out.status.code() == Some(2) && text(&out).contains("--out"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `text-aux` teaches a run's text transformer (its EMA and live weights
/// change, only in text weights, and its log notes it), and training with
/// `--text-aux` goes on with its heads; without heads, or on an upsampler,
/// they are refused with a message.
#[test]
fn text_aux_then_training_with_its_heads() {
    let dir = std::env::temp_dir().join(format!("webglide-train-aux-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "--kind",
            "base",
            "--out",
            d,
            "--batch",
            "2",
            "--size",
            "16",
            "--warmup",
            "1",
            "--save-every",
            "1",
        ];
        a.extend_from_slice(extra);
        train(&a)
    };
    let steps = |n: &'static str| ["--steps", n];
    let out = run(&steps("1"));
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&[&steps("2")[..], &["--text-aux", "0.01"]].concat());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("run `webglide-train text-aux"),
        "{}",
        text(&out)
    );

    let weights = |name: &str| {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.data().to_vec()))
            .collect();
        v.sort();
        v
    };
    let before = weights("ema.safetensors");
    let out = train(&[
        "text-aux", "--run", d, "--steps", "3", "--batch", "8", "--lr", "1e-2",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("held-out pairs: pooled colour"), "{t}");
    let after = weights("ema.safetensors");
    assert_eq!(before.len(), after.len());
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a != b, webglide_trainer::train::text_weight(name), "{name}");
    }
    let log = std::fs::read_to_string(dir.join("loss.log")).unwrap();
    assert!(log.contains("# text-aux at step 1 steps 3"), "{log}");
    let heads = std::fs::read(dir.join("text-aux-head.safetensors")).unwrap();
    assert!(
        !dir.join("optim.bpk").exists(),
        "the moments of the old text weights stay"
    );

    let out = run(&[&steps("2")[..], &["--text-aux", "0.01"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("fresh AdamW moments"), "{}", text(&out));
    assert_eq!(step_of(&dir), 2);
    assert_ne!(
        std::fs::read(dir.join("text-aux-head.safetensors")).unwrap(),
        heads
    );
    let log = std::fs::read_to_string(dir.join("loss.log")).unwrap();
    assert!(
        log.contains("text_aux 0.01 pooled_drop 0 related_pairs 0 twins 0 device"),
        "{log}"
    );
    // A committed checkpoint carries the heads, so a new machine goes on with them.
    let ck = dir.join("ck");
    let out = train(&["checkpoint", "--run", d, "--out", ck.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(ck.join("text-aux-head.safetensors")).unwrap(),
        std::fs::read(dir.join("text-aux-head.safetensors")).unwrap()
    );

    let out = run(&[&steps("3")[..], &["--text-aux=-1"]].concat());
    assert!(
        !out.status.success() && text(&out).contains("--text-aux W"),
        "{}",
        text(&out)
    );
    // Heads that are not this width's (here: the model's own weights) are refused, not a panic.
    let heads_file = dir.join("text-aux-head.safetensors");
    let kept = std::fs::read(&heads_file).unwrap();
    std::fs::copy(dir.join("ema.safetensors"), &heads_file).unwrap();
    let out = run(&[&steps("3")[..], &["--text-aux", "0.01"]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("'aux.pooled.weight' missing"),
        "{}",
        text(&out)
    );
    std::fs::write(&heads_file, kept).unwrap();
    for bad in [
        &["--steps", "0", "--lr", "2"][..],
        &["--anchor", "-1"][..],
        &["--batch", "0"][..],
    ] {
        let out = train(&[&["text-aux", "--run", d][..], bad].concat());
        assert!(!out.status.success(), "{bad:?}");
    }
    // Another kind's run (its state.json says so) is refused before any weight is read.
    let up = dir.join("up");
    std::fs::create_dir_all(&up).unwrap();
    std::fs::copy(dir.join("config.json"), up.join("config.json")).unwrap();
    std::fs::write(up.join("state.json"), r#"{"step":1,"kind":"upsample"}"#).unwrap();
    let u = up.to_str().unwrap();
    let out = train(&["text-aux", "--run", u, "--steps", "1"]);
    assert!(
        !out.status.success() && text(&out).contains("not a 'base' one"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
