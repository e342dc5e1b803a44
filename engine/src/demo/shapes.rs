//! The demo model's synthetic scenes: coloured shapes with relational
//! captions ("a red circle above a blue square"), rendered on white, and the
//! checker that parses an image back into objects and scores it against its
//! caption. Shared by the trainer (data) and `webglide eval shapes`.

pub const COLORS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 40, 40]),
    ("orange", [245, 140, 20]),
    ("yellow", [240, 210, 30]),
    ("green", [40, 170, 60]),
    ("blue", [40, 90, 220]),
    ("purple", [140, 60, 190]),
    ("pink", [240, 120, 190]),
    ("black", [30, 30, 30]),
];
pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "diamond", "star", "cross"];
pub const RELATIONS: [&str; 4] = ["above", "below", "to the left of", "to the right of"];

/// The relation that reverses `relation` (above <-> below, left of <-> right of).
pub fn opposite_relation(relation: usize) -> usize {
    relation ^ 1
}

/// Colour–shape pairs never shown in training, so evaluation prompts are new.
pub const HELD_OUT: [(usize, usize); 6] = [(0, 4), (4, 2), (3, 0), (2, 1), (5, 3), (6, 5)];

pub fn held_out(color: usize, shape: usize) -> bool {
    HELD_OUT.contains(&(color, shape))
}

/// A small deterministic generator (SplitMix64).
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub color: usize,
    pub shape: usize,
    /// Centre and half-size in units of the image width.
    pub cx: f32,
    pub cy: f32,
    pub r: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub objects: Vec<Object>,
    /// Relation of object 0 to object 1, when there are two or more.
    pub relation: Option<usize>,
}

impl Scene {
    pub fn caption(&self) -> String {
        let name = |o: &Object| format!("a {} {}", COLORS[o.color].0, SHAPES[o.shape]);
        let o = &self.objects;
        match (o.len(), self.relation) {
            (1, _) | (_, None) => name(&o[0]),
            (2, Some(r)) => format!("{} {} {}", name(&o[0]), RELATIONS[r], name(&o[1])),
            (_, Some(r)) => format!(
                "{} {} {} and {}",
                name(&o[0]),
                RELATIONS[r],
                name(&o[1]),
                name(&o[2])
            ),
        }
    }

    /// A random scene of 1–3 objects. `allow(color, shape)` filters the pairs.
    pub fn random(rng: &mut Rng, allow: &dyn Fn(usize, usize) -> bool) -> Scene {
        let n = 1 + rng.below(3);
        Scene::random_of(rng, allow, n)
    }

    /// A random scene of exactly `n` objects (1–3; the caption names three at
    /// most). `allow(color, shape)` filters the pairs.
    pub fn random_of(rng: &mut Rng, allow: &dyn Fn(usize, usize) -> bool, n: usize) -> Scene {
        Scene::place(rng, allow, n.clamp(1, 3), false)
    }

    /// Two related objects of one colour and different shapes: once the
    /// colour shows in a noisy image, only the relation says which shape goes
    /// where, so these scenes teach it where the noise is low enough for the
    /// eps loss to weigh it.
    pub fn related_pair(rng: &mut Rng, allow: &dyn Fn(usize, usize) -> bool) -> Scene {
        Scene::place(rng, allow, 2, true)
    }

    /// The same objects where they are, with the relation reversed (a
    /// caption the layout contradicts); `None` without a relation.
    pub fn relation_reversed(&self) -> Option<Scene> {
        Some(Scene {
            relation: Some(opposite_relation(self.relation?)),
            ..self.clone()
        })
    }

    /// The scene whose caption differs only in the relation word: objects 0
    /// and 1 trade places (centre and size) and the relation is reversed, so
    /// the relation still holds and a third object stays where it is. `None`
    /// without a relation.
    pub fn twin(&self) -> Option<Scene> {
        let mut twin = self.relation_reversed()?;
        let (a, b) = (&self.objects[0], &self.objects[1]);
        (twin.objects[0].cx, twin.objects[0].cy, twin.objects[0].r) = (b.cx, b.cy, b.r);
        (twin.objects[1].cx, twin.objects[1].cy, twin.objects[1].r) = (a.cx, a.cy, a.r);
        Some(twin)
    }

