// Shared helpers, prepended to kernels that use them.
// sin/cos/erf are computed here from basic arithmetic so results do not depend
// on each driver's transcendental precision (the Vulkan/WebGPU minimum for
// sin/cos is only 2^-11 absolute, and only on [-pi, pi]).

const PI: f32 = 3.14159265358979;

// Linear workgroup index for 1-D problems spread over a 2-D grid.
fn linear_group(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// sin and cos of x, with a Cody-Waite reduction by pi/2 and Cephes
// minimax polynomials on [-pi/4, pi/4]; accurate to a few ulp for |x| < 1e5.
fn sincos(x: f32) -> vec2<f32> {
    let k = round(x * 0.636619772367581);
    // pi/2 split in three parts so that k*P1 and k*P2 are exact.
    let r = ((x - k * 1.5703125) - k * 4.837512969970703125e-4) - k * 7.54978995489188216e-8;
    let z = r * r;
    let s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
    let c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0;
    let q = i32(k) & 3;
    if (q == 0) { return vec2<f32>(s, c); }
    if (q == 1) { return vec2<f32>(c, -s); }
    if (q == 2) { return vec2<f32>(-s, -c); }
    return vec2<f32>(-c, s);
}

// erf with max absolute error ~1.2e-7 (W. J. Cody style rational fit via
// Numerical Recipes erfc, which is accurate across the whole range).
fn erf_f32(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277)))))))));
    let e = 1.0 - r;
    return select(-e, e, x >= 0.0);
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_f32(x * 0.7071067811865476));
}

// d/dx of gelu_erf: Phi(x) + x * phi(x).
fn gelu_erf_grad(x: f32) -> f32 {
    return 0.5 * (1.0 + erf_f32(x * 0.7071067811865476)) + x * 0.3989422804014327 * exp(-0.5 * x * x);
}

fn quick_gelu(x: f32) -> f32 {
    return x / (1.0 + exp(-1.702 * x));
}

// Activation selected by a specialisation constant: 0 none, 1 SiLU,
// 2 GELU (erf), 3 QuickGELU (CLIP), 4 ReLU.
fn activate(x: f32, kind: u32) -> f32 {
    switch kind {
        case 1u: { return silu(x); }
        case 2u: { return gelu_erf(x); }
        case 3u: { return quick_gelu(x); }
        case 4u: { return max(x, 0.0); }
        case 5u: { return clamp(x, -1.0, 1.0); }
        default: { return x; }
    }
}
