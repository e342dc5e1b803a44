// out[n, c, i] = act((x - mean[n,c]) * A[n,c] + B[n,c]) with coef [N, 3C] from
// group_norm_coeffs.wgsl. One thread per element of this chunk: items n0..,
// channels c0..c0+c of c_all (a range when one item is over the binding limit).
struct Params { c: u32, hw: u32, n0: u32, total: u32, c0: u32, c_all: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> coef: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
override ACT: u32 = 0u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.total) { return; }
    let n = p.n0 + i / (p.c * p.hw);
    let c = p.c0 + (i / p.hw) % p.c;
    let o = n * 3u * p.c_all;
    out[i] = activate((x[i] - coef[o + c]) * coef[o + p.c_all + c] + coef[o + 2u * p.c_all + c], ACT);
}