    /// `n` objects placed at random; with `shared_color`, object 1 takes
    /// object 0's colour and another shape.
    fn place(
        rng: &mut Rng,
        allow: &dyn Fn(usize, usize) -> bool,
        n: usize,
        shared_color: bool,
    ) -> Scene {
        let pick = |rng: &mut Rng| loop {
            let (c, s) = (rng.below(COLORS.len()), rng.below(SHAPES.len()));
            if allow(c, s) {
                return (c, s);
            }
        };
        'retry: loop {
            let mut objects: Vec<Object> = Vec::new();
            let relation = (n >= 2).then(|| rng.below(RELATIONS.len()));
            for i in 0..n {
                let (color, shape) = if shared_color && i == 1 {
                    let first = &objects[0];
                    let others: Vec<usize> = (0..SHAPES.len())
                        .filter(|&s| s != first.shape && allow(first.color, s))
                        .collect();
                    if others.is_empty() {
                        continue 'retry;
                    }
                    (first.color, others[rng.below(others.len())])
                } else {
                    pick(rng)
                };
                let r = 0.11 + 0.08 * rng.f32();
                let mut tries = 0;
                let obj = loop {
                    tries += 1;
                    if tries > 200 {
                        continue 'retry;
                    }
                    let cx = r + (1.0 - 2.0 * r) * rng.f32();
                    let cy = r + (1.0 - 2.0 * r) * rng.f32();
                    let o = Object {
                        color,
                        shape,
                        cx,
                        cy,
                        r,
                    };
                    let free = objects.iter().all(|p| {
                        let d = ((p.cx - cx).powi(2) + (p.cy - cy).powi(2)).sqrt();
                        d > p.r + r + 0.04
                    });
                    let related = match (i, relation) {
                        (1, Some(rel)) => relation_holds(rel, &objects[0], &o, 0.05, 0.7),
                        _ => true,
                    };
                    if free && related {
                        break o;
                    }
                };
                objects.push(obj);
            }
            return Scene { objects, relation };
        }
    }
}

/// Whether `a` is `rel` of `b`: apart by `margin` beyond their extents along
/// the relation's axis, and offset across it by at most `slack` times that
/// distance (the generator uses 0.7 so the relation is unambiguous; the
/// checker, on detected centroids, 1.5).
pub fn relation_holds(rel: usize, a: &Object, b: &Object, margin: f32, slack: f32) -> bool {
    let (dx, dy) = (b.cx - a.cx, b.cy - a.cy);
    let (along, across) = match rel {
        0 => (dy, dx),  // a above b
        1 => (-dy, dx), // a below b
        2 => (dx, dy),  // a left of b
        _ => (-dx, dy),
    };
    along > a.r + b.r + margin && across.abs() < slack * along
}

/// Whether the point (dx, dy), in units of the half-size, is inside the shape.
pub fn inside(shape: usize, dx: f32, dy: f32) -> bool {
    match shape {
        0 => dx * dx + dy * dy <= 1.0,
        1 => dx.abs() <= 0.85 && dy.abs() <= 0.85,
        2 => (-1.0..=0.8).contains(&dy) && dx.abs() <= (dy + 1.0) / 1.8,
        3 => dx.abs() + dy.abs() <= 1.0,
        4 => {
            // Five-pointed star: inner radius 0.45, first point up.
            let (r, a) = (
                (dx * dx + dy * dy).sqrt(),
                dy.atan2(dx) + std::f32::consts::FRAC_PI_2,
            );
            let sector = std::f32::consts::TAU / 5.0;
            let t = (a.rem_euclid(sector) / sector - 0.5).abs() * 2.0; // 1 at a point, 0 between
                                                                       // Straight edges between point (radius 1) and notch (0.45), approximately.
            r <= 0.45 + 0.55 * t.powf(1.6)
        }
        _ => (dx.abs() <= 0.33 && dy.abs() <= 1.0) || (dy.abs() <= 0.33 && dx.abs() <= 1.0),
    }
}

/// Renders at `size`² (RGB8, white background), `ss`×`ss` samples per pixel.
pub fn render(scene: &Scene, size: usize, ss: usize) -> Vec<u8> {
    let mut out = vec![0u8; size * size * 3];
    for py in 0..size {
        for px in 0..size {
            let mut acc = [0f32; 3];
            for sy in 0..ss {
                for sx in 0..ss {
                    let x = (px as f32 + (sx as f32 + 0.5) / ss as f32) / size as f32;
                    let y = (py as f32 + (sy as f32 + 0.5) / ss as f32) / size as f32;
                    let mut c = [255u8; 3];
                    for o in &scene.objects {
                        if inside(o.shape, (x - o.cx) / o.r, (y - o.cy) / o.r) {
                            c = COLORS[o.color].1;
                        }
                    }
                    for k in 0..3 {
                        acc[k] += c[k] as f32;
                    }
                }
            }
            for k in 0..3 {
                out[(py * size + px) * 3 + k] = (acc[k] / (ss * ss) as f32).round() as u8;
            }
        }
    }
    out
}

/// `factor`×`factor` box average of an RGB8 square image (the dataset's 256 → 64).
pub fn box_down(rgb: &[u8], size: usize, factor: usize) -> Vec<u8> {
    let s = size / factor;
    let mut out = vec![0u8; s * s * 3];
    for y in 0..s {
        for x in 0..s {
            for k in 0..3 {
                let mut sum = 0u32;
                for dy in 0..factor {
                    for dx in 0..factor {
                        sum += rgb[((y * factor + dy) * size + x * factor + dx) * 3 + k] as u32;
                    }
                }
                out[(y * s + x) * 3 + k] = ((sum as f32) / (factor * factor) as f32).round() as u8;
            }
        }
    }
    out
}

