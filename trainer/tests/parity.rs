//! The burn model the trainer optimises and the engine's WGSL model compute
//! the same function on the same weights: random (non-zero everywhere)
//! weights are exported with the official names, loaded by the engine, and
//! both forward passes are compared — for every conditioning kind.

use burn::tensor::{Device, Int, Tensor, TensorData};
use engine::glide::model::{Conditioning, Glide as EngineGlide, GlideConfig};
use engine::glide::weights::WeightSource;
use engine::{Gpu, GpuOptions, WeightDType};
use webglide_trainer::model::{Cond, Glide, Init};

fn tiny(kind: &str) -> GlideConfig {
    let mut c = GlideConfig::for_kind(kind).unwrap();
    c.image_size = 16;
    c.num_channels = 32;
    c.num_res_blocks = 1;
    c.channel_mult = "1,2".into();
    c.attention_resolutions = "16,8".into();
    c.num_head_channels = 16;
    c.text_ctx = 8;
    c.xf_width = 32;
    c.xf_layers = 2;
    c.xf_heads = 2;
    c
}

fn randn(n: usize, seed: u64) -> Vec<f32> {
    engine::rng::randn(n, seed, 0)
}

fn check(kind: &str) {
    let cfg = tiny(kind);
    let dev = Device::flex();
    let model = Glide::new(&cfg, &Init::Random(1), &dev).unwrap();
    let exported = model.export();
    // Names and shapes are exactly the official state_dict's.
    let want = cfg.weight_shapes().unwrap();
    let got: Vec<(String, Vec<usize>)> = exported
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    assert_eq!(
        got, want,
        "{kind}: exported keys differ from the official ones"
    );

    let (b, s, ctx) = (2, cfg.image_size, cfg.text_ctx);
    let x = randn(b * 3 * s * s, 1);
    let ts = [999.0f32, 17.0];
    let tokens: Vec<u32> = vec![
        320, 1929, 539, 320, 6829, 50256, 50256, 50256, 77, 50256, 50256, 50256, 50256, 50256,
        50256, 50256,
    ];
    let mask: Vec<u32> = vec![1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    let low = randn(b * 3 * 4 * 4, 2);
    let img = randn(b * 3 * s * s, 3);
    let keep: Vec<f32> = (0..b * s * s).map(|i| ((i / 5) % 2) as f32).collect();

    let t4 = |v: &[f32], shape: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(v.to_vec(), shape), &dev)
    };
    let cond = Cond {
        tokens: Tensor::<2, Int>::from_data(
            TensorData::new(
                tokens.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                [b, ctx],
            ),
            &dev,
        ),
        mask: Tensor::<2>::from_data(
            TensorData::new(mask.iter().map(|&v| v as f32).collect::<Vec<_>>(), [b, ctx]),
            &dev,
        ),
        low_res: cfg.super_res.then(|| t4(&low, [b, 3, 4, 4])),
        inpaint: cfg
            .inpaint
            .then(|| (t4(&img, [b, 3, s, s]), t4(&keep, [b, 1, s, s]))),
        pooled_keep: None,
    };
    let run = |m: &Glide| -> Vec<f32> {
        m.forward(
            t4(&x, [b, 3, s, s]),
            Tensor::<1>::from_data(TensorData::new(ts.to_vec(), [b]), &dev),
            &cond,
        )
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
    };
    let burn_out = run(&model);

    // The export holds exactly the weights the model computes with.
    let map: webglide_trainer::model::WeightMap = exported
        .iter()
        .map(|(n, s, v)| (n.clone(), (s.clone(), v.clone())))
        .collect();
    let again = Glide::new(&cfg, &Init::From(&map), &dev).unwrap();
    let again_out = run(&again);
    let e = burn_out
        .iter()
        .zip(&again_out)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        e < 1e-5,
        "{kind}: exported weights differ from the model's own ({e})"
    );

    // The engine, from the exported safetensors.
    let file = webglide_trainer::train::safetensors_bytes(&exported).unwrap();
    let gpu =
        pollster::block_on(Gpu::new(GpuOptions::default())).expect("a wgpu adapter (lavapipe)");
    let em = EngineGlide::load(
        &gpu,
        cfg.clone(),
        &WeightSource::single(&file).unwrap(),
        WeightDType::F32,
    )
    .unwrap();
    // Everything is uploaded before recording: an upload lands before the
    // recorded work, so it must not reuse a buffer that work still reads.
    let tok = gpu.upload_u32(&[b, ctx], &tokens).unwrap();
    let msk = gpu.upload_u32(&[b, ctx], &mask).unwrap();
    let xt = gpu.upload(&[b, 3, s, s], &x).unwrap();
    let tt = gpu.upload(&[b], &ts).unwrap();
    let lt = gpu.upload(&[b, 3, 4, 4], &low).unwrap();
    let it = gpu.upload(&[b, 3, s, s], &img).unwrap();
    let kt = gpu.upload(&[b, 1, s, s], &keep).unwrap();
    let mut rec = gpu.recorder();
    let text = em.encode_text(&mut rec, &tok, &msk, None).unwrap();
    let c = Conditioning {
        low_res: cfg.super_res.then_some(&lt),
        inpaint: cfg.inpaint.then_some((&it, &kt)),
    };
    let y = em.forward(&mut rec, &xt, &tt, &text, c, None).unwrap();
    rec.submit().unwrap();
    let engine_out = pollster::block_on(gpu.read(&y)).unwrap();

    assert_eq!(burn_out.len(), engine_out.len());
    let scale = engine_out.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = burn_out
        .iter()
        .zip(&engine_out)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{kind}: max |burn − engine| = {err:.2e} (output scale {scale:.2})");
    assert!(scale > 0.1, "{kind}: degenerate output");
    assert!(
        err <= 1e-4 * scale.max(1.0),
        "{kind}: burn and engine differ by {err}"
    );
}

#[test]
fn burn_and_engine_agree_base() {
    check("base");
}

#[test]
fn burn_and_engine_agree_upsample_inpaint() {
    check("upsample-inpaint");
}

#[test]
fn burn_and_engine_agree_base_inpaint() {
    check("base-inpaint");
}

#[test]
fn burn_and_engine_agree_upsample() {
    check("upsample");
}
