//! GLIDE host-side pieces against the official fixtures: tokenizer (exact on
//! every case of tokens.json), beta schedules, respacing and the respaced
//! arrays (schedules.safetensors, respacing_1000.json).
#![cfg(not(target_arch = "wasm32"))]

use engine::glide::schedule::{betas, space_timesteps, Schedule};
use engine::glide::tokenizer::GlideTokenizer;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/glide");

fn read(path: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}/{path}"))
        .unwrap_or_else(|e| panic!("{path}: {e} (is ../shared present?)"))
}

#[test]
fn tokenizer_matches_official_ids() {
    let public = concat!(env!("CARGO_MANIFEST_DIR"), "/../public/tokenizer");
    let tok = GlideTokenizer::from_gz(
        &std::fs::read(format!("{public}/encoder.json.gz")).unwrap(),
        &std::fs::read(format!("{public}/vocab.bpe.gz")).unwrap(),
    )
    .unwrap();
    let cases: serde_json::Value = serde_json::from_slice(&read("tokenizer/tokens.json")).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 60);
    for c in cases {
        let prompt = c["prompt"].as_str().unwrap();
        let ids: Vec<u32> = c["glide_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(prompt), ids, "prompt {prompt:?}");
        let padded: Vec<u32> = c["glide_padded_128"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mask: Vec<u32> = c["glide_mask_128"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap() as u32)
            .collect();
        assert_eq!(tok.padded(prompt, 128), (padded, mask), "padded {prompt:?}");
    }
}

#[test]
fn tokenizer_rejects_garbage_files() {
    assert!(GlideTokenizer::from_gz(b"not gzip", b"also not").is_err());
}

fn f64s(st: &safetensors::SafeTensors, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name}"));
    match t.dtype() {
        safetensors::Dtype::F64 => t
            .data()
            .chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        d => panic!("{name}: {d:?}"),
    }
}

fn close(name: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name} length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1.0),
            "{name}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn schedules_match_official_arrays() {
    let bytes = read("schedules/schedules.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for name in ["squaredcos_cap_v2", "linear"] {
        close(
            name,
            &betas(name, 1000).unwrap(),
            &f64s(&st, &format!("{name}.betas_1000")),
        );
    }
    for (sched, resp) in [
        ("squaredcos_cap_v2", "100"),
        ("squaredcos_cap_v2", "10"),
        ("linear", "fast27"),
        ("squaredcos_cap_v2", "fast27"),
        ("linear", "100"),
        ("squaredcos_cap_v2", "full"),
    ] {
        let spec = if resp == "full" { "" } else { resp };
        let s = Schedule::new(sched, 1000, spec).unwrap();
        let p = format!("{sched}.{resp}");
        let map: Vec<f64> = s.timestep_map.iter().map(|&t| t as f64).collect();
        close(
            &format!("{p}.timestep_map"),
            &map,
            &f64s(&st, &format!("{p}.timestep_map")),
        );
        close(
            &format!("{p}.betas"),
            &s.betas,
            &f64s(&st, &format!("{p}.betas")),
        );
        close(
            &format!("{p}.alphas_cumprod"),
            &s.alphas_cumprod,
            &f64s(&st, &format!("{p}.alphas_cumprod")),
        );
        close(
            &format!("{p}.alphas_cumprod_prev"),
            &s.alphas_cumprod_prev,
            &f64s(&st, &format!("{p}.alphas_cumprod_prev")),
        );
        close(
            &format!("{p}.posterior_variance"),
            &s.posterior_variance,
            &f64s(&st, &format!("{p}.posterior_variance")),
        );
        close(
            &format!("{p}.posterior_log_variance_clipped"),
            &s.posterior_log_variance_clipped,
            &f64s(&st, &format!("{p}.posterior_log_variance_clipped")),
        );
        close(
            &format!("{p}.posterior_mean_coef1"),
            &s.posterior_mean_coef1,
            &f64s(&st, &format!("{p}.posterior_mean_coef1")),
        );
        close(
            &format!("{p}.posterior_mean_coef2"),
            &s.posterior_mean_coef2,
            &f64s(&st, &format!("{p}.posterior_mean_coef2")),
        );
        let logb: Vec<f64> = s.betas.iter().map(|b| b.ln()).collect();
        close(
            &format!("{p}.log_betas"),
            &logb,
            &f64s(&st, &format!("{p}.log_betas")),
        );
    }
}

#[test]
fn respacing_matches_all_official_specs() {
    let v: serde_json::Value =
        serde_json::from_slice(&read("schedules/respacing_1000.json")).unwrap();
    let map = v["timesteps"].as_object().unwrap();
    assert!(map.len() >= 200);
    for (spec, want) in map {
        let want: Vec<usize> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(space_timesteps(1000, spec).unwrap(), want, "spec {spec}");
    }
}