/// Rows of `size`² RGB8 tiles laid out as one image (white where a row is
/// short): the evaluations' sample grids. Returns the pixels, width, height.
pub fn tile_rows(rows: &[Vec<Vec<u8>>], size: usize) -> (Vec<u8>, usize, usize) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let (w, h) = (cols * size, rows.len().max(1) * size);
    let mut img = vec![255u8; w * h * 3];
    for (ri, row) in rows.iter().enumerate() {
        for (ci, tile) in row.iter().enumerate() {
            for y in 0..size {
                let dst = ((ri * size + y) * w + ci * size) * 3;
                img[dst..dst + size * 3].copy_from_slice(&tile[y * size * 3..(y + 1) * size * 3]);
            }
        }
    }
    (img, w, h)
}

/// An object found in an image.
#[derive(Clone, Debug)]
pub struct Found {
    pub color: usize,
    pub shape: usize,
    pub cx: f32,
    pub cy: f32,
    pub r: f32,
    pub pixels: usize,
}

const GRID: usize = 16;

/// The shape's silhouette on a GRID² raster over its own bounding box.
fn template(shape: usize) -> Vec<bool> {
    // Bounding boxes in half-size units.
    let (x0, x1, y0, y1) = match shape {
        1 => (-0.85, 0.85, -0.85, 0.85),
        2 => (-1.0, 1.0, -1.0, 0.8),
        // Points at radius 1, the first up: sin 72° wide, cos 36° low.
        4 => (-0.951, 0.951, -1.0, 0.809),
        _ => (-1.0, 1.0, -1.0, 1.0),
    };
    let mut t = vec![false; GRID * GRID];
    for gy in 0..GRID {
        for gx in 0..GRID {
            let dx = x0 + (x1 - x0) * (gx as f32 + 0.5) / GRID as f32;
            let dy = y0 + (y1 - y0) * (gy as f32 + 0.5) / GRID as f32;
            t[gy * GRID + gx] = inside(shape, dx, dy);
        }
    }
    t
}

/// The colour a pixel shows, or 255 for the ground. An edge pixel is part
/// object, part white ground, so it lies between the two: the colour is the
/// one whose line to white passes nearest the pixel, and the pixel is ground
/// when less than half of it is that colour. (The nearest colour alone
/// read a blue edge, half blue and half white, as pink: rims of clean renders
/// became extra objects.)
fn pixel_label(p: &[u8]) -> u8 {
    let d = [0, 1, 2].map(|j| p[j] as f32 - 255.0);
    let mut best = (f32::INFINITY, 255u8, 0.0f32);
    for (k, (_, c)) in COLORS.iter().enumerate() {
        let e = [0, 1, 2].map(|j| c[j] as f32 - 255.0);
        let ee: f32 = e.iter().map(|v| v * v).sum();
        let cover = ((0..3).map(|j| d[j] * e[j]).sum::<f32>() / ee).clamp(0.0, 1.0);
        let miss: f32 = (0..3).map(|j| (d[j] - cover * e[j]).powi(2)).sum();
        if miss < best.0 {
            best = (miss, k as u8, cover);
        }
    }
    if best.2 < 0.5 {
        255
    } else {
        best.1
    }
}

