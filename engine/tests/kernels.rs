//! Every WGSL kernel against the CPU references in `engine::reference`, on
//! random inputs over several shapes (odd sizes, batch > 1), with outputs
//! poisoned (NaN) before each kernel runs. Runs natively (lavapipe in CI) and
//! in headless Chromium (WebGPU on SwiftShader) via wasm-bindgen-test.
//!
//! Error bounds (max error relative to the output's max magnitude):
//! f32 arithmetic kernels 1e-5 (norms, resampling, copies: 1e-6 to 1e-5),
//! transcendental kernels (GELU, SiLU, softmax, attention) 2e-5 to 1e-4.

mod common;

use common::{check, devices, err, fixture, gpu, portable_gpu, small_gpu, Rng, TestResult};
use engine::kernels::{self, Act};
use engine::reference as cpu;
use engine::{Gpu, WeightDType, WeightData};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

static UNITS: &[u8] = include_bytes!("../../../shared/fixtures/glide/units/io.safetensors");
static BICUBIC: &[u8] =
    include_bytes!("../../../shared/fixtures/unclip/bicubic/resize.safetensors");

const DTYPES: [WeightDType; 4] = [
    WeightDType::F32,
    WeightDType::F16,
    WeightDType::Q8,
    WeightDType::Q4,
];

#[allow(clippy::too_many_arguments)]
async fn linear_case(
    gpu: &Gpu,
    rng: &mut Rng,
    m: usize,
    k: usize,
    n: usize,
    dtype: WeightDType,
    act: Act,
    extras: bool,
) -> TestResult {
    let x = rng.normals(m * k, 1.0);
    let w = rng.normals(n * k, 0.2);
    let wd = WeightData::from_f32(&[n, k], &w, dtype).map_err(err)?;
    let bias = rng.normals(n, 0.5);
    let res = rng.normals(m * n, 1.0);
    let xt = gpu.upload(&[m, k], &x).map_err(err)?;
    let wt = gpu.upload_weight(&wd).map_err(err)?;
    let bt = gpu.upload(&[n], &bias).map_err(err)?;
    let rt = gpu.upload(&[m, n], &res).map_err(err)?;
    let mut rec = gpu.recorder();
    let y = kernels::matmul::linear(
        &mut rec,
        &xt,
        &wt,
        extras.then_some(&bt),
        extras.then_some(&rt),
        act,
    )
    .map_err(err)?;
    rec.submit().map_err(err)?;
    let got = gpu.read(&y).await.map_err(err)?;
    let want = cpu::linear(
        &x,
        &wd.to_f32(),
        n,
        extras.then_some(&bias[..]),
        extras.then_some(&res[..]),
        act,
    );
    check(
        &format!("linear {m}x{k}x{n} {dtype:?} {act:?}"),
        &got,
        &want,
        2e-5,
    )
}

async fn matmul_all_dtypes() -> TestResult {
    for gpu in devices().await {
        matmul_all_dtypes_on(gpu).await?;
    }
    Ok(())
}

async fn matmul_all_dtypes_on(gpu: &Gpu) -> TestResult {
    let mut rng = Rng::new(1);
    for &(m, k, n) in &[(1, 1, 1), (33, 47, 29), (130, 96, 70), (8, 512, 768)] {
        for dtype in DTYPES {
            linear_case(gpu, &mut rng, m, k, n, dtype, Act::None, false).await?;
        }
    }
    linear_case(gpu, &mut rng, 77, 64, 65, WeightDType::F32, Act::Gelu, true).await?;
    linear_case(gpu, &mut rng, 5, 100, 3, WeightDType::Q8, Act::Silu, true).await?;
    linear_case(
        gpu,
        &mut rng,
        17,
        33,
        9,
        WeightDType::Q4,
        Act::QuickGelu,
        true,
    )
    .await
}
gpu_test!(matmul_all_dtypes);

