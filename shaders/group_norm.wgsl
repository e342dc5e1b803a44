// GroupNorm in three small steps so the normalisation can be fused into the
// next conv's input load:
//   stats:  mean and 1/sqrt(var + eps) per (n, group), two-pass in f32;
//   coeffs: per (n, c): mean, A = rstd*gamma*(1+scale), B = beta*(1+scale)+shift
//           (scale/shift from an embedding row [scale | shift], GLIDE's order);
//   apply:  out = act((x - mean) * A + B).
// A dispatch covers `groups` groups (`c` channels) from group g0 of groups_all
// (channel ranges of an item over the binding limit), of items n0.. .
struct Params { c: u32, groups: u32, hw: u32, eps: f32, n0: u32, g0: u32, groups_all: u32, n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;   // [N, G, 2]

// One workgroup per (n, g) of this chunk: wg.x = g, wg.y = n.
@compute @workgroup_size(256)
fn stats_main(@builtin(workgroup_id) wg: vec3<u32>, lane: Lane) {
    let li = lane.li;
    let cg = p.c / p.groups;
    let len = cg * p.hw;
    let base = wg.y * p.c * p.hw + wg.x * len;
    var s = 0.0;
    for (var i = li; i < len; i = i + 256u) { s = s + x[base + i]; }
    let mean = wg_sum(lane, s) / f32(len);
    var q = 0.0;
    for (var i = li; i < len; i = i + 256u) { let d = x[base + i] - mean; q = q + d * d; }
    let var_ = wg_sum(lane, q) / f32(len);
    if (li == 0u) {
        let o = ((p.n0 + wg.y) * p.groups_all + p.g0 + wg.x) * 2u;
        stats[o] = mean;
        stats[o + 1u] = 1.0 / sqrt(var_ + p.eps);
    }
}