/// Parses an RGB8 image (white background) into coloured objects.
pub fn detect(rgb: &[u8], size: usize) -> Vec<Found> {
    let n = size * size;
    // Colour label per pixel; 255 = background.
    let label: Vec<u8> = (0..n)
        .map(|i| pixel_label(&rgb[i * 3..i * 3 + 3]))
        .collect();
    let templates: Vec<Vec<bool>> = (0..SHAPES.len()).map(template).collect();
    let mut seen = vec![false; n];
    let mut found = Vec::new();
    for start in 0..n {
        if seen[start] || label[start] == 255 {
            continue;
        }
        let l = label[start];
        let mut stack = vec![start];
        let mut comp = Vec::new();
        seen[start] = true;
        while let Some(i) = stack.pop() {
            comp.push(i);
            let (x, y) = (i % size, i / size);
            let mut push = |j: usize| {
                if !seen[j] && label[j] == l {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                push(i - 1);
            }
            if x + 1 < size {
                push(i + 1);
            }
            if y > 0 {
                push(i - size);
            }
            if y + 1 < size {
                push(i + size);
            }
        }
        if comp.len() < (n / 200).max(6) {
            continue; // specks and anti-aliasing fringes
        }
        let (mut x0, mut x1, mut y0, mut y1) = (size, 0, size, 0);
        for &i in &comp {
            let (x, y) = (i % size, i / size);
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
        let mut mask = vec![false; GRID * GRID];
        let in_comp: std::collections::HashSet<usize> = comp.iter().copied().collect();
        for gy in 0..GRID {
            for gx in 0..GRID {
                let x = x0 + ((gx as f32 + 0.5) / GRID as f32 * bw) as usize;
                let y = y0 + ((gy as f32 + 0.5) / GRID as f32 * bh) as usize;
                mask[gy * GRID + gx] = in_comp.contains(&(y * size + x));
            }
        }
        let iou = |t: &Vec<bool>| {
            let inter = t.iter().zip(&mask).filter(|(a, b)| **a && **b).count();
            let union = t.iter().zip(&mask).filter(|(a, b)| **a || **b).count();
            inter as f32 / union.max(1) as f32
        };
        let shape = (0..SHAPES.len())
            .max_by(|&a, &b| iou(&templates[a]).total_cmp(&iou(&templates[b])))
            .unwrap_or(0);
        let (sx, sy) = comp
            .iter()
            .fold((0usize, 0usize), |(a, b), &i| (a + i % size, b + i / size));
        found.push(Found {
            color: l as usize,
            shape,
            cx: (sx as f32 / comp.len() as f32 + 0.5) / size as f32,
            cy: (sy as f32 / comp.len() as f32 + 0.5) / size as f32,
            r: bw.max(bh) / 2.0 / size as f32,
            pixels: comp.len(),
        });
    }
    found
}

/// The evaluation prompts: `n` random scenes that each hold at least one
/// held-out colour–shape pair (never an exact training caption), the same
/// for a given seed in every tool that evaluates.
pub fn eval_scenes(n: usize, seed: u64) -> Vec<Scene> {
    let mut rng = Rng(seed ^ 0x5eed);
    (0..n)
        .map(|_| loop {
            let s = Scene::random(&mut rng, &|_, _| true);
            if s.objects.iter().any(|o| held_out(o.color, o.shape)) {
                break s;
            }
        })
        .collect()
}

/// An inpainting evaluation case: `source` is drawn, the box around its last
/// object is regenerated, and the prompt is `target`'s caption: the same
/// scene with that object given a held-out colour–shape pair, new in both
/// colour and shape and unlike every other object of the scene.
#[derive(Clone, Debug)]
pub struct InpaintCase {
    pub source: Scene,
    pub target: Scene,
    /// The regenerated box in units of the image width: x0, y0, x1, y1.
    pub region: [f32; 4],
}

impl InpaintCase {
    /// The object the prompt asks for in the region.
    pub fn new_object(&self) -> &Object {
        self.target.objects.last().expect("scenes have objects")
    }

    /// Keep-mask at `size`² (1 = keep, 0 = regenerate).
    pub fn keep_mask(&self, size: usize) -> Vec<f32> {
        region_keep_mask(self.region, size)
    }

    /// Whether the checker's objects include the new one (colour and shape).
    pub fn shows_new_object(&self, found: &[Found]) -> bool {
        let o = self.new_object();
        found
            .iter()
            .any(|f| (f.color, f.shape) == (o.color, o.shape))
    }

    /// `rgb` (`size`², RGB8) with the region greyed: how grids show a source.
    pub fn shaded(&self, rgb: &[u8], size: usize) -> Vec<u8> {
        let keep = self.keep_mask(size);
        rgb.iter()
            .enumerate()
            .map(|(i, &v)| if keep[i / 3] == 1.0 { v } else { v / 2 + 64 })
            .collect()
    }
}

/// Keep-mask at `size`² (1 = keep, 0 = regenerate) of a box in units of the
/// image width (x0, y0, x1, y1): the pixels whose centre lies in it.
pub fn region_keep_mask(region: [f32; 4], size: usize) -> Vec<f32> {
    let [x0, y0, x1, y1] = region;
    let c = |p: usize| (p as f32 + 0.5) / size as f32;
    (0..size * size)
        .map(|i| {
            let (x, y) = (c(i % size), c(i / size));
            if (x0..=x1).contains(&x) && (y0..=y1).contains(&y) {
                0.0
            } else {
                1.0
            }
        })
        .collect()
}

impl Object {
    /// The object's box grown by `margin` on every side, clipped to the image
    /// (x0, y0, x1, y1 in units of the image width).
    pub fn box_with_margin(&self, margin: f32) -> [f32; 4] {
        [
            (self.cx - self.r - margin).max(0.0),
            (self.cy - self.r - margin).max(0.0),
            (self.cx + self.r + margin).min(1.0),
            (self.cy + self.r + margin).min(1.0),
        ]
    }
}

/// `n` inpainting cases, the same for a given seed everywhere. Sources use
/// training pairs only; the region is the last object's box with a margin
/// that no other object reaches into, so a perfect inpainting is exactly the
/// rendered target.
pub fn inpaint_cases(n: usize, seed: u64) -> Vec<InpaintCase> {
    const MARGIN: f32 = 0.03;
    let mut rng = Rng(seed ^ 0x1a9a);
    (0..n)
        .map(|_| loop {
            let source = Scene::random(&mut rng, &|c, s| !held_out(c, s));
            let (last, others) = source.objects.split_last().expect("1–3 objects");
            let region = last.box_with_margin(MARGIN);
            let clear = others.iter().all(|p| {
                p.cx + p.r < region[0]
                    || p.cx - p.r > region[2]
                    || p.cy + p.r < region[1]
                    || p.cy - p.r > region[3]
            });
            let choices: Vec<(usize, usize)> = HELD_OUT
                .iter()
                .copied()
                .filter(|&(c, s)| {
                    c != last.color
                        && s != last.shape
                        && others.iter().all(|p| (p.color, p.shape) != (c, s))
                })
                .collect();
            if !clear || choices.is_empty() {
                continue;
            }
            let (color, shape) = choices[rng.below(choices.len())];
            let mut target = source.clone();
            let new = target.objects.last_mut().expect("1–3 objects");
            (new.color, new.shape) = (color, shape);
            break InpaintCase {
                source,
                target,
                region,
            };
        })
        .collect()
}

/// Per-caption scores in [0, 1] (relation: None when the caption has none).
#[derive(Clone, Debug, Default)]
pub struct Score {
    pub color: f32,
    pub shape: f32,
    pub binding: f32,
    pub relation: Option<f32>,
    /// 1 when the image is the caption: every object with its colour and
    /// shape, the relation (if any) holding, and no object the caption
    /// does not name; else 0.
    pub exact: f32,
    /// Objects the caption names, and objects the checker found.
    pub named: usize,
    pub detected: usize,
    /// Named objects with a held-out colour–shape pair, then with a pair
    /// seen in training: (how many, how many of them were found bound).
    pub pairs: [(usize, usize); 2],
}

/// Scores summed over images: one row of an evaluation table. `new`: the
/// inpainting evaluation's extra column (the new object is there).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    images: f32,
    color: f32,
    shape: f32,
    binding: f32,
    relation: f32,
    with_relation: f32,
    exact: f32,
    new: Option<f32>,
    /// Per number of named objects (1, 2, 3+): images and exact matches.
    by_named: [(f32, f32); 3],
    /// Images with fewer, as many and more objects detected than named.
    counts: [f32; 3],
    /// Named objects with held-out and with seen pairs: (named, bound).
    pairs: [(f32, f32); 2],
}

impl Tally {
    pub fn add(&mut self, s: &Score) {
        self.images += 1.0;
        self.color += s.color;
        self.shape += s.shape;
        self.binding += s.binding;
        self.exact += s.exact;
        let k = &mut self.by_named[s.named.clamp(1, 3) - 1];
        k.0 += 1.0;
        k.1 += s.exact;
        let count = match s.detected.cmp(&s.named) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => 1,
            std::cmp::Ordering::Greater => 2,
        };
        self.counts[count] += 1.0;
        for (sum, (named, bound)) in self.pairs.iter_mut().zip(s.pairs) {
            sum.0 += named as f32;
            sum.1 += bound as f32;
        }
        if let Some(r) = s.relation {
            self.relation += r;
            self.with_relation += 1.0;
        }
    }

    pub fn add_new(&mut self, shown: bool) {
        *self.new.get_or_insert(0.0) += if shown { 1.0 } else { 0.0 };
    }

    pub fn header(with_new: bool) -> String {
        format!(
            "{:>9} {:>8} {:>8} {:>8} {:>9} {:>6}{}",
            "guidance",
            "colour",
            "shape",
            "binding",
            "relation",
            "exact",
            if with_new { "    new" } else { "" }
        )
    }

    /// Means over the images (relation: over those whose caption has one).
    pub fn row(&self, label: &str) -> String {
        let m = self.images.max(1.0);
        let relation = if self.with_relation > 0.0 {
            format!("{:.3}", self.relation / self.with_relation)
        } else {
            "-".into()
        };
        let new = self
            .new
            .map(|v| format!(" {:>6.3}", v / m))
            .unwrap_or_default();
        format!(
            "{label:>9} {:>8.3} {:>8.3} {:>8.3} {relation:>9} {:>6.3}{new}",
            self.color / m,
            self.shape / m,
            self.binding / m,
            self.exact / m
        )
    }

    /// Where the exact matches come from and where they are lost: the exact
    /// rate per number of named objects, how often the checker found too few
    /// or too many objects, and binding for held-out against seen pairs.
    pub fn breakdown(&self) -> String {
        let m = self.images.max(1.0);
        let rate = |(n, k): (f32, f32)| {
            let r = if n > 0.0 {
                format!("{:.3}", k / n)
            } else {
                "-".into()
            };
            format!("{r} (n {n})")
        };
        let exact: Vec<String> = self.by_named.iter().map(|&k| rate(k)).collect();
        format!(
            "{:>9} exact with 1 / 2 / 3 objects named: {}; detected fewer / as many / more: {:.3} / {:.3} / {:.3}\n\
             {:>9} binding of held-out / seen pairs: {} / {}",
            "",
            exact.join(" / "),
            self.counts[0] / m,
            self.counts[1] / m,
            self.counts[2] / m,
            "",
            rate(self.pairs[0]),
            rate(self.pairs[1]),
        )
    }
}

