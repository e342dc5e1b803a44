// y[m, n] = act(sum_k x[m, k] * W[n, k] + bias[n] + res[m, n])
// Tiled 64x64 output per workgroup, 16-deep K slices in workgroup memory,
// 256 threads computing 4x4 outputs each. W is dequantised on load.
struct Params { m: u32, k: u32, n: u32, row_words: u32, has_bias: u32, has_res: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<WWord>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
override ACT: u32 = 0u;

// Tiles are loaded along k (rows of x and W are contiguous in k) and stored
// with a stride of TS = 65, so the 16 invocations that store one k-column do
// not all hit the same memory bank.
const TS: u32 = 65u;
var<workgroup> xs: array<f32, 1040>;   // [16 k][TS m]
var<workgroup> ws: array<WTile, 1040>; // [16 k][TS n]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n0 = wg.x * 64u;
    let m0 = wg.y * 64u;
    let tx = li % 16u;
    let ty = li / 16u;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 = k0 + 16u) {
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = li + r * 256u;      // 0..1023
            let kk = e % 16u;
            let rr = e / 16u;           // 0..63
            let kg = k0 + kk;
            var xv = 0.0;
            if (m0 + rr < p.m && kg < p.k) { xv = x[(m0 + rr) * p.k + kg]; }
            xs[kk * TS + rr] = xv;
            var wv = WTile(0.0);
            if (n0 + rr < p.n && kg < p.k) { wv = load_w((n0 + rr) * p.row_words, kg); }
            ws[kk * TS + rr] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk = kk + 1u) {
            var xr: array<f32, 4>;
            var wr: array<f32, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                xr[i] = xs[kk * TS + ty + 16u * i];
                wr[i] = f32(ws[kk * TS + tx + 16u * i]);
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i][j] = fma(xr[i], wr[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let m = m0 + ty + 16u * i;
        if (m >= p.m) { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let n = n0 + tx + 16u * j;
            if (n >= p.n) { continue; }
            var v = acc[i][j];
            if (p.has_bias != 0u) { v = v + bias[n]; }
            if (p.has_res != 0u) { v = v + res[m * p.n + n]; }
            y[m * p.n + n] = activate(v, ACT);
        }
    }
}

// Input gradient of the same layer: dx[m, k] = sum_n dy[m, n] * W[n, k] + res[m, k]
// (x holds dy [m, n]). Same tiling, with the output tile over (m, k) and the
// reduction over n; W rows are still read along k. No bias, so its own
// bindings 3 and 4 (an entry point's layout holds only what it uses).
@group(0) @binding(3) var<storage, read> grad_res: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@compute @workgroup_size(256)
fn grad_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let k0 = wg.x * 64u;
    let m0 = wg.y * 64u;
    let tx = li % 16u;
    let ty = li / 16u;
    var acc: array<array<f32, 4>, 4>;
    for (var n0 = 0u; n0 < p.n; n0 = n0 + 16u) {
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = li + r * 256u;      // 0..1023
            // dy: 16 consecutive n of one row m; W: 64 consecutive k of one row n.
            let nn = e % 16u;
            let rr = e / 16u;
            var dv = 0.0;
            if (m0 + rr < p.m && n0 + nn < p.n) { dv = x[(m0 + rr) * p.n + n0 + nn]; }
            xs[nn * TS + rr] = dv;
            let wn = e / 64u;
            let wk = e % 64u;
            var wv = WTile(0.0);
            if (n0 + wn < p.n && k0 + wk < p.k) { wv = load_w((n0 + wn) * p.row_words, k0 + wk); }
            ws[wn * TS + wk] = wv;
        }
        workgroupBarrier();
        for (var nn = 0u; nn < 16u; nn = nn + 1u) {
            var dr: array<f32, 4>;
            var wr: array<f32, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                dr[i] = xs[nn * TS + ty + 16u * i];
                wr[i] = f32(ws[nn * TS + tx + 16u * i]);
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i][j] = fma(dr[i], wr[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let m = m0 + ty + 16u * i;
        if (m >= p.m) { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let k = k0 + tx + 16u * j;
            if (k >= p.k) { continue; }
            var v = acc[i][j];
            if (p.has_res != 0u) { v = v + grad_res[m * p.k + k]; }
            dx[m * p.k + k] = v;
        }
    }
}
