//! `webglide check-fixture` on a shared case (must pass) and on a case whose
//! weights were tampered with (must fail with a non-zero exit and a clear error).

mod common;
use common::{webglide, FIX};

#[test]
fn passes_on_the_official_base_case() {
    let out = webglide(&["check-fixture", &format!("{FIX}/text2im_base")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 over tolerance"), "{stdout}");
    assert!(stdout.contains("final.samples (end to end)"), "{stdout}");
}

#[test]
fn fails_over_tolerance_and_on_bad_weights() {
    // The case without its sampling trace (the forward pass only: the full
    // replay is the test above, and the engine's glide_fixtures).
    let dir = std::env::temp_dir().join(format!("webglide-bad-case-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "io.safetensors", "weights.safetensors"] {
        std::fs::copy(format!("{FIX}/text2im_base/{f}"), dir.join(f)).unwrap();
    }
    // An impossible tolerance: exits 1 and says so.
    let out = webglide(&["check-fixture", dir.to_str().unwrap(), "--tol", "1e-12"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OVER TOLERANCE"));

    // Weights of another architecture: a clear error naming the key, no panic.
    std::fs::copy(
        format!("{FIX}/inpaint_base/weights.safetensors"),
        dir.join("weights.safetensors"),
    )
    .unwrap();
    let out = webglide(&["check-fixture", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("weight '") && !stderr.contains("panicked"),
        "{stderr}"
    );

    // A truncated weights file.
    let full = std::fs::read(format!("{FIX}/text2im_base/weights.safetensors")).unwrap();
    std::fs::write(dir.join("weights.safetensors"), &full[..full.len() / 2]).unwrap();
    let out = webglide(&["check-fixture", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("safetensors") && !stderr.contains("panicked"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unclip_tokenizer_case_passes_and_a_wrong_case_fails() {
    let unclip = format!("{FIX}/../unclip/tokenizer");
    let out = webglide(&["check-fixture", &unclip]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("14 of 14 tokenizer cases match"),
        "{stdout}"
    );

    // One expected id changed: that case fails, exit 1.
    let dir = std::env::temp_dir().join(format!("webglide-bad-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{unclip}/tokens.json")).unwrap()).unwrap();
    v["entries"][1]["bpe_ids"][0] = serde_json::json!(7);
    std::fs::write(dir.join("tokens.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    let out = webglide(&["check-fixture", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL \"a photo of a cat\""), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unclip_model_and_schedule_cases_pass() {
    for (case, row) in [
        ("clip_text", "text.txt_feat "),
        ("prior", "final_ln "),
        ("decoder", "output_blocks.8 "),
        ("sr", "last.out "),
        ("bicubic", "x4.out "),
        ("schedules", "sr_7.posterior_variance "),
        // "t2i" (the whole Karlo run replayed, minutes on lavapipe) calls the
        // same engine::unclip::check::check_t2i as the engine's unclip_fixtures.
    ] {
        let out = webglide(&["check-fixture", &format!("{FIX}/../unclip/{case}")]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{case}: {stdout}");
        assert!(
            stdout.contains(row) && stdout.contains(" 0 over tolerance"),
            "{case}: {stdout}"
        );
    }
}

/// The noisy-CLIP case: both encoders, cond_fn and the CLIP-guided trace
/// (the base from the sibling text2im_base case), from the case's files and
/// from converted f16 folders.
#[test]
fn noisy_clip_case_passes_from_files_and_converted_folders() {
    let out = webglide(&["check-fixture", &format!("{FIX}/clip")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("cond.grad") && stdout.contains("0 over tolerance"),
        "{stdout}"
    );
    assert!(stdout.contains("CLIP-guided steps"), "{stdout}");
    let dir = std::env::temp_dir().join(format!("webglide-noisy-clip-{}", std::process::id()));
    for (file, kind) in [
        ("image_enc", "clip-image-enc"),
        ("text_enc", "clip-text-enc"),
    ] {
        let r = webglide(&[
            "convert",
            &format!("{FIX}/clip/{file}.safetensors"),
            "--kind",
            kind,
            "--config",
            &format!("{FIX}/clip/config.json"),
            "--quant",
            "f16",
            "--out",
            dir.join(kind).to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let out = webglide(&[
        "check-fixture",
        &format!("{FIX}/clip"),
        "--model",
        dir.to_str().unwrap(),
        "--quant",
        "f16",
        "--tol",
        "1e-2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The wrong kind of checkpoint for --kind: the converter names the key.
    let r = webglide(&[
        "convert",
        &format!("{FIX}/clip/text_enc.safetensors"),
        "--kind",
        "clip-image-enc",
        "--config",
        &format!("{FIX}/clip/config.json"),
        "--out",
        dir.join("wrong").to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && e.contains("blocks.") && !dir.join("wrong").exists(),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