/// Quantisation error itself (not the kernel): q8 ≈ 0.4 %, q4 ≈ 7 % of the block max.
/// Where the adapter has `shader-f16` and subgroups (lavapipe has both) the
/// kernels are built with them: f16 weights read as native f16 and
/// reductions with subgroup operations. The f16 path gives the very same bits
/// as the portable one (an f16 converts to f32 exactly and the summation order
/// is unchanged); the subgroup reductions differ only in summation order.
/// Every kernel test also runs on both devices (`devices()`).
async fn optional_features_are_used() -> TestResult {
    let (gpu, portable) = (gpu().await, portable_gpu().await);
    #[cfg(not(target_arch = "wasm32"))]
    if gpu.report.name.contains("llvmpipe") && !(gpu.report.shader_f16 && gpu.report.subgroups) {
        return Err("lavapipe offers shader-f16 and subgroups, but they were not enabled".into());
    }
    let mut rng = Rng::new(21);
    let (m, k, n) = (37, 129, 70);
    let x = rng.normals(m * k, 1.0);
    let w =
        WeightData::from_f32(&[n, k], &rng.normals(n * k, 0.2), WeightDType::F16).map_err(err)?;
    let mut outs = Vec::new();
    for g in [gpu, portable] {
        let xt = g.upload(&[m, k], &x).map_err(err)?;
        let wt = g.upload_weight(&w).map_err(err)?;
        let mut rec = g.recorder();
        let y = kernels::matmul::linear(&mut rec, &xt, &wt, None, None, Act::None).map_err(err)?;
        let ln = kernels::layer_norm::layer_norm(&mut rec, &xt, None, None, 1e-5).map_err(err)?;
        let sm = kernels::softmax::softmax(&mut rec, &xt, 1.0, None).map_err(err)?;
        rec.submit().map_err(err)?;
        outs.push([
            g.read(&y).await.map_err(err)?,
            g.read(&ln).await.map_err(err)?,
            g.read(&sm).await.map_err(err)?,
        ]);
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    if bits(&outs[0][0]) != bits(&outs[1][0]) {
        return Err("f16 matmul: native f16 and unpacked results differ".into());
    }
    check(
        "layer_norm, default vs portable",
        &outs[0][1],
        &outs[1][1],
        2e-6,
    )?;
    check(
        "softmax, default vs portable",
        &outs[0][2],
        &outs[1][2],
        2e-6,
    )?;
    let modules = gpu.shader_modules();
    for (present, label) in [
        (gpu.report.shader_f16, "matmul.wgsl+f16"),
        (gpu.report.subgroups, "layer_norm.wgsl+subgroups"),
        (gpu.report.subgroups, "softmax.wgsl+subgroups"),
    ] {
        if present != modules.iter().any(|l| l == label) {
            return Err(format!(
                "module {label} built: {}, feature: {present}",
                !present
            ));
        }
    }
    if let Some(l) = portable.shader_modules().iter().find(|l| l.contains('+')) {
        return Err(format!("the portable device built {l}"));
    }
    Ok(())
}
gpu_test!(optional_features_are_used);

/// `Gpu::flops_recorded` counts 2 per multiply-add of linear, conv and
/// attention dispatches (what `bench pipeline` divides by time), and nothing else.
async fn flops_are_counted() -> TestResult {
    let gpu = &common::fresh_gpu().await;
    let mut rng = Rng::new(31);
    let x = gpu
        .upload(&[2, 5, 7, 9], &rng.normals(2 * 5 * 63, 1.0))
        .map_err(err)?;
    let conv_w = WeightData::from_f32(&[11, 5, 3, 3], &rng.normals(11 * 45, 0.2), WeightDType::Q8)
        .map_err(err)?;
    let lin_w =
        WeightData::from_f32(&[13, 9], &rng.normals(13 * 9, 0.2), WeightDType::F32).map_err(err)?;
    let (conv_w, lin_w) = (
        gpu.upload_weight(&conv_w).map_err(err)?,
        gpu.upload_weight(&lin_w).map_err(err)?,
    );
    // legacy QKV: N 2, 3 heads of d 4 (36 channels), T 10; encoder S 5.
    let qkv = gpu
        .upload(&[2, 36, 10], &rng.normals(720, 1.0))
        .map_err(err)?;
    let ekv = gpu
        .upload(&[2, 24, 5], &rng.normals(240, 1.0))
        .map_err(err)?;
    let mut rec = gpu.recorder();
    let mut counted = Vec::new();
    let mut last = gpu.flops_recorded();
    let mut step = |what: &str, want: u64, now: u64| {
        counted.push((what.to_string(), now - last, want));
        last = now;
    };
    kernels::conv::conv2d(&mut rec, &x, &conv_w, None, None, None).map_err(err)?;
    step("conv 3x3", 2 * 2 * 11 * 5 * 9 * 63, gpu.flops_recorded());
    kernels::matmul::linear(&mut rec, &x, &lin_w, None, None, Act::None).map_err(err)?;
    step("linear", 2 * (2 * 5 * 7) * 9 * 13, gpu.flops_recorded());
    kernels::attention::legacy_qkv(&mut rec, &qkv, Some(&ekv), 3).map_err(err)?;
    step(
        "attention",
        4 * 2 * 3 * 10 * (5 + 10) * 4,
        gpu.flops_recorded(),
    );
    kernels::softmax::softmax(&mut rec, &x, 1.0, None).map_err(err)?;
    step("softmax (not counted)", 0, gpu.flops_recorded());
    rec.submit().map_err(err)?;
    for (what, got, want) in counted {
        if got != want {
            return Err(format!("{what}: counted {got} FLOPs, expected {want}"));
        }
    }
    Ok(())
}
gpu_test!(flops_are_counted);

async fn quantisation_error_is_bounded() -> TestResult {
    let mut rng = Rng::new(2);
    let w = rng.normals(64 * 96, 1.0);
    for (dtype, tol) in [
        (WeightDType::F16, 1e-3),
        (WeightDType::Q8, 5e-3),
        (WeightDType::Q4, 8e-2),
    ] {
        let back = WeightData::from_f32(&[64, 96], &w, dtype)
            .map_err(err)?
            .to_f32();
        check(&format!("{dtype:?} round trip"), &back, &w, tol)?;
    }
    Ok(())
}
gpu_test!(quantisation_error_is_bounded);

#[allow(clippy::too_many_arguments)]
async fn conv_case(
    gpu: &Gpu,
    rng: &mut Rng,
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    ks: usize,
    dtype: WeightDType,
    norm: bool,
    emb: bool,
    res: bool,
) -> TestResult {
    let x = rng.normals(n * cin * h * w, 1.0);
    let wv = rng.normals(cout * cin * ks * ks, 0.3);
    let wd = WeightData::from_f32(&[cout, cin, ks, ks], &wv, dtype).map_err(err)?;
    let bias = rng.normals(cout, 0.5);
    let resv = rng.normals(n * cout * h * w, 1.0);
    let xt = gpu.upload(&[n, cin, h, w], &x).map_err(err)?;
    let wt = gpu.upload_weight(&wd).map_err(err)?;
    let bt = gpu.upload(&[cout], &bias).map_err(err)?;
    let rt = gpu.upload(&[n, cout, h, w], &resv).map_err(err)?;
    let groups = if cin.is_multiple_of(32) { 32 } else { 1 };
    let gamma = rng
        .normals(cin, 0.3)
        .iter()
        .map(|g| 1.0 + g)
        .collect::<Vec<_>>();
    let beta = rng.normals(cin, 0.3);
    let embv = rng.normals(n * 2 * cin, 0.5);
    let (gt, bet, et) = (
        gpu.upload(&[cin], &gamma).map_err(err)?,
        gpu.upload(&[cin], &beta).map_err(err)?,
        gpu.upload(&[n, 2 * cin], &embv).map_err(err)?,
    );
    let mut rec = gpu.recorder();
    let coef = if norm {
        Some(
            kernels::group_norm::norm_coeffs(
                &mut rec,
                &xt,
                &gt,
                &bet,
                groups,
                1e-5,
                emb.then_some(&et),
            )
            .map_err(err)?,
        )
    } else {
        None
    };
    let y = kernels::conv::conv2d(
        &mut rec,
        &xt,
        &wt,
        Some(&bt),
        coef.as_ref().map(|c| kernels::conv::InputNorm {
            coef: c,
            silu: true,
        }),
        res.then_some(&rt),
    )
    .map_err(err)?;
    rec.submit().map_err(err)?;
    let got = gpu.read(&y).await.map_err(err)?;
    let cpu_coef = cpu::group_norm_coeffs(
        &x,
        n,
        cin,
        groups,
        1e-5,
        &gamma,
        &beta,
        emb.then_some((&embv[..], 2 * cin)),
    );
    let want = cpu::conv2d(
        &x,
        n,
        cin,
        h,
        w,
        &wd.to_f32(),
        cout,
        ks,
        Some(&bias),
        norm.then_some((&cpu_coef[..], true)),
        res.then_some(&resv[..]),
    );
    check(
        &format!(
            "conv{ks}x{ks} n{n} {cin}->{cout} {h}x{w} {dtype:?} norm {norm} emb {emb} res {res}"
        ),
        &got,
        &want,
        3e-5,
    )
}

/// `conv2d_upsampled`: GLIDE's up ResBlock convs, nearest ×2 folded into the
/// loads of the (normalised) input and of the residual, against the CPU
/// upsampling then convolving; odd sizes, and on the small-binding device an
/// item over the cap (input and output in channel ranges).
async fn conv2d_upsampled_matches_cpu() -> TestResult {
    // (n, cin, h, w, cout, ks, norm, res)
    let cases = [
        (2, 40, 5, 7, 24, 3, true, true),
        (1, 72, 8, 8, 20, 3, true, true),
        (3, 8, 3, 2, 5, 1, false, true),
        (1, 16, 4, 6, 70, 3, true, false),
    ];
    let mut runs: Vec<(&Gpu, &[_])> = devices()
        .await
        .into_iter()
        .map(|g| (g, &cases[..]))
        .collect();
    // Over the 16 KiB cap: the 72-channel input, the 20-channel output (16×16).
    runs.push((small_gpu().await, &cases[1..2]));
    for (gpu, cases) in runs {
        let mut rng = Rng::new(31);
        for &(n, cin, h, w, cout, ks, norm, res) in cases {
            let x = rng.normals(n * cin * h * w, 1.0);
            let wd = WeightData::from_f32(
                &[cout, cin, ks, ks],
                &rng.normals(cout * cin * ks * ks, 0.3),
                WeightDType::Q8,
            )
            .map_err(err)?;
            let bias = rng.normals(cout, 0.5);
            let resv = rng.normals(n * cout * h * w, 1.0);
            let groups = 8;
            let gamma = rng.normals(cin, 0.3);
            let beta = rng.normals(cin, 0.3);
            let xt = gpu.upload(&[n, cin, h, w], &x).map_err(err)?;
            let wt = gpu.upload_weight(&wd).map_err(err)?;
            let bt = gpu.upload(&[cout], &bias).map_err(err)?;
            let rt = gpu.upload(&[n, cout, h, w], &resv).map_err(err)?;
            let (gt, bet) = (
                gpu.upload(&[cin], &gamma).map_err(err)?,
                gpu.upload(&[cin], &beta).map_err(err)?,
            );
            let mut rec = gpu.recorder();
            let coef =
                kernels::group_norm::norm_coeffs(&mut rec, &xt, &gt, &bet, groups, 1e-5, None)
                    .map_err(err)?;
            let y = kernels::conv::conv2d_upsampled(
                &mut rec,
                &xt,
                &wt,
                Some(&bt),
                norm.then_some(kernels::conv::InputNorm {
                    coef: &coef,
                    silu: true,
                }),
                res.then_some(&rt),
                kernels::conv::Upsampled {
                    input: true,
                    res: true,
                },
            )
            .map_err(err)?;
            rec.submit().map_err(err)?;
            let got = gpu.read(&y).await.map_err(err)?;
            let cpu_coef = cpu::group_norm_coeffs(&x, n, cin, groups, 1e-5, &gamma, &beta, None);
            let xin = if norm {
                cpu::norm_apply(&x, n, cin, &cpu_coef, Act::Silu)
            } else {
                x.clone()
            };
            let want = cpu::conv2d(
                &cpu::nearest2x(&xin, n * cin, h, w),
                n,
                cin,
                2 * h,
                2 * w,
                &wd.to_f32(),
                cout,
                ks,
                Some(&bias),
                None,
                res.then(|| cpu::nearest2x(&resv, n * cout, h, w))
                    .as_deref(),
            );
            check(
                &format!("upsampled conv{ks}x{ks} n{n} {cin}->{cout} {h}x{w} norm {norm} res {res} (cap {} KiB)", gpu.max_binding >> 10),
                &got,
                &want,
                3e-5,
            )?;
        }
    }
    Ok(())
}
gpu_test!(conv2d_upsampled_matches_cpu);

async fn conv2d_matches_cpu() -> TestResult {
    for gpu in devices().await {
        conv2d_matches_cpu_on(gpu).await?;
    }
    Ok(())
}

async fn conv2d_matches_cpu_on(gpu: &Gpu) -> TestResult {
    let mut rng = Rng::new(3);
    conv_case(
        gpu,
        &mut rng,
        2,
        5,
        7,
        9,
        11,
        3,
        WeightDType::F32,
        false,
        false,
        false,
    )
    .await?;
    conv_case(
        gpu,
        &mut rng,
        1,
        3,
        13,
        5,
        70,
        3,
        WeightDType::F32,
        false,
        false,
        true,
    )
    .await?;
    conv_case(
        gpu,
        &mut rng,
        2,
        32,
        16,
        16,
        64,
        3,
        WeightDType::F32,
        true,
        true,
        true,
    )
    .await?;
    conv_case(
        gpu,
        &mut rng,
        3,
        64,
        8,
        8,
        32,
        1,
        WeightDType::F16,
        true,
        false,
        false,
    )
    .await?;
    conv_case(
        gpu,
        &mut rng,
        2,
        64,
        9,
        7,
        33,
        3,
        WeightDType::Q8,
        true,
        true,
        false,
    )
    .await?;
    conv_case(
        gpu,
        &mut rng,
        1,
        96,
        4,
        4,
        65,
        1,
        WeightDType::Q4,
        false,
        false,
        true,
    )
    .await
}
gpu_test!(conv2d_matches_cpu);

async fn group_norm_matches_fixture_and_cpu() -> TestResult {
    for gpu in devices().await {
        group_norm_matches_fixture_and_cpu_on(gpu).await?;
    }
    Ok(())
}

async fn group_norm_matches_fixture_and_cpu_on(gpu: &Gpu) -> TestResult {
    let (shape, x) = fixture(UNITS, "groupnorm.x");
    let (_, g) = fixture(UNITS, "groupnorm.weight");
    let (_, b) = fixture(UNITS, "groupnorm.bias");
    let xt = gpu.upload(&shape, &x).map_err(err)?;
    let gt = gpu.upload(&[g.len()], &g).map_err(err)?;
    let bt = gpu.upload(&[b.len()], &b).map_err(err)?;
    for (act, key) in [
        (Act::None, "groupnorm.out"),
        (Act::Silu, "groupnorm.out_silu"),
    ] {
        let mut rec = gpu.recorder();
        let y = kernels::group_norm::group_norm(&mut rec, &xt, &gt, &bt, 32, 1e-5, None, act)
            .map_err(err)?;
        rec.submit().map_err(err)?;
        check(
            key,
            &gpu.read(&y).await.map_err(err)?,
            &fixture(UNITS, key).1,
            1e-5,
        )?;
    }
    // Random shapes with scale-shift, vs the CPU reference.
    let mut rng = Rng::new(4);
    for &(n, c, h, w) in &[(1, 32, 1, 1), (3, 64, 7, 5), (2, 96, 33, 17)] {
        let x = rng
            .normals(n * c * h * w, 2.0)
            .iter()
            .map(|v| v + 0.7)
            .collect::<Vec<_>>();
        let g = rng.normals(c, 0.5);
        let b = rng.normals(c, 0.5);
        let e = rng.normals(n * 2 * c, 0.5);
        let mut rec = gpu.recorder();
        let (xt, gt, bt, et) = (
            gpu.upload(&[n, c, h, w], &x).map_err(err)?,
            gpu.upload(&[c], &g).map_err(err)?,
            gpu.upload(&[c], &b).map_err(err)?,
            gpu.upload(&[n, 2 * c], &e).map_err(err)?,
        );
        let y = kernels::group_norm::group_norm(
            &mut rec,
            &xt,
            &gt,
            &bt,
            32,
            1e-5,
            Some(&et),
            Act::Silu,
        )
        .map_err(err)?;
        rec.submit().map_err(err)?;
        let coef = cpu::group_norm_coeffs(&x, n, c, 32, 1e-5, &g, &b, Some((&e, 2 * c)));
        check(
            &format!("group_norm {n}x{c}x{h}x{w}"),
            &gpu.read(&y).await.map_err(err)?,
            &cpu::norm_apply(&x, n, c, &coef, Act::Silu),
            1e-5,
        )?;
    }
    Ok(())
}
gpu_test!(group_norm_matches_fixture_and_cpu);

async fn layer_norm_and_softmax_match_cpu() -> TestResult {
    for gpu in devices().await {
        layer_norm_and_softmax_match_cpu_on(gpu).await?;
    }
    Ok(())
}

async fn layer_norm_and_softmax_match_cpu_on(gpu: &Gpu) -> TestResult {
    let mut rng = Rng::new(5);
    for &(rows, dim) in &[(1, 1), (21, 37), (5, 512), (2, 1000)] {
        let x = rng.normals(rows * dim, 3.0);
        let g = rng.normals(dim, 0.5);
        let b = rng.normals(dim, 0.5);
        let (xt, gt, bt) = (
            gpu.upload(&[rows, dim], &x).map_err(err)?,
            gpu.upload(&[dim], &g).map_err(err)?,
            gpu.upload(&[dim], &b).map_err(err)?,
        );
        let mask: Vec<f32> = (0..dim)
            .map(|i| if i % 3 == 1 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let mt = gpu.upload(&[1, dim], &mask).map_err(err)?;
        let mut rec = gpu.recorder();
        let ln = kernels::layer_norm::layer_norm(&mut rec, &xt, Some(&gt), Some(&bt), 1e-5)
            .map_err(err)?;
        let ln_plain =
            kernels::layer_norm::layer_norm(&mut rec, &xt, None, None, 1e-5).map_err(err)?;
        let sm = kernels::softmax::softmax(&mut rec, &xt, 0.7, None).map_err(err)?;
        let smm = kernels::softmax::softmax(&mut rec, &xt, 1.0, Some(&mt)).map_err(err)?;
        rec.submit().map_err(err)?;
        if dim > 1 {
            check(
                "layer_norm",
                &gpu.read(&ln).await.map_err(err)?,
                &cpu::layer_norm(&x, dim, Some(&g), Some(&b), 1e-5),
                1e-5,
            )?;
            check(
                "layer_norm plain",
                &gpu.read(&ln_plain).await.map_err(err)?,
                &cpu::layer_norm(&x, dim, None, None, 1e-5),
                1e-5,
            )?;
        }
        check(
            "softmax",
            &gpu.read(&sm).await.map_err(err)?,
            &cpu::softmax(&x, dim, 0.7, None),
            2e-5,
        )?;
        if dim > 1 {
            check(
                "softmax masked",
                &gpu.read(&smm).await.map_err(err)?,
                &cpu::softmax(&x, dim, 1.0, Some(&mask)),
                2e-5,
            )?;
        }
    }
    Ok(())
}
gpu_test!(layer_norm_and_softmax_match_cpu);

async fn attention_matches_fixture_and_cpu() -> TestResult {
    let gpu = gpu().await;
    // Official QKVAttentionLegacy with and without encoder kv (H=3, C=4, T=10, S=5).
    let (qs, qkv) = fixture(UNITS, "qkv_attention.qkv");
    let (es, ekv) = fixture(UNITS, "qkv_attention.encoder_kv");
    let qt = gpu.upload(&qs, &qkv).map_err(err)?;
    let et = gpu.upload(&es, &ekv).map_err(err)?;
    let mut rec = gpu.recorder();
    let with = kernels::attention::legacy_qkv(&mut rec, &qt, Some(&et), 3).map_err(err)?;
    let without = kernels::attention::legacy_qkv(&mut rec, &qt, None, 3).map_err(err)?;
    // GLIDE text transformer attention (4 heads, W=16).
    let (xs, xqkv) = fixture(UNITS, "xf_attention.qkv");
    let xt = gpu.upload(&xs, &xqkv).map_err(err)?;
    let xf = kernels::attention::per_head_qkv(&mut rec, &xt, 4, false, None).map_err(err)?;
    rec.submit().map_err(err)?;
    check(
        "qkv_attention.out",
        &gpu.read(&with).await.map_err(err)?,
        &fixture(UNITS, "qkv_attention.out").1,
        2e-5,
    )?;
    check(
        "qkv_attention.out_no_encoder",
        &gpu.read(&without).await.map_err(err)?,
        &fixture(UNITS, "qkv_attention.out_no_encoder").1,
        2e-5,
    )?;
    check(
        "xf_attention.out",
        &gpu.read(&xf).await.map_err(err)?,
        &fixture(UNITS, "xf_attention.out").1,
        2e-5,
    )?;

    // Random: GLIDE-like heads of 64 with 77 text tokens, odd token counts, several key tiles.
    let mut rng = Rng::new(6);
    for &(n, heads, d, t, s) in &[(2, 6, 64, 100, 16), (1, 2, 17, 65, 77), (3, 1, 8, 1, 3)] {
        let qkv = rng.normals(n * heads * 3 * d * t, 1.0);
        let ekv = rng.normals(n * heads * 2 * d * s, 1.0);
        let qt = gpu.upload(&[n, heads * 3 * d, t], &qkv).map_err(err)?;
        let et = gpu.upload(&[n, heads * 2 * d, s], &ekv).map_err(err)?;
        let mut rec = gpu.recorder();
        let o = kernels::attention::legacy_qkv(&mut rec, &qt, Some(&et), heads).map_err(err)?;
        rec.submit().map_err(err)?;
        check(
            &format!("legacy attention n{n} h{heads} d{d} t{t} s{s}"),
            &gpu.read(&o).await.map_err(err)?,
            &cpu::legacy_qkv(&qkv, n, heads, t, Some((&ekv, s))),
            5e-5,
        )?;
    }
    for &(n, l, heads, d, causal) in &[(2, 77, 8, 64, true), (3, 33, 4, 16, false)] {
        let qkv = rng.normals(n * l * heads * 3 * d, 1.0);
        let mask: Vec<f32> = (0..n * l)
            .map(|i| if i % l > l - 5 { -1e9 } else { 0.0 })
            .collect();
        let qt = gpu.upload(&[n, l, heads * 3 * d], &qkv).map_err(err)?;
        let mt = gpu.upload(&[n, l], &mask).map_err(err)?;
        let mut rec = gpu.recorder();
        let o = kernels::attention::per_head_qkv(&mut rec, &qt, heads, causal, Some(&mt))
            .map_err(err)?;
        rec.submit().map_err(err)?;
        check(
            &format!("per-head attention n{n} l{l} causal {causal}"),
            &gpu.read(&o).await.map_err(err)?,
            &cpu::per_head_qkv(&qkv, n, l, heads, causal, Some(&mask)),
            5e-5,
        )?;
    }
    Ok(())
}
gpu_test!(attention_matches_fixture_and_cpu);

async fn resampling_matches_fixtures_and_cpu() -> TestResult {
    let gpu = gpu().await;
    let (ls, low) = fixture(UNITS, "interp.low_res");
    let lt = gpu.upload(&ls, &low).map_err(err)?;
    let mut rec = gpu.recorder();
    let b64 = kernels::resample::bilinear(&mut rec, &lt, 64, 64).map_err(err)?;
    let b32 = kernels::resample::bilinear(&mut rec, &lt, 32, 32).map_err(err)?;
    let nn = kernels::resample::nearest2x(&mut rec, &lt).map_err(err)?;
    let ap = kernels::resample::avgpool2(&mut rec, &lt).map_err(err)?;
    rec.submit().map_err(err)?;
    check(
        "interp.bilinear_64",
        &gpu.read(&b64).await.map_err(err)?,
        &fixture(UNITS, "interp.bilinear_64").1,
        1e-6,
    )?;
    check(
        "interp.bilinear_32",
        &gpu.read(&b32).await.map_err(err)?,
        &fixture(UNITS, "interp.bilinear_32").1,
        1e-6,
    )?;
    check(
        "interp.nearest_x2",
        &gpu.read(&nn).await.map_err(err)?,
        &fixture(UNITS, "interp.nearest_x2").1,
        0.0,
    )?;
    check(
        "interp.avgpool_2",
        &gpu.read(&ap).await.map_err(err)?,
        &fixture(UNITS, "interp.avgpool_2").1,
        1e-6,
    )?;
    // Karlo's resize, through the same check as `webglide check-fixture`.
    let bicubic = engine::unclip::check::check_bicubic(gpu, BICUBIC, 2e-6)
        .await
        .map_err(err)?;
    if bicubic.rows.len() != 2 || !bicubic.ok() {
        return Err(format!("bicubic fixture: {:?}", bicubic.rows));
    }
    // Random odd sizes, up and down, vs the CPU references.
    let mut rng = Rng::new(7);
    for &(n, c, h, w, ho, wo) in &[
        (2, 3, 7, 5, 19, 11),
        (1, 4, 30, 22, 9, 13),
        (3, 2, 6, 8, 6, 8),
    ] {
        let x = rng.normals(n * c * h * w, 1.0);
        let xt = gpu.upload(&[n, c, h, w], &x).map_err(err)?;
        let mut rec = gpu.recorder();
        let bl = kernels::resample::bilinear(&mut rec, &xt, ho, wo).map_err(err)?;
        let bc = kernels::resample::bicubic_aa(&mut rec, &xt, ho, wo).map_err(err)?;
        let nn = kernels::resample::nearest2x(&mut rec, &xt).map_err(err)?;
        rec.submit().map_err(err)?;
        let p = n * c;
        check(
            "bilinear random",
            &gpu.read(&bl).await.map_err(err)?,
            &cpu::bilinear(&x, p, h, w, ho, wo),
            1e-5,
        )?;
        check(
            "bicubic_aa random",
            &gpu.read(&bc).await.map_err(err)?,
            &cpu::bicubic_aa(&x, p, h, w, ho, wo),
            1e-5,
        )?;
        check(
            "nearest2x random",
            &gpu.read(&nn).await.map_err(err)?,
            &cpu::nearest2x(&x, p, h, w),
            0.0,
        )?;
        if h % 2 == 0 && w % 2 == 0 {
            let mut rec = gpu.recorder();
            let ap = kernels::resample::avgpool2(&mut rec, &xt).map_err(err)?;
            rec.submit().map_err(err)?;
            check(
                "avgpool2 random",
                &gpu.read(&ap).await.map_err(err)?,
                &cpu::avgpool2(&x, p, h, w),
                1e-6,
            )?;
        }
    }
    Ok(())
}
gpu_test!(resampling_matches_fixtures_and_cpu);

async fn elementwise_and_activations() -> TestResult {
    let gpu = gpu().await;
    let (gs, gx) = fixture(UNITS, "gelu.x");
    let gt = gpu.upload(&gs, &gx).map_err(err)?;
    let mut rec = gpu.recorder();
    let gy = kernels::elementwise::unary(&mut rec, &gt, Act::Gelu, 1.0, 0.0).map_err(err)?;
    rec.submit().map_err(err)?;
    check(
        "gelu (official)",
        &gpu.read(&gy).await.map_err(err)?,
        &fixture(UNITS, "gelu.y").1,
        1e-6,
    )?;

    use kernels::elementwise::BinaryOp;
    let mut rng = Rng::new(8);
    let a_shape = [2usize, 5, 3, 7];
    let a = rng.normals(210, 2.0);
    let at = gpu.upload(&a_shape, &a).map_err(err)?;
    for (b_shape, op, act) in [
        (vec![2usize, 5, 3, 7], BinaryOp::Add, Act::None),
        (vec![5, 1, 1], BinaryOp::Mul, Act::Silu),
        (vec![2, 5, 1, 1], BinaryOp::Sub, Act::QuickGelu),
        (vec![7], BinaryOp::Add, Act::Relu),
        (vec![1], BinaryOp::Mul, Act::Gelu),
        (vec![3, 7], BinaryOp::GeluGrad, Act::None),
    ] {
        let bn: usize = b_shape.iter().product();
        let b = rng.normals(bn, 1.0);
        let bt = gpu.upload(&b_shape, &b).map_err(err)?;
        let mut rec = gpu.recorder();
        let y = kernels::elementwise::binary(&mut rec, &at, &bt, op, act).map_err(err)?;
        rec.submit().map_err(err)?;
        // NumPy broadcasting on the CPU.
        let bfull: Vec<usize> = {
            let mut s = vec![1; 4 - b_shape.len()];
            s.extend(&b_shape);
            s
        };
        let want: Vec<f32> = (0..210)
            .map(|i| {
                let idx = [i / 105, (i / 21) % 5, (i / 7) % 3, i % 7];
                let mut bi = 0;
                for d in 0..4 {
                    bi = bi * bfull[d] + if bfull[d] == 1 { 0 } else { idx[d] };
                }
                let (x, y) = (a[i] as f64, b[bi] as f64);
                let r = match op {
                    BinaryOp::Add => x + y,
                    BinaryOp::Mul => x * y,
                    BinaryOp::Sub => x - y,
                    BinaryOp::GeluGrad => cpu::gelu_grad(&[x as f32], &[y as f32])[0] as f64,
                };
                cpu::act(r, act) as f32
            })
            .collect();
        check(
            &format!("binary {op:?} {b_shape:?} {act:?}"),
            &gpu.read(&y).await.map_err(err)?,
            &want,
            2e-6,
        )?;
    }
    // Values of std 2 reach both clamp bounds of HardTanh.
    for act in [Act::Silu, Act::HardTanh] {
        let mut rec = gpu.recorder();
        let y = kernels::elementwise::unary(&mut rec, &at, act, 0.5, -0.25).map_err(err)?;
        rec.submit().map_err(err)?;
        let want: Vec<f32> = a
            .iter()
            .map(|&x| cpu::act(0.5 * x as f64 - 0.25, act) as f32)
            .collect();
        check(
            &format!("unary {act:?}"),
            &gpu.read(&y).await.map_err(err)?,
            &want,
            2e-6,
        )?;
    }
    Ok(())
}
gpu_test!(elementwise_and_activations);

async fn copy_embedding_timestep() -> TestResult {
    for gpu in devices().await {
        copy_embedding_timestep_on(gpu).await?;
    }
    Ok(())
}

async fn copy_embedding_timestep_on(gpu: &Gpu) -> TestResult {
    let mut rng = Rng::new(9);
    // concat + slice
    let a = rng.normals(2 * 3 * 5, 1.0);
    let b = rng.normals(2 * 4 * 5, 1.0);
    let (at, bt) = (
        gpu.upload(&[2, 3, 5], &a).map_err(err)?,
        gpu.upload(&[2, 4, 5], &b).map_err(err)?,
    );
    let mut rec = gpu.recorder();
    let cat = kernels::copy::concat_channels(&mut rec, &[&at, &bt]).map_err(err)?;
    let sl = kernels::copy::slice_channels(&mut rec, &cat, 2, 3).map_err(err)?;
    rec.submit().map_err(err)?;
    let mut want = Vec::new();
    for n in 0..2 {
        want.extend(&a[n * 15..(n + 1) * 15]);
        want.extend(&b[n * 20..(n + 1) * 20]);
    }
    check("concat", &gpu.read(&cat).await.map_err(err)?, &want, 0.0)?;
    let want_sl: Vec<f32> = (0..2)
        .flat_map(|n| want[n * 35 + 10..n * 35 + 25].to_vec())
        .collect();
    check("slice", &gpu.read(&sl).await.map_err(err)?, &want_sl, 0.0)?;
    // repeat along the batch
    let one = rng.normals(7, 1.0);
    let ot = gpu.upload(&[1, 1, 7], &one).map_err(err)?;
    let mut rec = gpu.recorder();
    let rep = kernels::copy::repeat_batch(&mut rec, &ot, 3).map_err(err)?;
    rec.submit().map_err(err)?;
    assert_eq!(rep.shape(), [3, 1, 7]);
    check(
        "repeat",
        &gpu.read(&rep).await.map_err(err)?,
        &one.repeat(3),
        0.0,
    )?;
    let mut rec = gpu.recorder();
    if kernels::copy::repeat_batch(&mut rec, &at, 2).is_ok() {
        return Err("repeat_batch of a [2, …] tensor was accepted".into());
    }
    // Whole rows: stacked copies of a [2, 5, 3] tensor, then its first row back.
    let mut rec = gpu.recorder();
    let rows = kernels::copy::repeat_rows(&mut rec, &at, 3).map_err(err)?;
    let first = kernels::copy::first_rows(&mut rec, &rows, 1).map_err(err)?;
    rec.submit().map_err(err)?;
    assert_eq!(rows.shape(), [6, 3, 5]);
    check(
        "repeat_rows",
        &gpu.read(&rows).await.map_err(err)?,
        &a.repeat(3),
        0.0,
    )?;
    check(
        "first_rows",
        &gpu.read(&first).await.map_err(err)?,
        &a[..15],
        0.0,
    )?;
    let mut rec = gpu.recorder();
    if kernels::copy::first_rows(&mut rec, &at, 3).is_ok() {
        return Err("first_rows beyond the rows was accepted".into());
    }

    // embedding with positional and padding tables, q8 table
    let (bsz, l, d, vocab) = (3, 7, 12, 50);
    let table = rng.normals(vocab * d, 1.0);
    let pos = rng.normals(l * d, 1.0);
    let pad = rng.normals(l * d, 1.0);
    let ids: Vec<u32> = (0..bsz * l)
        .map(|_| rng.below(vocab as u64) as u32)
        .collect();
    let mask: Vec<u32> = (0..bsz * l).map(|i| ((i % l) < 2 + i / l) as u32).collect();
    for dtype in [WeightDType::F32, WeightDType::Q8] {
        let wd = WeightData::from_f32(&[vocab, d], &table, dtype).map_err(err)?;
        let deq = wd.to_f32();
        let wt = gpu.upload_weight(&wd).map_err(err)?;
        let (it, pt, pdt, mt) = (
            gpu.upload_u32(&[bsz, l], &ids).map_err(err)?,
            gpu.upload(&[l, d], &pos).map_err(err)?,
            gpu.upload(&[l, d], &pad).map_err(err)?,
            gpu.upload_u32(&[bsz, l], &mask).map_err(err)?,
        );
        let mut rec = gpu.recorder();
        let e = kernels::embedding::embed(&mut rec, &it, &wt, Some(&pt), Some((&pdt, &mt)))
            .map_err(err)?;
        rec.submit().map_err(err)?;
        let want: Vec<f32> = (0..bsz * l * d)
            .map(|e| {
                let (r, c) = (e / d, e % d);
                let t = r % l;
                if mask[r] == 0 {
                    pad[t * d + c]
                } else {
                    deq[ids[r] as usize * d + c] + pos[t * d + c]
                }
            })
            .collect();
        check(
            &format!("embedding {dtype:?}"),
            &gpu.read(&e).await.map_err(err)?,
            &want,
            1e-6,
        )?;
    }

    // timestep embedding vs the official values
    let (_, t) = fixture(UNITS, "timestep_embedding.t");
    let tt = gpu.upload(&[t.len()], &t).map_err(err)?;
    for dim in [32, 192, 33] {
        let mut rec = gpu.recorder();
        let e = kernels::timestep::timestep_embedding(&mut rec, &tt, dim, false).map_err(err)?;
        rec.submit().map_err(err)?;
        let got = gpu.read(&e).await.map_err(err)?;
        // t up to 999 multiplies the 1-ulp differences of exp() between libraries.
        check(
            &format!("timestep_embedding.dim{dim}"),
            &got,
            &fixture(UNITS, &format!("timestep_embedding.dim{dim}")).1,
            5e-5,
        )?;
        check(
            &format!("timestep_embedding cpu dim{dim}"),
            &got,
            &cpu::timestep_embedding(&t, dim, false),
            5e-5,
        )?;
    }
    let mut rec = gpu.recorder();
    let e = kernels::timestep::timestep_embedding(&mut rec, &tt, 16, true).map_err(err)?;
    rec.submit().map_err(err)?;
    check(
        "timestep sin_first",
        &gpu.read(&e).await.map_err(err)?,
        &cpu::timestep_embedding(&t, 16, true),
        5e-5,
    )
}
gpu_test!(copy_embedding_timestep);

async fn philox_noise_matches_cpu() -> TestResult {
    let gpu = gpu().await;
    for &(n, seed, stream) in &[
        (1usize, 0u64, 0u32),
        (4099, 42, 3),
        (100_003, 0xDEAD_BEEF_1234, 99),
    ] {
        let mut rec = gpu.recorder();
        let t = kernels::rng::randn(&mut rec, &[n], seed, stream).map_err(err)?;
        rec.submit().map_err(err)?;
        let got = gpu.read(&t).await.map_err(err)?;
        // Values are O(1..5): an absolute bound of 2e-5 is a relative one too.
        check(
            &format!("philox n{n}"),
            &got,
            &engine::rng::randn(n, seed, stream),
            2e-5,
        )?;
    }
    Ok(())
}
gpu_test!(philox_noise_matches_cpu);

struct StepCase {
    cfg: bool,
    ddim: bool,
    pin: bool,
    grad: bool,
    last: bool,
    learned: bool,
}

async fn sampler_step_matches_cpu() -> TestResult {
    let gpu = gpu().await;
    let mut rng = Rng::new(10);
    let (b, c, s) = (2usize, 3usize, 37usize);
    for case in [
        StepCase {
            cfg: true,
            ddim: false,
            pin: false,
            grad: false,
            last: false,
            learned: true,
        },
        StepCase {
            cfg: true,
            ddim: false,
            pin: true,
            grad: false,
            last: false,
            learned: true,
        },
        StepCase {
            cfg: false,
            ddim: true,
            pin: false,
            grad: false,
            last: false,
            learned: true,
        },
        StepCase {
            cfg: false,
            ddim: false,
            pin: true,
            grad: true,
            last: true,
            learned: true,
        },
        StepCase {
            cfg: false,
            ddim: false,
            pin: false,
            grad: false,
            last: false,
            learned: false,
        },
    ] {
        let rows = if case.cfg { 2 * b } else { b };
        let mc = if case.learned { 2 * c } else { c };
        let mo = rng.normals(rows * mc * s, 1.0);
        let x = rng.normals(b * c * s, 1.0);
        let noise = rng.normals(b * c * s, 1.0);
        let img = rng.uniforms(b * c * s, -1.0, 1.0);
        let mask: Vec<f32> = (0..b * s).map(|i| (i % 3 == 0) as u32 as f32).collect();
        let grad = rng.normals(b * c * s, 0.1);
        let k = kernels::sampler::StepCoeffs {
            sqrt_recip_ac: 1.7,
            sqrt_recipm1_ac: 1.3,
            posterior_coef1: 0.4,
            posterior_coef2: 0.55,
            max_log: -3.1,
            min_log: -4.6,
            sqrt_ac_prev: 0.8,
            ddim_eps_coef: 0.6,
            ddim_sigma: 0.05,
            fixed_log_var: -4.0,
        };
        let g = 3.0f32;
        let t = |shape: &[usize], v: &[f32]| gpu.upload(shape, v).map_err(err);
        let (mot, xt, nt, it, mt, gt) = (
            t(&[rows, mc, s], &mo)?,
            t(&[b, c, s], &x)?,
            t(&[b, c, s], &noise)?,
            t(&[b, c, s], &img)?,
            t(&[b, 1, s], &mask)?,
            t(&[b, c, s], &grad)?,
        );
        let mut rec = gpu.recorder();
        let (xn, px) = kernels::sampler::sampler_step(
            &mut rec,
            &kernels::sampler::Step {
                model_out: &mot,
                x_t: &xt,
                noise: &nt,
                guidance: case.cfg.then_some(g),
                ddim: case.ddim,
                predict_x0: false,
                learned_variance: case.learned,
                clamp_x0: Some(1.0),
                pin: case.pin.then_some((&it, &mt)),
                grad: case.grad.then_some(&gt),
                last: case.last,
                replicate: case.cfg,
                coeffs: k,
            },
        )
        .map_err(err)?;
        rec.submit().map_err(err)?;
        let (mut want_x, mut want_p) = (vec![0f32; b * c * s], vec![0f32; b * c * s]);
        for e in 0..b * c * s {
            let (bi, ci, si) = (e / (c * s), (e / s) % c, e % s);
            let at = |r: usize, ch: usize| mo[(r * mc + ch) * s + si] as f64;
            let mut eps = at(bi, ci);
            if case.cfg {
                let u = at(bi + b, ci);
                eps = u + g as f64 * (eps - u);
            }
            let xv = x[e] as f64;
            let mut x0 = k.sqrt_recip_ac as f64 * xv - k.sqrt_recipm1_ac as f64 * eps;
            if case.pin {
                let m = mask[bi * s + si] as f64;
                x0 = x0 * (1.0 - m) + img[e] as f64 * m;
            }
            x0 = x0.clamp(-1.0, 1.0);
            let nz = if case.last { 0.0 } else { noise[e] as f64 };
            let xn = if case.ddim {
                let ep = (k.sqrt_recip_ac as f64 * xv - x0) / k.sqrt_recipm1_ac as f64;
                x0 * k.sqrt_ac_prev as f64 + k.ddim_eps_coef as f64 * ep + k.ddim_sigma as f64 * nz
            } else {
                let lv = if case.learned {
                    let frac = (at(bi, c + ci) + 1.0) / 2.0;
                    frac * k.max_log as f64 + (1.0 - frac) * k.min_log as f64
                } else {
                    k.fixed_log_var as f64
                };
                let mut mean = k.posterior_coef1 as f64 * x0 + k.posterior_coef2 as f64 * xv;
                if case.grad {
                    mean += lv.exp() * grad[e] as f64;
                }
                mean + (0.5 * lv).exp() * nz
            };
            want_x[e] = xn as f32;
            want_p[e] = x0 as f32;
        }
        let got_x = gpu.read(&xn).await.map_err(err)?;
        check("pred_x0", &gpu.read(&px).await.map_err(err)?, &want_p, 2e-6)?;
        check("x_next", &got_x[..b * c * s], &want_x, 2e-6)?;
        if case.cfg {
            check(
                "x_next replica",
                &got_x[b * c * s..],
                &got_x[..b * c * s],
                0.0,
            )?;
        }
    }
    Ok(())
}
gpu_test!(sampler_step_matches_cpu);

/// With a 64 KiB binding cap, tensors of a few hundred KiB must be split along
/// the batch (or flat) and still give the same results as the normal device.
async fn binding_splits_match_unsplit() -> TestResult {
    let big = gpu().await;
    let small = small_gpu().await;
    let mut rng = Rng::new(11);
    let (n, c, h, w) = (6, 32, 8, 8); // 8 KiB per item, 48 KiB in all
    let x = rng.normals(n * c * h * w, 1.0);
    let wv = rng.normals(8 * c * 9, 0.2);
    let g = rng.normals(c, 0.3);
    let be = rng.normals(c, 0.3);
    let mut outs = Vec::new();
    for gpu in [big, small] {
        let xt = gpu.upload(&[n, c, h, w], &x).map_err(err)?;
        let wt = gpu
            .upload_weight(
                &WeightData::from_f32(&[8, c, 3, 3], &wv, WeightDType::F32).map_err(err)?,
            )
            .map_err(err)?;
        let (gt, bt) = (
            gpu.upload(&[c], &g).map_err(err)?,
            gpu.upload(&[c], &be).map_err(err)?,
        );
        let mut rec = gpu.recorder();
        let coef = kernels::group_norm::norm_coeffs(&mut rec, &xt, &gt, &bt, 32, 1e-5, None)
            .map_err(err)?;
        let conv = kernels::conv::conv2d(
            &mut rec,
            &xt,
            &wt,
            None,
            Some(kernels::conv::InputNorm {
                coef: &coef,
                silu: true,
            }),
            None,
        )
        .map_err(err)?;
        let gn = kernels::group_norm::apply(&mut rec, &xt, &coef, Act::Silu).map_err(err)?;
        let sum = kernels::elementwise::binary(
            &mut rec,
            &xt,
            &gn,
            kernels::elementwise::BinaryOp::Add,
            Act::None,
        )
        .map_err(err)?;
        let down = kernels::resample::avgpool2(&mut rec, &xt).map_err(err)?;
        let cat = kernels::copy::concat_channels(&mut rec, &[&xt, &gn]).map_err(err)?;
        rec.submit().map_err(err)?;
        let mut v = Vec::new();
        for t in [&conv, &gn, &sum, &down, &cat] {
            v.push(gpu.read(t).await.map_err(err)?);
        }
        outs.push(v);
    }
    for (i, name) in ["conv", "group_norm", "add", "avgpool2", "concat"]
        .iter()
        .enumerate()
    {
        check(&format!("split {name}"), &outs[1][i], &outs[0][i], 1e-6)?;
    }
    // One channel larger than the cap is a clear error, not a crash.
    let xt = small
        .upload(&[1, 1, 128, 128], &vec![0.0; 128 * 128])
        .map_err(err)?;
    let mut rec = small.recorder();
    match kernels::resample::nearest2x(&mut rec, &xt) {
        Err(engine::Error::TooLarge { .. }) => Ok(()),
        other => Err(format!("expected TooLarge, got {other:?}")),
    }
}
gpu_test!(binding_splits_match_unsplit);

/// Items over the binding cap (Karlo's SR holds 240 MiB items at 256 px) go in
/// channel ranges: GroupNorm by whole groups, convs summed over input ranges
/// (here three, so the partial sums alternate buffers) into output ranges,
/// resampling by planes, concatenation by buffer copies. 12×12 planes make the
/// ranges start at multiples of 4 channels (and of whole 2-channel groups) to keep
/// offsets 256-byte aligned.
async fn channel_splits_match_unsplit() -> TestResult {
    let big = gpu().await;
    let small = small_gpu().await;
    let mut rng = Rng::new(29);
    let (n, c, h, w, cout) = (2, 64, 12, 12, 40); // 36 KiB items, cap 16 KiB
    let x = rng.normals(n * c * h * w, 1.0);
    let res = rng.normals(n * cout * h * w, 1.0);
    let emb = rng.normals(n * 2 * c, 0.5);
    let g = rng.normals(c, 0.3);
    let be = rng.normals(c, 0.3);
    let bias = rng.normals(cout, 0.5);
    let w3 = WeightData::from_f32(
        &[cout, c, 3, 3],
        &rng.normals(cout * c * 9, 0.2),
        WeightDType::Q4,
    )
    .map_err(err)?;
    let w1 = WeightData::from_f32(
        &[cout, c, 1, 1],
        &rng.normals(cout * c, 0.2),
        WeightDType::F32,
    )
    .map_err(err)?;
    let names = [
        "conv3x3 q4 norm+res",
        "conv1x1",
        "group_norm",
        "nearest2x",
        "avgpool2",
        "concat",
        "slice",
    ];
    let mut outs = Vec::new();
    for gpu in [big, small] {
        let up = |shape: &[usize], v: &[f32]| gpu.upload(shape, v).map_err(err);
        let (xt, rt, et) = (
            up(&[n, c, h, w], &x)?,
            up(&[n, cout, h, w], &res)?,
            up(&[n, 2 * c], &emb)?,
        );
        let (gt, bt, biast) = (up(&[c], &g)?, up(&[c], &be)?, up(&[cout], &bias)?);
        let (w3t, w1t) = (
            gpu.upload_weight(&w3).map_err(err)?,
            gpu.upload_weight(&w1).map_err(err)?,
        );
        let mut rec = gpu.recorder();
        let coef = kernels::group_norm::norm_coeffs(&mut rec, &xt, &gt, &bt, 32, 1e-5, Some(&et))
            .map_err(err)?;
        let norm = kernels::conv::InputNorm {
            coef: &coef,
            silu: true,
        };
        let conv3 = kernels::conv::conv2d(&mut rec, &xt, &w3t, Some(&biast), Some(norm), Some(&rt))
            .map_err(err)?;
        let conv1 = kernels::conv::conv2d(&mut rec, &xt, &w1t, None, None, None).map_err(err)?;
        let gn = kernels::group_norm::apply(&mut rec, &xt, &coef, Act::Silu).map_err(err)?;
        let near = kernels::resample::nearest2x(&mut rec, &xt).map_err(err)?;
        let down = kernels::resample::avgpool2(&mut rec, &xt).map_err(err)?;
        let cat = kernels::copy::concat_channels(&mut rec, &[&xt, &gn]).map_err(err)?;
        let slice = kernels::copy::slice_channels(&mut rec, &cat, 50, 70).map_err(err)?;
        rec.submit().map_err(err)?;
        let mut v = Vec::new();
        for t in [&conv3, &conv1, &gn, &near, &down, &cat, &slice] {
            v.push(gpu.read(t).await.map_err(err)?);
        }
        outs.push(v);
    }
    for (i, name) in names.iter().enumerate() {
        // Convs sum their input ranges in another order.
        let tol = if name.starts_with("conv") { 1e-5 } else { 1e-6 };
        check(
            &format!("channel split {name}"),
            &outs[1][i],
            &outs[0][i],
            tol,
        )?;
    }
    Ok(())
}
gpu_test!(channel_splits_match_unsplit);

/// The benchmark variants of issue 15 (no buffer bounds checks; workgroup
/// memory zeroed at every dispatch) build valid pipelines and compute the
/// same values as the default device (native only: browsers keep their checks).
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn benchmark_shader_variants_compute_the_same() {
    let base = pollster::block_on(gpu());
    let variant = pollster::block_on(Gpu::new(engine::GpuOptions {
        unchecked_bounds: true,
        zero_workgroup_memory: true,
        ..Default::default()
    }))
    .expect("a GPU adapter");
    assert!(variant.report.unchecked_bounds && variant.report.zero_workgroup_memory);
    let mut rng = Rng::new(41);
    let x = rng.normals(2 * 24 * 7 * 9, 1.0);
    let wv = WeightData::from_f32(
        &[16, 24, 3, 3],
        &rng.normals(16 * 24 * 9, 0.2),
        WeightDType::Q4,
    )
    .unwrap();
    let (g, b) = (rng.normals(24, 0.3), rng.normals(24, 0.3));
    let mut outs = Vec::new();
    for gpu in [base, &variant] {
        let xt = gpu.upload(&[2, 24, 7, 9], &x).unwrap();
        let wt = gpu.upload_weight(&wv).unwrap();
        let (gt, bt) = (
            gpu.upload(&[24], &g).unwrap(),
            gpu.upload(&[24], &b).unwrap(),
        );
        let mut rec = gpu.recorder();
        let coef =
            kernels::group_norm::norm_coeffs(&mut rec, &xt, &gt, &bt, 8, 1e-5, None).unwrap();
        let norm = kernels::conv::InputNorm {
            coef: &coef,
            silu: true,
        };
        let y = kernels::conv::conv2d(&mut rec, &xt, &wt, None, Some(norm), None).unwrap();
        let s =
            kernels::softmax::softmax(&mut rec, &y.reshape(&[32, 63]).unwrap(), 1.0, None).unwrap();
        rec.submit().unwrap();
        outs.push(pollster::block_on(gpu.read(&s)).unwrap());
    }
    check("unchecked + zeroed variant", &outs[1], &outs[0], 1e-6).unwrap();
}

/// A repeated step allocates no new GPU buffers and costs one submission.
async fn steady_state_allocates_nothing() -> TestResult {
    // A device of its own: other tests allocate on the shared one concurrently.
    let gpu = &common::fresh_gpu().await;
    let mut rng = Rng::new(12);
    let x0 = gpu
        .upload(&[2, 32, 8, 8], &rng.normals(4096, 1.0))
        .map_err(err)?;
    let w = gpu
        .upload_weight(
            &WeightData::from_f32(&[32, 32, 3, 3], &rng.normals(9216, 0.1), WeightDType::Q8)
                .map_err(err)?,
        )
        .map_err(err)?;
    let (g, b) = (
        gpu.upload(&[32], &[1.0; 32]).map_err(err)?,
        gpu.upload(&[32], &[0.0; 32]).map_err(err)?,
    );
    let step = |x: &engine::Tensor| -> Result<engine::Tensor, String> {
        let mut rec = gpu.recorder();
        let coef =
            kernels::group_norm::norm_coeffs(&mut rec, x, &g, &b, 32, 1e-5, None).map_err(err)?;
        let h = kernels::conv::conv2d(
            &mut rec,
            x,
            &w,
            None,
            Some(kernels::conv::InputNorm {
                coef: &coef,
                silu: true,
            }),
            Some(x),
        )
        .map_err(err)?;
        let y = kernels::elementwise::unary(&mut rec, &h, Act::None, 0.5, 0.0).map_err(err)?;
        rec.submit().map_err(err)?;
        Ok(y)
    };
    let mut x = step(&x0)?;
    x = step(&x)?;
    let before = gpu.memory_stats().created;
    let subs = gpu.submissions();
    for _ in 0..5 {
        x = step(&x)?;
    }
    gpu.wait_idle().await.map_err(err)?;
    let after = gpu.memory_stats().created;
    if after != before {
        return Err(format!(
            "steady-state steps created {} new buffers",
            after - before
        ));
    }
    if gpu.submissions() - subs != 5 {
        return Err(format!(
            "{} submissions for 5 steps",
            gpu.submissions() - subs
        ));
    }
    Ok(())
}
gpu_test!(steady_state_allocates_nothing);

/// Host uploads while a recorder holds work never land in a buffer that work
/// still reads (a dropped input's pooled buffer), and trimming the pool then
/// keeps such buffers alive.
async fn uploads_during_recording_keep_recorded_inputs() -> TestResult {
    // A device of its own: the pool's reuse must not depend on other tests.
    let gpu = &common::fresh_gpu().await;
    let n = 1000;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut rec = gpu.recorder();
    let a = gpu.upload(&[n], &x).map_err(err)?;
    let copied = gpu.empty(&[n]).map_err(err)?;
    let halved = kernels::elementwise::unary(&mut rec, &a, Act::None, 0.5, 0.0).map_err(err)?;
    rec.copy(a.buffer(), 0, copied.buffer(), 0, a.bytes());
    drop(a);
    // Same size as `a`: before the fix this reused a's buffer, and the write
    // landed before the recorded copy.
    let other = gpu.upload(&[n], &vec![-1.0; n]).map_err(err)?;
    gpu.trim_memory();
    rec.submit().map_err(err)?;
    check("copied", &gpu.read(&copied).await.map_err(err)?, &x, 0.0)?;
    let half: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    check("halved", &gpu.read(&halved).await.map_err(err)?, &half, 0.0)?;
    check(
        "other",
        &gpu.read(&other).await.map_err(err)?,
        &vec![-1.0; n],
        0.0,
    )?;
    // After the submission the buffer is free for uploads again.
    let before = gpu.memory_stats().created;
    drop(other);
    let again = gpu.upload(&[n], &x).map_err(err)?;
    if gpu.memory_stats().created != before {
        return Err("a submitted recording's buffers were not reused".into());
    }
    check("again", &gpu.read(&again).await.map_err(err)?, &x, 0.0)?;
    Ok(())
}
gpu_test!(uploads_during_recording_keep_recorded_inputs);

/// `Gpu::gpu_time`: the recorded work runs (its output is right), and with
/// timestamp queries its time grows with the work, over several compute
/// passes (a copy ends a pass); without them the answer is `None`.
async fn gpu_time_measures_recorded_passes() -> TestResult {
    let gpu = gpu().await;
    let mut rng = Rng::new(41);
    let (m, k, n) = (192, 160, 176);
    let x = rng.normals(m * k, 1.0);
    let w = rng.normals(n * k, 0.2);
    let xt = gpu.upload(&[m, k], &x).map_err(err)?;
    let wt = gpu
        .upload_weight(&WeightData::from_f32(&[n, k], &w, WeightDType::F32).map_err(err)?)
        .map_err(err)?;
    let want = cpu::linear(&x, &w, n, None, None, Act::None);
    let run = |copies: usize| {
        let (xt, wt, want) = (&xt, &wt, &want);
        async move {
            let mut out = None;
            let secs = gpu
                .gpu_time(|rec| {
                    for i in 0..copies {
                        let y = kernels::matmul::linear(rec, xt, wt, None, None, Act::None)?;
                        if i == 0 {
                            // A copy ends the compute pass: later work is a new pass.
                            let kept = rec.gpu().empty(&[m, n])?;
                            rec.copy(y.buffer(), 0, kept.buffer(), 0, y.bytes());
                            out = Some(kept);
                        }
                    }
                    Ok(())
                })
                .await
                .map_err(err)?;
            let got = gpu.read(&out.unwrap()).await.map_err(err)?;
            check("timed linear", &got, want, 1e-5)?;
            Ok::<_, String>(secs)
        }
    };
    // The shortest of three single runs: on a CPU adapter (lavapipe) the GPU
    // time is CPU time, which other processes can stretch.
    let mut one = run(1).await?;
    for _ in 0..2 {
        one = match (one, run(1).await?) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, _) => a,
        };
    }
    let eight = run(8).await?;
    match (gpu.report.timestamps, one, eight) {
        (false, None, None) => Ok(()),
        (true, Some(one), Some(eight)) if one > 0.0 && eight > 2.0 * one => Ok(()),
        r => Err(format!(
            "gpu_time: timestamps {}, 1 run {:?} s, 8 runs {:?} s",
            r.0, r.1, r.2
        )),
    }
}
gpu_test!(gpu_time_measures_recorded_passes);