#[test]
fn architecture_keys_equal_the_released_models() {
    use engine::glide::model::GlideConfig;
    for name in ["base", "upsample", "base-inpaint", "upsample-inpaint"] {
        let v: serde_json::Value =
            serde_json::from_slice(&read(&format!("keys/{name}.json"))).unwrap();
        let cfg: GlideConfig = serde_json::from_value(v["options"].clone()).unwrap();
        let ours = cfg.weight_shapes().unwrap();
        let theirs: Vec<(String, Vec<usize>)> = v["keys"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    s["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect(),
                )
            })
            .collect();
        for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(o, t, "{name}: key {i} (name, shape) in state_dict order");
        }
        assert_eq!(ours.len(), theirs.len(), "{name}: key count");
        let params: usize = ours.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(
            params as u64,
            v["n_params"].as_u64().unwrap(),
            "{name}: parameter count"
        );
    }
}

/// unet.py widens the input conv with the first level: `ch = input_ch =
/// int(channel_mult[0] * model_channels)`. No released config has
/// `channel_mult[0]` ≠ 1, so the keys of one that does are checked here.
#[test]
fn the_input_conv_has_the_first_levels_width() {
    use engine::glide::model::GlideConfig;
    let mut cfg = GlideConfig::for_kind("base").unwrap();
    cfg.num_channels = 32;
    cfg.channel_mult = "2,2,2,2".into();
    let keys = cfg.weight_shapes().unwrap();
    let shape = |n: &str| keys.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone());
    assert_eq!(shape("input_blocks.0.0.weight"), Some(vec![64, 3, 3, 3]));
    assert_eq!(
        shape("input_blocks.1.0.in_layers.2.weight"),
        Some(vec![64, 64, 3, 3])
    );
    assert_eq!(shape("input_blocks.1.0.skip_connection.weight"), None);
    // The last output block reads [h, input conv]: 64 + 64 channels.
    let last = keys
        .iter()
        .rfind(|(k, _)| k.starts_with("output_blocks.") && k.ends_with(".0.in_layers.0.weight"))
        .unwrap();
    assert_eq!(last.1, [128]);
    assert_eq!(shape("out.2.weight"), Some(vec![6, 64, 3, 3]));
}

#[test]
fn architecture_keys_equal_the_fixture_weights() {
    use engine::glide::model::GlideConfig;
    for case in [
        "text2im_base",
        "upsample",
        "inpaint_base",
        "inpaint_upsample",
    ] {
        let v: serde_json::Value =
            serde_json::from_slice(&read(&format!("{case}/config.json"))).unwrap();
        let cfg: GlideConfig =
            serde_json::from_value(v["create_model_and_diffusion_kwargs"].clone()).unwrap();
        let bytes = read(&format!("{case}/weights.safetensors"));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut file: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(k, t)| (k, t.shape().to_vec()))
            .collect();
        let mut ours = cfg.weight_shapes().unwrap();
        file.sort();
        ours.sort();
        assert_eq!(ours, file, "{case}");
    }
}

/// The image path resizes row by row from the bytes: exactly the resize of
/// the full [-1, 1] planes, for random images of odd sizes, up and down.
#[test]
fn images_resize_from_their_bytes_exactly_as_from_planes() {
    use engine::glide::pipeline::rgb8_to_planes;
    for (w, h, size) in [
        (37, 23, 16),
        (5, 9, 64),
        (301, 7, 64),
        (64, 65, 64),
        (3, 3, 224),
    ] {
        let noise = engine::rng::randn(w * h * 3, 3, w as u32);
        let rgb: Vec<u8> = noise
            .iter()
            .map(|v| (128.0 + 60.0 * v).clamp(0.0, 255.0) as u8)
            .collect();
        let plane = w * h;
        let mut planes = vec![0f32; 3 * plane];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planes[c * plane + i] = px[c] as f32 / 127.5 - 1.0;
            }
        }
        let want = engine::reference::bicubic_aa(&planes, 3, h, w, size, size);
        assert_eq!(
            rgb8_to_planes(&rgb, w, h, size).unwrap(),
            want,
            "{w}x{h} → {size}"
        );
    }
}

/// A mask file's 8-bit pixels give the keep-mask of their `v / 255` plane,
/// bit for bit, at odd sizes up and down; both check the length.
#[test]
fn masks_resize_from_their_bytes_exactly_as_from_planes() {
    use engine::glide::pipeline::{keep_mask, keep_mask_luma8};
    for (w, h, size) in [
        (37, 23, 16),
        (5, 9, 64),
        (301, 7, 64),
        (64, 64, 64),
        (65, 64, 64),
    ] {
        let noise = engine::rng::randn(w * h, 5, h as u32);
        let luma: Vec<u8> = noise
            .iter()
            .map(|v| (128.0 + 90.0 * v).clamp(0.0, 255.0) as u8)
            .collect();
        let plane: Vec<f32> = luma.iter().map(|&v| v as f32 / 255.0).collect();
        let want = keep_mask(&plane, w, h, size).unwrap();
        assert!(want.contains(&0.0) && want.contains(&1.0), "{w}x{h}: mixed");
        assert_eq!(
            keep_mask_luma8(&luma, w, h, size).unwrap(),
            want,
            "{w}x{h} → {size}"
        );
    }
    assert!(
        keep_mask_luma8(&[255; 63], 8, 8, 8).is_err(),
        "wrong length"
    );
    assert!(
        keep_mask_luma8(&[0; 64], 8, 8, 8).is_err(),
        "nothing painted"
    );
}

