// See group_norm.wgsl. One thread per (n, c) over the whole batch.
struct Params { c: u32, groups: u32, hw: u32, eps: f32, n0: u32, has_emb: u32, emb_stride: u32, n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> stats: array<f32>;   // [N, G, 2]
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> emb: array<f32>;     // [N, emb_stride]: scale | shift
@group(0) @binding(5) var<storage, read_write> coef: array<f32>; // [N, 3C]

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n * p.c) { return; }
    let n = i / p.c;
    let c = i % p.c;
    let g = c / (p.c / p.groups);
    let so = (n * p.groups + g) * 2u;
    var a = stats[so + 1u] * gamma[c];
    var b = beta[c];
    if (p.has_emb != 0u) {
        let s1 = 1.0 + emb[n * p.emb_stride + c];
        let sh = emb[n * p.emb_stride + p.c + c];
        a = a * s1;
        b = b * s1 + sh;
    }
    let o = n * 3u * p.c;
    coef[o + c] = stats[so];
    coef[o + p.c + c] = a;
    coef[o + 2u * p.c + c] = b;
}
