//! `webglide convert` on the official-format fixture checkpoints: f32 tensors
//! equal weights.safetensors bit for bit (f16 checkpoints: the f16 values),
//! shards are verified by sha256, and bad input leaves no output folder.

mod common;
use common::{webglide, FIX};

use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("webglide-convert-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tensors(bytes: &[u8]) -> Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec(), t.dtype()))
        .collect()
}

fn converted(
    dir: &Path,
) -> std::collections::HashMap<String, (Vec<usize>, Vec<u8>, safetensors::Dtype)> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut all = std::collections::HashMap::new();
    for s in manifest["shards"].as_array().unwrap() {
        let bytes = std::fs::read(dir.join(s["file"].as_str().unwrap())).unwrap();
        assert!(bytes.len() <= 64 << 20, "shard over 64 MiB");
        assert_eq!(bytes.len() as u64, s["bytes"].as_u64().unwrap());
        use sha2::Digest;
        let h: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(h, s["sha256"].as_str().unwrap(), "sha256 of {}", s["file"]);
        for (n, shape, data, dt) in tensors(&bytes) {
            all.insert(n, (shape, data, dt));
        }
    }
    all
}

#[test]
fn f32_checkpoint_converts_bit_for_bit() {
    let out = tmp("base");
    let r = webglide(&[
        "convert",
        &format!("{FIX}/text2im_base/checkpoint.pt"),
        "--kind",
        "base",
        "--config",
        &format!("{FIX}/text2im_base/config.json"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let conv = converted(&out);
    let want = tensors(&std::fs::read(format!("{FIX}/text2im_base/weights.safetensors")).unwrap());
    assert_eq!(conv.len(), want.len());
    for (n, shape, data, dt) in want {
        let (s, d, cdt) = &conv[&n];
        assert_eq!((s, cdt), (&shape, &dt), "{n}");
        assert!(d == &data, "{n}: values differ");
    }
    // The converted folder runs the official forward pass and trace.
    let r = webglide(&[
        "check-fixture",
        &format!("{FIX}/text2im_base"),
        "--model",
        out.to_str().unwrap(),
    ]);
    assert!(
        r.status.success(),
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn f16_checkpoint_keeps_its_half_values() {
    let out = tmp("up");
    let r = webglide(&[
        "convert",
        &format!("{FIX}/upsample/checkpoint-fp16.pt"),
        "--kind",
        "upsample",
        "--config",
        &format!("{FIX}/upsample/config.json"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let conv = converted(&out);
    let want = tensors(&std::fs::read(format!("{FIX}/upsample/weights.safetensors")).unwrap());
    let mut exact = 0;
    for (n, _, data, _) in &want {
        let (_, d, _) = &conv[n];
        for (a, b) in d.chunks(4).zip(data.chunks(4)) {
            let got = f32::from_le_bytes(a.try_into().unwrap());
            let orig = f32::from_le_bytes(b.try_into().unwrap());
            // The checkpoint holds f16(orig); converted f32 must be exactly that value.
            assert_eq!(
                got.to_bits(),
                half::f16::from_f32(orig).to_f32().to_bits(),
                "{n}"
            );
            exact += (got.to_bits() == orig.to_bits()) as usize;
        }
    }
    println!("{exact} values also equal the f32 originals");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn quantised_conversion_is_stored_packed() {
    let out = tmp("q4");
    let r = webglide(&[
        "convert",
        &format!("{FIX}/text2im_base/checkpoint.pt"),
        "--kind",
        "base",
        "--config",
        &format!("{FIX}/text2im_base/config.json"),
        "--quant",
        "q4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let conv = converted(&out);
    assert_eq!(
        conv["input_blocks.1.0.in_layers.2.weight"].2,
        safetensors::Dtype::U32
    );
    assert_eq!(
        conv["input_blocks.1.0.in_layers.0.weight"].2,
        safetensors::Dtype::F32,
        "norms stay f32"
    );
    assert_eq!(
        conv["time_embed.0.weight"].2,
        safetensors::Dtype::F32,
        "time_embed stays f32"
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn bad_input_is_an_error_and_leaves_nothing() {
    let parent = tmp("bad");
    std::fs::create_dir_all(&parent).unwrap();
    let out = parent.join("model");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                format!("{FIX}/text2im_base/checkpoint.pt"),
                "--kind".into(),
                "base".into(),
            ],
            "unknown key",
        ),
        (
            vec![
                format!("{FIX}/text2im_base/checkpoint.pt"),
                "--kind".into(),
                "upsample".into(),
                "--config".into(),
                format!("{FIX}/text2im_base/config.json"),
            ],
            "describes a 'base' model",
        ),
        // A safetensors file that holds no model weights.
        (
            vec![
                format!("{FIX}/text2im_base/io.safetensors"),
                "--kind".into(),
                "base".into(),
                "--config".into(),
                format!("{FIX}/text2im_base/config.json"),
            ],
            "",
        ),
        // Not a checkpoint at all.
        (
            vec![
                format!("{FIX}/text2im_base/config.json"),
                "--kind".into(),
                "base".into(),
                "--config".into(),
                format!("{FIX}/text2im_base/config.json"),
            ],
            "not a torch.save",
        ),
    ];
    // A truncated and a garbled checkpoint.
    let full = std::fs::read(format!("{FIX}/text2im_base/checkpoint.pt")).unwrap();
    let trunc = parent.join("trunc.pt");
    std::fs::write(&trunc, &full[..full.len() * 2 / 3]).unwrap();
    let mut garbled = full.clone();
    let pkl = garbled.windows(8).position(|w| w == b"data.pkl").unwrap();
    for b in &mut garbled[pkl + 200..pkl + 400] {
        *b ^= 0x5a;
    }
    let garb = parent.join("garbled.pt");
    std::fs::write(&garb, &garbled).unwrap();
    let cfg = format!("{FIX}/text2im_base/config.json");
    let mut all = cases;
    all.push((
        vec![
            trunc.to_str().unwrap().into(),
            "--kind".into(),
            "base".into(),
            "--config".into(),
            cfg.clone(),
        ],
        "",
    ));
    all.push((
        vec![
            garb.to_str().unwrap().into(),
            "--kind".into(),
            "base".into(),
            "--config".into(),
            cfg,
        ],
        "",
    ));
    for (args, msg) in all {
        let mut a: Vec<&str> = vec!["convert"];
        a.extend(args.iter().map(String::as_str));
        a.extend(["--out", out.to_str().unwrap()]);
        let r = webglide(&a);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{a:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(msg) && !stderr.contains("panicked"),
            "{a:?}: {stderr}"
        );
        assert!(!out.exists(), "{a:?} left {}", out.display());
        let leftovers: Vec<_> = std::fs::read_dir(&parent)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{a:?} left a partial folder");
    }
    std::fs::remove_dir_all(&parent).ok();
}