/// Scores an image against the scene its caption describes.
pub fn score(scene: &Scene, found: &[Found]) -> Score {
    let objs = &scene.objects;
    let n = objs.len() as f32;
    let frac = |f: &dyn Fn(&Object) -> bool| objs.iter().filter(|o| f(o)).count() as f32 / n;
    let color = frac(&|o| found.iter().any(|f| f.color == o.color));
    let shape = frac(&|o| found.iter().any(|f| f.shape == o.shape));
    // An object is bound when a detection has its colour and its shape.
    let bound = |o: &Object| {
        found
            .iter()
            .any(|f| f.color == o.color && f.shape == o.shape)
    };
    let binding = frac(&bound);
    let relation = scene.relation.map(|rel| {
        // The detections that can be an object: the largest ones of its
        // colour and shape, as many as the caption names of it.
        let candidates = |o: &Object| {
            let mut v: Vec<&Found> = found
                .iter()
                .filter(|f| f.color == o.color && f.shape == o.shape)
                .collect();
            v.sort_by_key(|f| std::cmp::Reverse(f.pixels));
            let named = objs
                .iter()
                .filter(|p| (p.color, p.shape) == (o.color, o.shape))
                .count();
            v.truncate(named);
            v
        };
        let as_obj = |f: &Found| Object {
            color: f.color,
            shape: f.shape,
            cx: f.cx,
            cy: f.cy,
            r: 0.0,
        };
        // The caption does not say which of two alike objects is which
        // ("a red circle above a red circle", or a third object like the
        // second): any two distinct candidates will do.
        let (first, second) = (candidates(&objs[0]), candidates(&objs[1]));
        let met = first.iter().any(|a| {
            second.iter().any(|b| {
                !std::ptr::eq(*a, *b) && relation_holds(rel, &as_obj(a), &as_obj(b), 0.0, 1.5)
            })
        });
        if met {
            1.0
        } else {
            0.0
        }
    });
    // Exact: the relation holds and the detections are the named objects,
    // one each: nothing extra, so a named object drawn twice is no match
    // (the dataset spec's "everything right, nothing extra").
    let mut named: Vec<(usize, usize)> = objs.iter().map(|o| (o.color, o.shape)).collect();
    let mut drawn: Vec<(usize, usize)> = found.iter().map(|f| (f.color, f.shape)).collect();
    named.sort_unstable();
    drawn.sort_unstable();
    let exact = relation.unwrap_or(1.0) == 1.0 && drawn == named;
    let mut pairs = [(0, 0); 2];
    for o in objs {
        let p = &mut pairs[usize::from(!held_out(o.color, o.shape))];
        p.0 += 1;
        p.1 += usize::from(bound(o));
    }
    Score {
        color,
        shape,
        binding,
        relation,
        exact: if exact { 1.0 } else { 0.0 },
        named: objs.len(),
        detected: found.len(),
        pairs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_and_held_out_pairs() {
        let mut rng = Rng(1);
        for _ in 0..200 {
            let s = Scene::random(&mut rng, &|c, sh| !held_out(c, sh));
            assert!(s.objects.iter().all(|o| !held_out(o.color, o.shape)));
            let cap = s.caption();
            assert!(cap.starts_with("a "), "{cap}");
            if let Some(r) = s.relation {
                assert!(cap.contains(RELATIONS[r]));
                assert!(relation_holds(r, &s.objects[0], &s.objects[1], 0.05, 0.7));
            }
        }
    }

    /// Related pairs: two objects of one colour and different shapes, in
    /// the relation the caption names, every relation drawn; a colour with
    /// a single allowed shape is never paired; and the checker reads clean
    /// drawings of them as well as those of other two-object scenes (so
    /// same-coloured objects are told apart).
    #[test]
    fn related_pairs_share_a_colour_and_read_as_exact() {
        let mut rng = Rng(7);
        let allow = |c: usize, s: usize| !held_out(c, s) && (c != 0 || s == 0);
        let size = 64;
        let exact = |s: &Scene| score(s, &detect(&render(s, size, 4), size)).exact;
        let (mut relations, mut paired, mut other, mut others) =
            (vec![0; RELATIONS.len()], 0.0, 0.0, 0.0);
        for _ in 0..400 {
            let s = Scene::related_pair(&mut rng, &allow);
            let [a, b] = &s.objects[..] else {
                panic!("{} objects", s.objects.len())
            };
            assert!(a.color == b.color && a.color != 0 && a.shape != b.shape);
            assert!(allow(a.color, a.shape) && allow(b.color, b.shape));
            let r = s.relation.expect("a related pair has a relation");
            relations[r] += 1;
            assert!(relation_holds(r, a, b, 0.05, 0.7));
            paired += exact(&s) / 400.0;
            let s = Scene::random(&mut rng, &allow);
            if s.objects.len() == 2 {
                other += exact(&s);
                others += 1.0;
            }
        }
        assert!(relations.iter().all(|&n| n > 0), "{relations:?}");
        let other = other / others;
        assert!(
            paired > 0.98 && (paired - other).abs() < 0.02,
            "{paired} vs {other}"
        );
    }

    /// A twin names the same objects with the reversed relation, which holds
    /// for its geometry (and fails for the original's), draws the same
    /// discs, reads back as exact, and is its own twin's twin.
    #[test]
    fn twins_trade_places_and_reverse_the_relation() {
        let mut rng = Rng(11);
        let allow = |c: usize, s: usize| !held_out(c, s);
        let (mut twins, mut exact) = (0, 0.0);
        for i in 0..300 {
            let s = if i % 3 == 0 {
                Scene::related_pair(&mut rng, &allow)
            } else {
                Scene::random(&mut rng, &allow)
            };
            let Some(t) = s.twin() else {
                assert!(s.objects.len() == 1 && s.relation.is_none());
                continue;
            };
            twins += 1;
            let (r, rt) = (s.relation.unwrap(), t.relation.unwrap());
            assert_ne!(r, rt);
            let words = |c: String| c.split(' ').map(str::to_owned).collect::<Vec<_>>();
            let (ws, wt) = (words(s.caption()), words(t.caption()));
            let differ = ws.iter().zip(&wt).filter(|(a, b)| a != b).count();
            assert!(ws.len() == wt.len() && differ == 1, "{ws:?} {wt:?}");
            assert!(relation_holds(rt, &t.objects[0], &t.objects[1], 0.05, 0.7));
            assert!(!relation_holds(rt, &s.objects[0], &s.objects[1], 0.0, 10.0));
            let geometry = |o: &Object| (o.cx, o.cy, o.r);
            let discs = |sc: &Scene| {
                let mut g: Vec<_> = sc.objects.iter().map(geometry).collect();
                g.sort_by(|a, b| a.partial_cmp(b).unwrap());
                g
            };
            assert_eq!(discs(&s), discs(&t));
            assert_eq!(t.twin().as_ref(), Some(&s));
            exact += score(&t, &detect(&render(&t, 64, 4), 64)).exact;
        }
        assert!(twins > 150, "{twins}");
        assert!(exact / twins as f32 > 0.85, "{}", exact / twins as f32);
    }

    /// A perfect inpainting (the source outside the region, the target
    /// inside) is exactly the rendered target, which the checker reads as
    /// the prompt; the untouched source never shows the new object.
    #[test]
    fn inpaint_cases_regenerate_just_the_replaced_object() {
        for size in [64, 23] {
            let cases = inpaint_cases(60, size as u64);
            let (mut exact, mut stale) = (0.0, 0.0);
            for case in &cases {
                let (src, tgt) = (&case.source.objects, &case.target.objects);
                let last = src.len() - 1;
                assert_eq!(src[..last], tgt[..last]);
                let (old, new) = (&src[last], case.new_object());
                assert!(held_out(new.color, new.shape));
                assert!(new.color != old.color && new.shape != old.shape);
                assert!((new.cx, new.cy, new.r) == (old.cx, old.cy, old.r));
                assert!(src.iter().all(|o| !held_out(o.color, o.shape)));
                let keep = case.keep_mask(size);
                assert!(keep.contains(&0.0) && keep.contains(&1.0));
                let (a, b) = (render(&case.source, size, 4), render(&case.target, size, 4));
                let composite: Vec<u8> = (0..size * size * 3)
                    .map(|i| if keep[i / 3] == 1.0 { a[i] } else { b[i] })
                    .collect();
                assert!(composite == b, "the region misses part of the new object");
                if size == 64 {
                    exact += score(&case.target, &detect(&b, size)).exact;
                    let found = detect(&a, size);
                    if found
                        .iter()
                        .any(|f| (f.color, f.shape) == (new.color, new.shape))
                    {
                        stale += 1.0;
                    }
                }
            }
            if size == 64 {
                assert!(
                    exact / 60.0 > 0.98,
                    "checker on perfect inpaintings {exact}"
                );
                assert_eq!(stale, 0.0, "the source already holds the new object");
            }
        }
        assert_eq!(
            inpaint_cases(5, 3)
                .iter()
                .map(|c| c.target.caption())
                .collect::<Vec<_>>(),
            inpaint_cases(5, 3)
                .iter()
                .map(|c| c.target.caption())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_tally_prints_means_with_the_relation_over_captions_that_have_one() {
        let mut t = Tally::default();
        let one = |relation, exact, named, detected| Score {
            color: 1.0,
            shape: 0.5,
            binding: 0.5,
            relation,
            exact,
            named,
            detected,
            pairs: [(1, 1), (named - 1, 0)],
        };
        t.add(&one(Some(1.0), 1.0, 2, 2));
        t.add(&one(None, 0.0, 1, 3));
        assert_eq!(
            t.row("cfg 3.0").split_whitespace().collect::<Vec<_>>(),
            ["cfg", "3.0", "1.000", "0.500", "0.500", "1.000", "0.500"]
        );
        assert!(!Tally::header(false).contains("new"));
        t.add_new(true);
        t.add_new(false);
        assert!(Tally::header(true).ends_with("exact    new"));
        assert!(t.row("x").ends_with("0.500  0.500"), "{}", t.row("x"));
        assert!(
            t.breakdown()
                .contains("named: 0.000 (n 1) / 1.000 (n 1) / - (n 0); detected fewer / as many / more: 0.000 / 0.500 / 0.500\n"),
            "{}",
            t.breakdown()
        );
        assert!(
            t.breakdown()
                .ends_with("binding of held-out / seen pairs: 1.000 (n 2) / 0.000 (n 1)"),
            "{}",
            t.breakdown()
        );
        let none = Tally::default().row("cfg 0.0");
        assert!(none.contains(" - "), "{none}");
    }

    /// The checker must read rendered scenes back almost perfectly, or its
    /// scores of generated images mean nothing.
    #[test]
    fn checker_parses_rendered_scenes() {
        let mut rng = Rng(7);
        let (mut bind, mut rel, mut nrel, mut exact) = (0.0, 0.0, 0.0, 0.0);
        let n = 300;
        for _ in 0..n {
            let s = Scene::random(&mut rng, &|_, _| true);
            let img = box_down(&render(&s, 256, 1), 256, 4);
            let sc = score(&s, &detect(&img, 64));
            bind += sc.binding;
            exact += sc.exact;
            if let Some(r) = sc.relation {
                rel += r;
                nrel += 1.0;
            }
            let held = s.objects.iter().filter(|o| held_out(o.color, o.shape));
            assert_eq!(sc.pairs[0].0, held.count());
            assert_eq!(sc.pairs[0].0 + sc.pairs[1].0, s.objects.len());
            let bound = sc.pairs[0].1 + sc.pairs[1].1;
            assert!((bound as f32 - sc.binding * s.objects.len() as f32).abs() < 1e-4);
        }
        let (bind, rel) = (bind / n as f32, rel / nrel);
        assert!(bind > 0.95, "binding accuracy on clean renders {bind}");
        assert!(rel > 0.95, "relation accuracy on clean renders {rel}");
        let exact = exact / n as f32;
        assert!(exact > 0.99, "exact matches of clean renders {exact}");
        // A scene with an object the caption does not name is no exact match.
        let mut two = Scene::random(&mut rng, &|_, _| true);
        while two.objects.len() < 2 {
            two = Scene::random(&mut rng, &|_, _| true);
        }
        let img = box_down(&render(&two, 256, 1), 256, 4);
        let mut one = two.clone();
        one.objects.truncate(1);
        one.relation = None;
        let (full, partial) = (
            score(&two, &detect(&img, 64)),
            score(&one, &detect(&img, 64)),
        );
        if full.exact == 1.0 {
            assert_eq!(partial.exact, 0.0, "an unnamed extra object went unnoticed");
        }
        // Nor is one whose named object is drawn twice; named twice, it is.
        let mut twins = Scene::random(&mut rng, &|c, s| (c, s) == (1, 2));
        while twins.objects.len() < 2 {
            twins = Scene::random(&mut rng, &|c, s| (c, s) == (1, 2));
        }
        twins.objects.truncate(2);
        let img = box_down(&render(&twins, 256, 1), 256, 4);
        let found = detect(&img, 64);
        assert_eq!(score(&twins, &found).exact, 1.0, "{found:?}");
        let mut single = twins.clone();
        single.objects.truncate(1);
        single.relation = None;
        let sc = score(&single, &found);
        assert_eq!(
            (sc.binding, sc.exact),
            (1.0, 0.0),
            "a duplicate went unnoticed"
        );
        // A blank image scores zero.
        let s = Scene::random(&mut rng, &|_, _| true);
        let blank = vec![255u8; 64 * 64 * 3];
        let sc = score(&s, &detect(&blank, 64));
        assert_eq!(
            (sc.color, sc.shape, sc.binding, sc.exact),
            (0.0, 0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn edge_pixels_read_as_their_colour_or_the_ground() {
        // An edge pixel is its colour blended with the white ground.
        let blend = |c: [u8; 3], cover: f32| {
            c.map(|v| (cover * v as f32 + (1.0 - cover) * 255.0).round() as u8)
        };
        for (k, (name, c)) in COLORS.iter().enumerate() {
            for cover in [0.55, 0.7, 0.85, 1.0] {
                assert_eq!(pixel_label(&blend(*c, cover)), k as u8, "{name} at {cover}");
            }
            for cover in [0.0, 0.2, 0.4] {
                assert_eq!(pixel_label(&blend(*c, cover)), 255, "{name} at {cover}");
            }
        }
        // The case that made rims into objects: half blue, half white is
        // nearer pink than blue, but lies on blue's line to white.
        assert_eq!(pixel_label(&[147, 172, 237]), 4);
    }

    #[test]
    fn every_shape_reads_as_itself_at_the_smallest_size() {
        for shape in 0..SHAPES.len() {
            for (cx, cy) in [(0.3, 0.3), (0.52, 0.61), (0.77, 0.4)] {
                let scene = Scene {
                    objects: vec![Object {
                        color: shape % COLORS.len(),
                        shape,
                        cx,
                        cy,
                        r: 0.11,
                    }],
                    relation: None,
                };
                let found = detect(&render(&scene, 64, 4), 64);
                assert_eq!(
                    score(&scene, &found).exact,
                    1.0,
                    "{}: {found:?}",
                    scene.caption()
                );
            }
        }
    }

    #[test]
    fn the_relation_may_hold_with_either_of_two_alike_objects() {
        // "a pink cross below a purple square and a purple square": the
        // cross is below the smaller square, the larger one is beside it.
        let o = |color, shape, cx, cy, r| Object {
            color,
            shape,
            cx,
            cy,
            r,
        };
        let scene = Scene {
            objects: vec![
                o(6, 5, 0.3, 0.75, 0.14),
                o(5, 1, 0.3, 0.3, 0.12),
                o(5, 1, 0.75, 0.7, 0.17),
            ],
            relation: Some(1),
        };
        let found = detect(&render(&scene, 64, 4), 64);
        assert_eq!(score(&scene, &found).relation, Some(1.0), "{found:?}");
        // Without the square it is below, it does not hold.
        let mut two = scene.clone();
        two.objects.remove(1);
        let found = detect(&render(&two, 64, 4), 64);
        assert_eq!(score(&scene, &found).relation, Some(0.0), "{found:?}");
    }
}
