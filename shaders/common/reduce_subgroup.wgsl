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
var<workgroup> red_count: u32;

// Stores this subgroup's partial; returns how many partials there are, as a
// uniform value (workgroupUniformLoad, which is also the barrier), so the
// loops over them and the barrier after them are in uniform control flow.
fn put_partial(lane: Lane, s: f32) -> u32 {
    if (lane.sgi == 0u) { red[lane.sg] = s; }
    if (lane.li == 0u) { red_count = lane.nsg; }
    return workgroupUniformLoad(&red_count);
}

fn wg_sum(lane: Lane, v: f32) -> f32 {
    let n = put_partial(lane, subgroupAdd(v));
    var r = red[0];
    for (var i = 1u; i < n; i = i + 1u) { r = r + red[i]; }
    workgroupBarrier();
    return r;
}

fn wg_max(lane: Lane, v: f32) -> f32 {
    let n = put_partial(lane, subgroupMax(v));
    var r = red[0];
    for (var i = 1u; i < n; i = i + 1u) { r = max(r, red[i]); }
    workgroupBarrier();
    return r;
}
