// Workgroup-wide sum and max for 256-invocation workgroups (the portable
// variant: a tree in workgroup memory; reduce_subgroup.wgsl is used where the
// adapter has subgroups). Every invocation gets the result. Call from uniform
// control flow. The entry point takes a `lane: Lane` argument.
struct Lane { @builtin(local_invocation_index) li: u32 }

var<workgroup> red: array<f32, 256>;

fn wg_sum(lane: Lane, v: f32) -> f32 {
    red[lane.li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lane.li < s) { red[lane.li] = red[lane.li] + red[lane.li + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn wg_max(lane: Lane, v: f32) -> f32 {
    red[lane.li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lane.li < s) { red[lane.li] = max(red[lane.li], red[lane.li + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
