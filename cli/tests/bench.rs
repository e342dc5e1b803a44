//! `webglide bench quant`, `bench kernels` and `bench pipeline` on small shapes: the tables are
//! printed, the numbers are sane, and bad arguments are clear errors.

mod common;
use common::webglide;

/// The line of the row named exactly `name` (its name column ends in two
/// spaces, so "output" is not "output_blocks.8" and "attention" is not
/// "attention (text)").
fn line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with("  "))
        })
        .unwrap_or_else(|| panic!("no row {name:?} in\n{stdout}"))
}

/// The numbers of the row named `name`.
fn row(stdout: &str, name: &str) -> Vec<f64> {
    line(stdout, name)[name.len()..]
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

#[test]
fn bench_quant_orders_the_storage_types() {
    let out = webglide(&[
        "bench",
        "quant",
        "--kind",
        "upsample",
        "--size",
        "small",
        "--random-weights",
        "--res",
        "32",
        "--quant",
        "f16,q8,q4",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Per layer: layer count, median, mean, max. Block quantisation of
    // Gaussian weights: f16 ~2e-4, q8 ~5e-3, q4 ~1e-1 relative RMS.
    let (f16, q8, q4) = (row(&stdout, "f16"), row(&stdout, "q8"), row(&stdout, "q4"));
    assert!(f16[0] > 50.0, "{stdout}");
    assert!(f16[1] > 5e-5 && f16[1] < 1e-3, "{stdout}");
    assert!(q8[1] > 1e-3 && q8[1] < 2e-2, "{stdout}");
    assert!(q4[1] > 3e-2 && q4[1] < 3e-1, "{stdout}");
    // End to end, the model output and the worst intermediate: f16 < q8 < q4, all nonzero.
    for name in ["output", "worst intermediate"] {
        let e = row(&stdout, name);
        assert_eq!(e.len(), 3, "{stdout}");
        assert!(e[0] > 0.0 && e[0] < 1e-2, "{name}: {stdout}");
        assert!(e[0] < e[1] && e[1] < e[2] && e[1] < 0.2, "{name}: {stdout}");
    }
}

#[test]
fn bench_quant_rejects_bad_arguments() {
    for (args, says) in [
        ("bench quant --size small", "--random-weights"),
        (
            "bench quant --size small --random-weights --res 30",
            "--res 30",
        ),
        ("bench quant --size huge --random-weights", "unknown --size"),
        ("bench quant --size small --random-weights --quant q3", "q3"),
    ] {
        let out = webglide(&args.split(' ').collect::<Vec<_>>());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_kernels_prints_every_kernel_with_its_timing_source() {
    let out = webglide(&["bench", "kernels", "--quick", "--iters", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("measured f32 matmul peak"), "{stdout}");
    assert!(stdout.contains("timing: "), "{stdout}");
    for kernel in [
        "linear q4",
        "conv3x3 q8 +GN+SiLU",
        "attention",
        "group_norm+SiLU",
        "guidance+sampler step",
    ] {
        // Columns after the 24-wide name and the 28-wide shape: ms, GFLOP/s
        // (or -), GB/s, % peak (or -), wall ms.
        let line = line(&stdout, kernel);
        let cols: Vec<&str> = line.get(54..).unwrap_or("").split_whitespace().collect();
        let ms: f64 = cols.first().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let wall: f64 = cols.last().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        assert!(
            cols.len() == 5 && ms > 0.0 && wall > 0.0,
            "{kernel}: {line}"
        );
    }
}

#[test]
fn bench_pipeline_prints_step_times_flops_and_memory() {
    let out = webglide(&[
        "bench",
        "pipeline",
        "--size",
        "tiny",
        "--random-weights",
        "--quant",
        "q8",
        "--steps",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let number_before = |l: &str, unit: &str| -> f64 {
        let head = &l[..l.find(unit).unwrap_or_else(|| panic!("no {unit:?} in {l}"))];
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    let mut gflops = Vec::new();
    for stage in ["base", "upsample"] {
        let l = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{stage} ")))
            .unwrap_or_else(|| panic!("no {stage} line in\n{stdout}"));
        let ms = number_before(l, "ms/step");
        let gflop = number_before(l, "GFLOP/step");
        // The line ends in "= R GFLOP/s" ("GFLOP/step" comes first).
        let rate = number_before(&l[l.rfind('=').unwrap()..], "GFLOP/s");
        assert!(ms > 0.0 && gflop > 0.0, "{l}");
        // The rate is the step's counted work over its time.
        assert!((rate - gflop / ms * 1e3).abs() <= 0.05 + 0.01 * rate, "{l}");
        gflops.push(gflop);
    }
    // The upsampler runs the same widths at 4× the pixels.
    assert!(gflops[1] > gflops[0], "{stdout}");
    let seconds = stdout
        .lines()
        .find(|l| l.starts_with("seconds per image"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(number_before(seconds, " s") > 0.0, "{seconds}");
    let peak = stdout
        .lines()
        .find(|l| l.starts_with("peak GPU memory"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(number_before(peak, "MiB") > 0.0, "{peak}");
}