/// Bad shapes are errors before anything is dispatched.
async fn shape_errors_are_reported() -> TestResult {
    let gpu = gpu().await;
    let x = gpu.upload(&[2, 3, 4, 4], &[0.0; 96]).map_err(err)?;
    let w = gpu
        .upload_weight(
            &WeightData::from_f32(&[8, 5, 3, 3], &[0.0; 360], WeightDType::F32).map_err(err)?,
        )
        .map_err(err)?;
    let lw = gpu
        .upload_weight(&WeightData::from_f32(&[8, 5], &[0.0; 40], WeightDType::F32).map_err(err)?)
        .map_err(err)?;
    let mut rec = gpu.recorder();
    let checks: Vec<(&str, bool)> = vec![
        (
            "conv channel mismatch",
            kernels::conv::conv2d(&mut rec, &x, &w, None, None, None).is_err(),
        ),
        (
            "linear K mismatch",
            kernels::matmul::linear(&mut rec, &x, &lw, None, None, Act::None).is_err(),
        ),
        (
            "group norm groups",
            kernels::group_norm::stats(&mut rec, &x, 2, 1e-5).is_err(),
        ),
        (
            "avgpool odd",
            kernels::resample::avgpool2(
                &mut rec,
                &gpu.upload(&[1, 1, 3, 3], &[0.0; 9]).map_err(err)?,
            )
            .is_err(),
        ),
        (
            "broadcast",
            kernels::elementwise::binary(
                &mut rec,
                &x,
                &gpu.upload(&[5], &[0.0; 5]).map_err(err)?,
                kernels::elementwise::BinaryOp::Add,
                Act::None,
            )
            .is_err(),
        ),
        (
            "attention heads",
            kernels::attention::legacy_qkv(
                &mut rec,
                &gpu.upload(&[1, 9, 4], &[0.0; 36]).map_err(err)?,
                None,
                2,
            )
            .is_err(),
        ),
        (
            "weight shape",
            WeightData::from_f32(&[3, 3], &[0.0; 8], WeightDType::Q8).is_err(),
        ),
        ("reshape", x.reshape(&[5, 5]).is_err()),
    ];
    rec.submit().map_err(err)?;
    for (name, ok) in checks {
        if !ok {
            return Err(format!("{name}: accepted a bad shape"));
        }
    }
    Ok(())
}
gpu_test!(shape_errors_are_reported);

