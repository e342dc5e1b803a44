// Workgroup-wide sum and max with subgroup operations (same interface as
// reduce.wgsl): each subgroup reduces in registers, its first lane
// writes its partial at its `subgroup_id`, and every invocation adds the
// partials in subgroup order, so the result is the same run after run. Two
// barriers instead of nine; any subgroup size works (1 to 256 lanes).
struct Lane {
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) nsg: u32,
    @builtin(subgroup_invocation_id) sgi: u32,
}

var<workgroup> red: array<f32, 256>;

fn wg_sum(lane: Lane, v: f32) -> f32 {
    let s = subgroupAdd(v);
    if (lane.sgi == 0u) { red[lane.sg] = s; }
    workgroupBarrier();
    var r = red[0];
    for (var i = 1u; i < lane.nsg; i = i + 1u) { r = r + red[i]; }
    workgroupBarrier();
    return r;
}

fn wg_max(lane: Lane, v: f32) -> f32 {
    let s = subgroupMax(v);
    if (lane.sgi == 0u) { red[lane.sg] = s; }
    workgroupBarrier();
    var r = red[0];
    for (var i = 1u; i < lane.nsg; i = i + 1u) { r = max(r, red[i]); }
    workgroupBarrier();
    return r;
}
