// out = act(alpha * op(a, b) + beta), b broadcast as b[(i / b_inner) % b_size].
// OP: 0 = a (unary), 1 = a + b, 2 = a * b, 3 = a - b, 4 = a * gelu'(b) (the
// backward of an erf GELU: a = output gradient, b = its input).  ACT: see activate().
struct Params { n: u32, b_inner: u32, b_size: u32, offset: u32, alpha: f32, beta: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
override OP: u32 = 0u;
override ACT: u32 = 0u;
// 1 when b is bound per chunk like a (same shape), 0 when bound whole (broadcast).
override B_CHUNKED: u32 = 0u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.n) { return; }
    var r = a[i];
    var bi = i;
    if (B_CHUNKED == 0u) { bi = ((i + p.offset) / p.b_inner) % p.b_size; }
    let bv = b[bi];
    switch OP {
        case 1u: { r = r + bv; }
        case 2u: { r = r * bv; }
        case 3u: { r = r - bv; }
        case 4u: { r = r * gelu_erf_grad(bv); }
        default: {}
    }
    out[i] = activate(p.alpha * r + p.beta, ACT);
}
