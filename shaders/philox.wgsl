// Gaussian noise from Philox4x32-10 (Salmon et al. 2011), counter-based so the
// same (seed, stream, index) gives the same numbers on every adapter.
// Thread i: counter (i, stream, 0, 0), key (seed_lo, seed_hi) -> 4 uniforms in
// (0, 1) -> 2 Box-Muller pairs -> out[4i .. 4i+4).
struct Params { n: u32, seed_lo: u32, seed_hi: u32, stream: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    // 32x32 -> 64-bit product from 16-bit halves (WGSL has no u64).
    let a_lo = a & 0xffffu; let a_hi = a >> 16u;
    let b_lo = b & 0xffffu; let b_hi = b >> 16u;
    let ll = a_lo * b_lo;
    let lh = a_lo * b_hi;
    let hl = a_hi * b_lo;
    let hh = a_hi * b_hi;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(a * b, hi);
}

fn philox(c_in: vec4<u32>, k_in: vec2<u32>) -> vec4<u32> {
    var c = c_in;
    var k = k_in;
    for (var r = 0; r < 10; r = r + 1) {
        let p0 = mulhilo(0xD2511F53u, c.x);
        let p1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.y ^ c.y ^ k.x, p1.x, p0.y ^ c.w ^ k.y, p0.x);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

fn uniform01(x: u32) -> f32 {
    return (f32(x >> 8u) + 0.5) * (1.0 / 16777216.0);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (4u * i >= p.n) { return; }
    let r = philox(vec4<u32>(i, p.stream, 0u, 0u), vec2<u32>(p.seed_lo, p.seed_hi));
    let r0 = sqrt(-2.0 * log(uniform01(r.x)));
    let a0 = sincos(2.0 * PI * uniform01(r.y));
    let r1 = sqrt(-2.0 * log(uniform01(r.z)));
    let a1 = sincos(2.0 * PI * uniform01(r.w));
    let v = array<f32, 4>(r0 * a0.y, r0 * a0.x, r1 * a1.y, r1 * a1.x);
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (4u * i + j < p.n) { out[4u * i + j] = v[j]; }
    }
}