#[test]
fn inpaint_inputs_resize_and_threshold_like_the_notebook() {
    use engine::glide::pipeline::{keep_mask, rgb8_to_planes, upscale_nearest};
    // Same size: exact [-1, 1] planes.
    let rgb: Vec<u8> = (0..2 * 2 * 3).map(|i| (i * 20) as u8).collect();
    let p = rgb8_to_planes(&rgb, 2, 2, 2).unwrap();
    assert_eq!(p.len(), 12);
    assert_eq!(p[0], 0.0 / 127.5 - 1.0); // R of pixel 0
    assert_eq!(p[4], 20.0 / 127.5 - 1.0); // G of pixel 0
                                          // Any size and aspect → square; a constant image stays constant.
    let solid: Vec<u8> = (0..37 * 23).flat_map(|_| [200u8, 60, 40]).collect();
    let q = rgb8_to_planes(&solid, 37, 23, 16).unwrap();
    assert_eq!(q.len(), 3 * 256);
    for (c, want) in [200.0f32, 60.0, 40.0].iter().enumerate() {
        for v in &q[c * 256..(c + 1) * 256] {
            assert!(((v + 1.0) * 127.5 - want).abs() < 1e-3, "{v}");
        }
    }
    assert!(rgb8_to_planes(&solid, 37, 22, 16).is_err(), "wrong length");
    assert!(rgb8_to_planes(&[], 0, 0, 16).is_err(), "empty image");
    // Left half painted at 32 px → left half regenerated at 8 px.
    let regen: Vec<f32> = (0..32 * 32)
        .map(|i| if i % 32 < 16 { 1.0 } else { 0.0 })
        .collect();
    let keep = keep_mask(&regen, 32, 32, 8).unwrap();
    for (i, k) in keep.iter().enumerate() {
        assert_eq!(*k, if i % 8 < 4 { 0.0 } else { 1.0 }, "pixel {i}");
    }
    assert!(keep_mask(&[0.0; 64], 8, 8, 8).is_err(), "nothing painted");
    assert!(keep_mask(&[0.0; 63], 8, 8, 8).is_err(), "wrong length");
    // Nearest enlargement 2 → 4.
    let big = upscale_nearest(&[1.0, 0.0, 0.0, 1.0], 2, 4);
    assert_eq!(
        big,
        [1., 1., 0., 0., 1., 1., 0., 0., 0., 0., 1., 1., 0., 0., 1., 1.]
    );
}

#[test]
fn noisy_clip_keys_equal_the_released_encoders_and_the_fixture() {
    use engine::glide::clip::NoisyClipConfig;
    let shapes = |v: &serde_json::Value| -> Vec<(String, Vec<usize>)> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, s)| {
                let s = if s.is_object() { &s["shape"] } else { s };
                let dims = s.as_array().unwrap();
                (
                    k.clone(),
                    dims.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
                )
            })
            .collect()
    };
    for kind in engine::glide::clip::KINDS {
        let v: serde_json::Value =
            serde_json::from_slice(&read(&format!("keys/{kind}.json"))).unwrap();
        let cfg: NoisyClipConfig = serde_json::from_value(v["config"].clone()).unwrap();
        assert_eq!(
            cfg,
            NoisyClipConfig::released(),
            "{kind}: the released config"
        );
        let ours = cfg.weight_shapes(kind).unwrap();
        assert_eq!(
            ours,
            shapes(&v["keys"]),
            "{kind}: keys and shapes in state_dict order"
        );
        let params: usize = ours.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(
            params as u64,
            v["n_params"].as_u64().unwrap(),
            "{kind}: parameters"
        );
    }
    // The tiny fixture encoders: same rules at other widths, depths and sizes.
    let case: serde_json::Value = serde_json::from_slice(&read("clip/config.json")).unwrap();
    let cfg: NoisyClipConfig =
        serde_json::from_value(case["clip_config_yaml_values"].clone()).unwrap();
    for (kind, file) in [
        ("clip-image-enc", "clip/image_enc.safetensors"),
        ("clip-text-enc", "clip/text_enc.safetensors"),
    ] {
        let bytes = read(file);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut theirs: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .collect();
        let mut ours = cfg.weight_shapes(kind).unwrap();
        theirs.sort();
        ours.sort();
        assert_eq!(ours, theirs, "{file}");
    }
}
