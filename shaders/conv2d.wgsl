// 2-D convolution, stride 1, padding KS/2, as an implicit GEMM:
// out[n, co, pix] = bias[co] + sum_k W[co, k] * col[k, pix] (+ res[n, co, pix]),
// k = ci*KS*KS + ky*KS + kx. With NORM > 0 the input is normalised on load:
// v = (x - mean) * A + B per (n, ci) (GroupNorm + scale-shift folded by
// group_norm.wgsl:coeffs), followed by SiLU when NORM == 2. Padding is zero
// AFTER the normalisation, as in PyTorch where the conv pads its input.
// A dispatch may cover input channels ci_off..ci_off+cin of cin_all and output
// channels co_off..co_off+cout (an item over the binding limit): `inp`, `res` and
// `out` are then bound to those channel ranges; weights, bias and norm whole.
// UP_IN / UP_RES: the input / residual hold nearest ×2 downscaled planes
// (h/2 × w/2) read as if upsampled to the output's h × w.
struct Params { cin: u32, cout: u32, h: u32, w: u32, row_words: u32, has_res: u32, n0: u32, has_bias: u32,
                ci_off: u32, cin_all: u32, co_off: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<WWord>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> norm: array<f32>;  // [N, 3*cin]: mean, A, B
@group(0) @binding(5) var<storage, read> res: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
override KS: u32 = 3u;
override NORM: u32 = 0u;
override UP_IN: u32 = 0u;
override UP_RES: u32 = 0u;

// Weight rows are stored with a stride of TS = 65 so the 16 invocations that
// store one k-column do not all hit the same memory bank.
const TS: u32 = 65u;
var<workgroup> ws: array<WTile, 1040>;  // [16 k][TS co]
var<workgroup> cs: array<f32, 1024>;  // [16 k][64 pix]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let hw = p.h * p.w;
    let pix0 = wg.x * 64u;
    let co0 = wg.y * 64u;
    let n = wg.z;                       // item inside this chunk
    let kk_total = p.cin * KS * KS;
    let pad = i32(KS / 2u);
    let up = select(1u, 2u, UP_IN == 1u);
    let w_in = p.w / up;
    let hw_in = hw / (up * up);
    let in_base = n * p.cin * hw_in;
    let norm_base = (p.n0 + n) * 3u * p.cin_all + p.ci_off;
    let tx = li % 16u;
    let ty = li / 16u;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < kk_total; k0 = k0 + 16u) {
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = li + r * 256u;      // 0..1023
            // Weights: consecutive invocations read along a weight row.
            let kw = e % 16u;
            let rw = e / 16u;
            var wv = WTile(0.0);
            if (co0 + rw < p.cout && k0 + kw < kk_total) { wv = load_w((p.co_off + co0 + rw) * p.row_words, p.ci_off * KS * KS + k0 + kw); }
            ws[kw * TS + rw] = wv;
            // Input: consecutive invocations read consecutive pixels (coalesced).
            let pix = pix0 + e % 64u;
            let kc = e / 64u;
            let kg = k0 + kc;
            var cv = 0.0;
            if (pix < hw && kg < kk_total) {
                let ci = kg / (KS * KS);
                let kr = kg % (KS * KS);
                let iy = i32(pix / p.w) + i32(kr / KS) - pad;
                let ix = i32(pix % p.w) + i32(kr % KS) - pad;
                if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
                    cv = inp[in_base + ci * hw_in + (u32(iy) / up) * w_in + u32(ix) / up];
                    if (NORM > 0u) {
                        cv = (cv - norm[norm_base + ci]) * norm[norm_base + p.cin_all + ci] + norm[norm_base + 2u * p.cin_all + ci];
                        if (NORM == 2u) { cv = silu(cv); }
                    }
                }
            }
            cs[e] = cv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk = kk + 1u) {
            var wr: array<f32, 4>;
            var cr: array<f32, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                wr[i] = f32(ws[kk * TS + ty + 16u * i]);
                cr[i] = cs[kk * 64u + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i][j] = fma(wr[i], cr[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let co = co0 + ty + 16u * i;
        if (co >= p.cout) { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let pix = pix0 + tx + 16u * j;
            if (pix >= hw) { continue; }
            let o = (n * p.cout + co) * hw + pix;
            var v = acc[i][j];
            if (p.has_bias != 0u) { v = v + bias[p.co_off + co]; }
            if (p.has_res != 0u) {
                if (UP_RES == 1u) {
                    let wr = p.w / 2u;
                    v = v + res[(n * p.cout + co) * (hw / 4u) + (pix / p.w / 2u) * wr + (pix % p.w) / 2u];
                } else {
                    v = v + res[o];
                }
            }
            out[o] = v;
        }
    }
}