/// The backward kernels of CLIP guidance (input gradients only) against the
/// CPU references, which are themselves checked by finite differences
/// (`reference::backward_tests`).
async fn backward_kernels_match_cpu() -> TestResult {
    for gpu in devices().await {
        backward_kernels_match_cpu_on(gpu).await?;
    }
    Ok(())
}

async fn backward_kernels_match_cpu_on(gpu: &Gpu) -> TestResult {
    use kernels::elementwise::BinaryOp;
    let mut rng = Rng::new(21);
    // Linear: dx = dy·W (+ res), every weight storage type.
    for &(m, k, n) in &[(1, 1, 1), (33, 47, 29), (130, 96, 70), (17, 768, 512)] {
        for dtype in DTYPES {
            let dy = rng.normals(m * n, 1.0);
            let wd = WeightData::from_f32(&[n, k], &rng.normals(n * k, 0.2), dtype).map_err(err)?;
            let res = rng.normals(m * k, 1.0);
            let (dyt, wt, rt) = (
                gpu.upload(&[m, n], &dy).map_err(err)?,
                gpu.upload_weight(&wd).map_err(err)?,
                gpu.upload(&[m, k], &res).map_err(err)?,
            );
            let with_res = m % 2 == 1;
            let mut rec = gpu.recorder();
            let dx =
                kernels::matmul::linear_grad_input(&mut rec, &dyt, &wt, with_res.then_some(&rt))
                    .map_err(err)?;
            rec.submit().map_err(err)?;
            let want = cpu::linear_grad_input(&dy, &wd.to_f32(), n, with_res.then_some(&res[..]));
            check(
                &format!("linear_grad_input {m}x{k}x{n} {dtype:?}"),
                &gpu.read(&dx).await.map_err(err)?,
                &want,
                2e-5,
            )?;
        }
    }
    // LayerNorm backward, with and without gain and residual gradient (width 2
    // is degenerate: the output is ±1 whatever x, the gradient pure cancellation).
    for &(rows, dim) in &[(1, 3), (21, 37), (5, 512), (2, 1000)] {
        let x = rng.normals(rows * dim, 3.0);
        let g = rng.normals(dim, 0.5);
        let dy = rng.normals(rows * dim, 1.0);
        let res = rng.normals(rows * dim, 1.0);
        let (xt, gt, dyt, rt) = (
            gpu.upload(&[rows, dim], &x).map_err(err)?,
            gpu.upload(&[dim], &g).map_err(err)?,
            gpu.upload(&[rows, dim], &dy).map_err(err)?,
            gpu.upload(&[rows, dim], &res).map_err(err)?,
        );
        let mut rec = gpu.recorder();
        let a = kernels::layer_norm::layer_norm_backward(
            &mut rec,
            &xt,
            Some(&gt),
            &dyt,
            Some(&rt),
            1e-5,
        )
        .map_err(err)?;
        let b = kernels::layer_norm::layer_norm_backward(&mut rec, &xt, None, &dyt, None, 1e-5)
            .map_err(err)?;
        rec.submit().map_err(err)?;
        check(
            &format!("layer_norm_backward {rows}x{dim}"),
            &gpu.read(&a).await.map_err(err)?,
            &cpu::layer_norm_backward(&x, dim, Some(&g), &dy, Some(&res), 1e-5),
            2e-5,
        )?;
        check(
            &format!("layer_norm_backward plain {rows}x{dim}"),
            &gpu.read(&b).await.map_err(err)?,
            &cpu::layer_norm_backward(&x, dim, None, &dy, None, 1e-5),
            2e-5,
        )?;
    }
    // GELU backward.
    for n in [7, 255, 4099] {
        let (dy, x) = (rng.normals(n, 1.0), rng.normals(n, 3.0));
        let (dyt, xt) = (
            gpu.upload(&[n], &dy).map_err(err)?,
            gpu.upload(&[n], &x).map_err(err)?,
        );
        let mut rec = gpu.recorder();
        let g = kernels::elementwise::binary(&mut rec, &dyt, &xt, BinaryOp::GeluGrad, Act::None)
            .map_err(err)?;
        rec.submit().map_err(err)?;
        check(
            &format!("gelu grad {n}"),
            &gpu.read(&g).await.map_err(err)?,
            &cpu::gelu_grad(&dy, &x),
            1e-4,
        )?;
    }
    // Attention backward: dense and causal, odd lengths, head dims 1..64.
    for &(b, l, heads, d, causal) in &[
        (1, 1, 1, 1, false),
        (2, 17, 3, 8, false),
        (3, 33, 2, 5, true),
        (1, 65, 2, 64, false),
    ] {
        let n = b * l * heads * d;
        let (q, k, v, dy) = (
            rng.normals(n, 1.0),
            rng.normals(n, 1.0),
            rng.normals(n, 1.0),
            rng.normals(n, 1.0),
        );
        let shape = [b, l, heads * d];
        let up = |x: &[f32]| gpu.upload(&shape, x).map_err(err);
        let (qt, kt, vt, dyt) = (up(&q)?, up(&k)?, up(&v)?, up(&dy)?);
        let scale = (d as f32).powf(-0.25);
        let mut rec = gpu.recorder();
        let (dq, dk, dv) = kernels::attention_backward::attention_backward(
            &mut rec, &qt, &kt, &vt, &dyt, heads, scale, causal,
        )
        .map_err(err)?;
        rec.submit().map_err(err)?;
        let (wq, wk, wv) =
            cpu::attention_blh_backward(&q, &k, &v, &dy, b, l, heads, scale as f64, causal);
        let name = format!("attention_backward b{b} l{l} h{heads} d{d} causal {causal}");
        check(
            &format!("{name} dq"),
            &gpu.read(&dq).await.map_err(err)?,
            &wq,
            1e-4,
        )?;
        check(
            &format!("{name} dk"),
            &gpu.read(&dk).await.map_err(err)?,
            &wk,
            1e-4,
        )?;
        check(
            &format!("{name} dv"),
            &gpu.read(&dv).await.map_err(err)?,
            &wv,
            1e-4,
        )?;
    }
    // Patches and their gradient.
    let affine = kernels::patches::ChannelAffine {
        slope: [1.5, -0.5, 2.0],
        offset: [0.1, 0.2, -0.3],
    };
    for &(b, s, p) in &[(1, 4, 4), (2, 12, 3), (3, 16, 4), (1, 64, 4)] {
        let x = rng.normals(b * 3 * s * s, 1.0);
        let dp = rng.normals(b * 3 * s * s, 1.0);
        let g = s / p;
        let xt = gpu.upload(&[b, 3, s, s], &x).map_err(err)?;
        let dpt = gpu.upload(&[b, g * g, 3 * p * p], &dp).map_err(err)?;
        let mut rec = gpu.recorder();
        let pt = kernels::patches::to_patches(&mut rec, &xt, p, &affine).map_err(err)?;
        let dx = kernels::patches::from_patches(&mut rec, &dpt, &xt, p, &affine).map_err(err)?;
        rec.submit().map_err(err)?;
        check(
            &format!("to_patches {b}x{s} p{p}"),
            &gpu.read(&pt).await.map_err(err)?,
            &cpu::to_patches(&x, s, p, affine.slope, affine.offset),
            1e-6,
        )?;
        check(
            &format!("from_patches {b}x{s} p{p}"),
            &gpu.read(&dx).await.map_err(err)?,
            &cpu::from_patches(&dp, s, p, affine.slope),
            1e-6,
        )?;
    }
    // The guidance score's gradient.
    // (Width 1 is degenerate: the normalised embedding is ±1, the gradient zero.)
    for &(b, e) in &[(1, 2), (3, 16), (2, 512), (1, 1000)] {
        let (t, z) = (rng.normals(b * e, 1.0), rng.normals(b * e, 1.0));
        let (tt, zt) = (
            gpu.upload(&[b, e], &t).map_err(err)?,
            gpu.upload(&[b, e], &z).map_err(err)?,
        );
        let mut rec = gpu.recorder();
        let g = kernels::clip_score::score_grad(&mut rec, &tt, &zt, 300.0).map_err(err)?;
        rec.submit().map_err(err)?;
        check(
            &format!("clip score grad {b}x{e}"),
            &gpu.read(&g).await.map_err(err)?,
            &cpu::clip_score_grad(&t, &z, e, 300.0),
            1e-5,
        )?;
    }
    Ok(())
}
gpu_test!(backward_kernels_match_cpu);
