//! The emoji half of the demo dataset (../shared/docs/dataset.md §5, §7):
//! Twemoji SVGs (`@twemoji/svg` 15.0.0) rendered with resvg at 224 px centred
//! on a 256 canvas, captioned from Emojibase's CLDR labels and keywords
//! (`emojibase-data` 17.0.0, `en/data.json`).
//!
//! `build` renders everything once into a cache folder (straight-alpha RGBA
//! PNGs + `index.json`) and does nothing when the cache was made from the same
//! package versions by the same builder. `Emoji::load` reads the cache for
//! training: 64-px images (the 256 render 4×4 box-averaged on white, as for
//! the shapes) in memory, 256-px ones decoded on demand for the upsampler.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use engine::demo::shapes::{box_down, Rng, COLORS, SHAPES};
use engine::glide::tokenizer::GlideTokenizer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bump when the rendering or the selection changes: the cache is rebuilt.
pub const BUILDER_VERSION: u32 = 1;
pub const CANVAS: usize = 256;
pub const CONTENT: usize = 224;
/// Country/subdivision flags kept: the simplest by edge density (the survey
/// counts ~145 of 261 as plain stripes, crosses and discs).
pub const KEEP_COUNTRY_FLAGS: usize = 145;
/// Share of emoji samples that are flags (at most 5 %, per the survey).
pub const FLAG_SHARE: f32 = 0.05;
/// Probability of a single-skin-tone variant once a concept is drawn.
pub const TONE_SHARE: f32 = 0.3;
/// Slang or noise keywords never used in captions.
const TAG_STOPLIST: &[&str] = &["litaf", "bae", "lmao", "lol", "omg", "wtf", "smh", "tbh"];

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Entry {
    /// PNG in the cache folder (the Twemoji file stem).
    pub file: String,
    /// Cleaned CLDR labels; several when Twemoji shares one artwork.
    pub labels: Vec<String>,
    /// Filtered CLDR keywords (those of the base emoji for a tone variant).
    pub tags: Vec<String>,
    /// The base label without man/woman/person: samples are drawn per concept.
    pub concept: String,
    /// Index of the base entry when this is a skin-tone variant.
    pub base: Option<usize>,
    pub flag: bool,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Index {
    pub builder: u32,
    pub twemoji: String,
    pub emojibase: String,
    pub entries: Vec<Entry>,
}

/// Twemoji file stems and Emojibase hexcodes in one form: lower case, no
/// FE0F/FE0E presentation selectors, no leading zeros (`0031-FE0F-20E3` → `31-20e3`).
pub fn normalize_hex(hex: &str) -> String {
    hex.split('-')
        .map(|p| p.trim_start_matches('0').to_ascii_lowercase())
        .filter(|p| !p.is_empty() && p != "fe0f" && p != "fe0e")
        .collect::<Vec<_>>()
        .join("-")
}

/// `flag: Japan` → `flag of japan`, `keycap: 1` → `keycap 1`, `: ` → `, `,
/// curly quotes → straight; lower case (the captions of the shapes are too).
pub fn clean_label(label: &str) -> String {
    let l = label
        .replace(['\u{2018}', '\u{2019}'], "'")
        .replace(['\u{201c}', '\u{201d}'], "\"");
    let l = if let Some(rest) = l.strip_prefix("flag: ") {
        format!("flag of {rest}")
    } else if let Some(rest) = l.strip_prefix("keycap: ") {
        format!("keycap {rest}")
    } else {
        l
    };
    l.replace(": ", ", ").to_lowercase()
}

/// Keywords worth a caption: 3+ letters (hyphens allowed), not already a
/// word of the label, not slang.
pub fn filter_tags(tags: &[String], label: &str) -> Vec<String> {
    let words: Vec<&str> = label
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        let t = t.to_lowercase();
        if t.chars().count() >= 3
            && t.chars().all(|c| c.is_alphabetic() || c == '-')
            && !words.contains(&t.as_str())
            && !TAG_STOPLIST.contains(&t.as_str())
            && !out.contains(&t)
        {
            out.push(t);
        }
    }
    out
}

fn concept_of(label: &str) -> String {
    for p in ["man ", "woman ", "person ", "men ", "women ", "people "] {
        if let Some(rest) = label.strip_prefix(p) {
            return rest.to_string();
        }
    }
    label.to_string()
}

fn package_version(dir: &Path) -> Result<String> {
    let p = dir.join("package.json");
    let v: Value = serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
    )
    .with_context(|| format!("parsing {}", p.display()))?;
    v["version"]
        .as_str()
        .map(String::from)
        .with_context(|| format!("{}: no version", p.display()))
}

/// Renders one SVG: `CONTENT` px square (aspect kept) centred on a
/// transparent `CANVAS` canvas. Straight-alpha RGBA.
pub fn render_svg(svg: &[u8]) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let tree = usvg::Tree::from_data(svg, &usvg::Options::default())?;
    let size = tree.size();
    let scale = CONTENT as f32 / size.width().max(size.height());
    let (w, h) = (size.width() * scale, size.height() * scale);
    let (dx, dy) = ((CANVAS as f32 - w) / 2.0, (CANVAS as f32 - h) / 2.0);
    let mut pixmap = tiny_skia::Pixmap::new(CANVAS as u32, CANVAS as u32).context("pixmap")?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_row(scale, 0.0, 0.0, scale, dx, dy),
        &mut pixmap.as_mut(),
    );
    // tiny-skia stores premultiplied colour.
    Ok(pixmap
        .pixels()
        .iter()
        .flat_map(|p| {
            let c = p.demultiply();
            [c.red(), c.green(), c.blue(), c.alpha()]
        })
        .collect())
}

/// Straight-alpha RGBA composited on white, sRGB values (as the survey did;
/// the app and the CLI read user images the same way).
pub use engine::glide::pipeline::rgba8_on_white as on_white;

/// Fraction of neighbouring pixel pairs that differ strongly: flags with
/// emblems and coats of arms score high.
fn edge_density(rgb: &[u8], size: usize) -> f32 {
    let px = |x: usize, y: usize| &rgb[(y * size + x) * 3..(y * size + x) * 3 + 3];
    let diff = |a: &[u8], b: &[u8]| {
        a.iter()
            .zip(b)
            .map(|(&u, &v)| (u as i32 - v as i32).abs())
            .sum::<i32>()
    };
    let mut edges = 0;
    for y in 0..size - 1 {
        for x in 0..size - 1 {
            if diff(px(x, y), px(x + 1, y)) > 60 || diff(px(x, y), px(x, y + 1)) > 60 {
                edges += 1;
            }
        }
    }
    edges as f32 / ((size - 1) * (size - 1)) as f32
}

pub fn write_png(path: &Path, rgba: &[u8], size: usize) -> Result<()> {
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, size as u32, size as u32);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(rgba)?;
    std::fs::write(path, bytes)?;
    Ok(())
}

pub fn read_png(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    if info.width as usize != CANVAS
        || info.height as usize != CANVAS
        || info.color_type != png::ColorType::Rgba
    {
        bail!("expected a {CANVAS}×{CANVAS} RGBA PNG");
    }
    buf.truncate(info.buffer_size());
    Ok(buf)
}

/// What `build` did.
#[derive(Debug, PartialEq)]
pub enum Built {
    Cached,
    Rendered { entries: usize, skipped: usize },
}

/// Builds the cache in `out` from the installed packages (folders holding
/// their `package.json`). Writes into `out.tmp` and renames, so an
/// interrupted build leaves no half cache.
/// `keep_flags`: how many country/subdivision flags to keep (`KEEP_COUNTRY_FLAGS`).
pub fn build(
    twemoji: &Path,
    emojibase: &Path,
    out: &Path,
    force: bool,
    keep_flags: usize,
) -> Result<Built> {
    let (tv, ev) = (package_version(twemoji)?, package_version(emojibase)?);
    if !force {
        if let Ok(bytes) = std::fs::read(out.join("index.json")) {
            if let Ok(idx) = serde_json::from_slice::<Index>(&bytes) {
                if idx.builder == BUILDER_VERSION && idx.twemoji == tv && idx.emojibase == ev {
                    return Ok(Built::Cached);
                }
            }
        }
    }
    let read_json = |p: PathBuf| -> Result<Value> {
        serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))
    };
    let data = read_json(emojibase.join("en/data.json"))?;
    let messages = read_json(emojibase.join("en/messages.json"))?;
    let order_of = |list: &str, key: &str| -> Option<u64> {
        messages[list]
            .as_array()?
            .iter()
            .find(|g| g["key"] == key)?["order"]
            .as_u64()
    };
    let component = order_of("groups", "component");
    let flags = order_of("groups", "flags").context("messages.json has no flags group")?;
    let country = [
        order_of("subgroups", "country-flag"),
        order_of("subgroups", "subdivision-flag"),
    ];
    let svgs: HashMap<String, PathBuf> = std::fs::read_dir(twemoji)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            let stem = p.file_stem()?.to_str()?.to_string();
            (p.extension()? == "svg").then(|| (normalize_hex(&stem), p))
        })
        .collect();

    struct Candidate {
        svg: PathBuf,
        entry: Entry,
        country_flag: bool,
    }
    let mut cands: Vec<Candidate> = Vec::new();
    let mut skipped = 0;
    for e in data.as_array().context("data.json is not a list")? {
        let Some(group) = e["group"].as_u64() else {
            continue; // regional indicators: letters, not pictures
        };
        if Some(group) == component {
            continue; // skin-tone swatches and hair parts
        }
        let label = clean_label(e["label"].as_str().unwrap_or_default());
        let raw_tags: Vec<String> = e["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let tags = filter_tags(&raw_tags, &label);
        let Some(svg) = e["hexcode"]
            .as_str()
            .and_then(|h| svgs.get(&normalize_hex(h)))
        else {
            skipped += 1; // newer than Twemoji 15
            continue;
        };
        let is_flag = group == flags;
        let base = cands.len();
        cands.push(Candidate {
            svg: svg.clone(),
            entry: Entry {
                file: String::new(),
                labels: vec![label.clone()],
                tags: tags.clone(),
                concept: concept_of(&label),
                base: None,
                flag: is_flag,
            },
            country_flag: is_flag && country.contains(&e["subgroup"].as_u64()),
        });
        // Single-tone variants only: the mixed-tone couples and families are dropped.
        for s in e["skins"].as_array().into_iter().flatten() {
            if !s["tone"].is_u64() {
                skipped += 1;
                continue;
            }
            let Some(svg) = s["hexcode"]
                .as_str()
                .and_then(|h| svgs.get(&normalize_hex(h)))
            else {
                skipped += 1;
                continue;
            };
            let l = clean_label(s["label"].as_str().unwrap_or_default());
            cands.push(Candidate {
                svg: svg.clone(),
                entry: Entry {
                    file: String::new(),
                    labels: vec![l],
                    tags: tags.clone(),
                    concept: concept_of(&label),
                    base: Some(base),
                    flag: false,
                },
                country_flag: false,
            });
        }
    }
    if cands.is_empty() {
        bail!(
            "no Emojibase entry matched a Twemoji file in {}",
            twemoji.display()
        );
    }

    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // Render; drop exact duplicates (same 64-px pixels), merging their labels.
    let mut first_with: HashMap<Vec<u8>, usize> = HashMap::new();
    // Each kept entry, with its edge density when it is a country/subdivision flag.
    let mut kept: Vec<(Entry, Option<f32>)> = Vec::new();
    let mut new_index: Vec<Option<usize>> = Vec::with_capacity(cands.len());
    for (i, c) in cands.iter().enumerate() {
        if i % 500 == 0 {
            eprintln!("rendering {i}/{}", cands.len());
        }
        let svg = std::fs::read(&c.svg)?;
        let rgba = render_svg(&svg).with_context(|| format!("rendering {}", c.svg.display()))?;
        let small = box_down(&on_white(&rgba), CANVAS, CANVAS / 64);
        if let Some(&k) = first_with.get(&small) {
            for l in &c.entry.labels {
                if !kept[k].0.labels.contains(l) {
                    kept[k].0.labels.push(l.clone());
                }
            }
            new_index.push(Some(k));
            continue;
        }
        let mut entry = c.entry.clone();
        entry.file = format!(
            "{}.png",
            c.svg.file_stem().unwrap_or_default().to_string_lossy()
        );
        entry.base = entry.base.and_then(|b| new_index[b]);
        write_png(&tmp.join(&entry.file), &rgba, CANVAS)?;
        first_with.insert(small.clone(), kept.len());
        new_index.push(Some(kept.len()));
        let density = c.country_flag.then(|| edge_density(&small, 64));
        kept.push((entry, density));
    }
    // Keep the simplest country and subdivision flags.
    let mut densities: Vec<f32> = kept.iter().filter_map(|k| k.1).collect();
    densities.sort_by(f32::total_cmp);
    let limit = densities
        .get(keep_flags.min(densities.len()).wrapping_sub(1))
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    let mut remap = vec![None; kept.len()];
    let mut entries = Vec::new();
    for (i, (entry, density)) in kept.into_iter().enumerate() {
        if density.is_some_and(|d| d > limit) {
            std::fs::remove_file(tmp.join(&entry.file))?;
            skipped += 1;
            continue;
        }
        remap[i] = Some(entries.len());
        entries.push(entry);
    }
    for e in &mut entries {
        // A variant whose base was dropped stands on its own.
        e.base = e.base.and_then(|b| remap[b]);
    }
    let n = entries.len();
    let index = Index {
        builder: BUILDER_VERSION,
        twemoji: tv,
        emojibase: ev,
        entries,
    };
    std::fs::write(tmp.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&tmp, out)
        .with_context(|| format!("moving {} to {}", tmp.display(), out.display()))?;
    Ok(Built::Rendered {
        entries: n,
        skipped,
    })
}

/// Whether an emoji label names a colour and a shape of the shapes scenes
/// ("green circle", "large blue diamond", "red triangle pointed up").
/// Twemoji draws those filling the frame, which would teach "a green circle"
/// two ways, and some are the evaluation's held-out pairs ("green circle",
/// "yellow square"), which must stay unseen: they are never sampled.
pub fn names_a_scene_object(label: &str) -> bool {
    let words: Vec<&str> = label.split(|c: char| !c.is_ascii_alphabetic()).collect();
    let colour = COLORS.iter().any(|(c, _)| words.contains(c));
    colour && SHAPES.iter().any(|s| words.contains(s))
}

/// The cache loaded for training.
pub struct Emoji {
    pub entries: Vec<Entry>,
    /// RGB 64×64 on white, one per entry.
    pub small: Vec<Vec<u8>>,
    png: Vec<Vec<u8>>,
    /// Concept → its base (non-flag) entries.
    concepts: Vec<Vec<usize>>,
    /// Base entry → its tone variants.
    variants: HashMap<usize, Vec<usize>>,
    flags: Vec<usize>,
    /// Entries never sampled (`names_a_scene_object`).
    pub left_out: usize,
}

impl Emoji {
    pub fn load(dir: &Path) -> Result<Emoji> {
        let p = dir.join("index.json");
        let index: Index = serde_json::from_slice(&std::fs::read(&p).with_context(|| {
            format!(
                "reading {} (build it with scripts/build-emoji.sh)",
                p.display()
            )
        })?)
        .with_context(|| format!("parsing {}", p.display()))?;
        let mut small = Vec::new();
        let mut png = Vec::new();
        for e in &index.entries {
            let bytes = std::fs::read(dir.join(&e.file))?;
            let rgba = read_png(&bytes).with_context(|| e.file.clone())?;
            small.push(box_down(&on_white(&rgba), CANVAS, CANVAS / 64));
            png.push(bytes);
        }
        let mut by_concept: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut variants: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut flags = Vec::new();
        let mut left_out = 0;
        for (i, e) in index.entries.iter().enumerate() {
            if e.labels.iter().any(|l| names_a_scene_object(l)) {
                left_out += 1;
                continue;
            }
            match (e.flag, e.base) {
                (true, _) => flags.push(i),
                (false, Some(b)) => variants.entry(b).or_default().push(i),
                (false, None) => by_concept.entry(&e.concept).or_default().push(i),
            }
        }
        let mut concepts: Vec<Vec<usize>> = by_concept.into_values().collect();
        concepts.sort(); // HashMap order is random: keep sampling reproducible
        if concepts.is_empty() {
            bail!("{}: no entries", dir.display());
        }
        Ok(Emoji {
            entries: index.entries,
            small,
            png,
            concepts,
            variants,
            flags,
            left_out,
        })
    }

    /// Samples only the named concepts (`--emoji-concepts`): a few hundred
    /// training steps per session show each of 1 464 concepts about twice,
    /// too few to learn any; a short list is seen often enough to be
    /// learnt. Flags stay only if named. A name no concept has is an error
    /// (a typo would silently shrink the list).
    pub fn keep_concepts(&mut self, names: &[String]) -> Result<()> {
        let concept = |i: usize| self.entries[i].concept.as_str();
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| {
                !self.concepts.iter().any(|f| concept(f[0]) == n.as_str())
                    && !self.flags.iter().any(|&i| concept(i) == n.as_str())
            })
            .collect();
        if !unknown.is_empty() {
            bail!("emoji concepts not in the cache: {unknown:?}");
        }
        let named = |i: usize| names.iter().any(|n| n == concept(i));
        let concepts: Vec<Vec<usize>> = self
            .concepts
            .iter()
            .filter(|f| named(f[0]))
            .cloned()
            .collect();
        let flags: Vec<usize> = self.flags.iter().copied().filter(|&i| named(i)).collect();
        if concepts.is_empty() {
            bail!("--emoji-concepts names only flags: at least one other concept is needed");
        }
        (self.concepts, self.flags) = (concepts, flags);
        Ok(())
    }

    /// How many concepts (flags included) `sample` draws from.
    pub fn concept_count(&self) -> usize {
        self.concepts.len() + self.flags.len()
    }

    /// An entry by concept: flags at `FLAG_SHARE`, otherwise a uniform
    /// concept, one of its forms, and a tone variant at `TONE_SHARE`.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        if !self.flags.is_empty() && rng.f32() < FLAG_SHARE {
            return self.flags[rng.below(self.flags.len())];
        }
        let forms = &self.concepts[rng.below(self.concepts.len())];
        let base = forms[rng.below(forms.len())];
        match self.variants.get(&base) {
            Some(v) if rng.f32() < TONE_SHARE => v[rng.below(v.len())],
            _ => base,
        }
    }

    /// Every token id `caption` can give a sampled entry: each label with
    /// and without "emoji of ", each keyword after ", " (GPT-2's BPE splits
    /// words before merging, so these cover every word's position).
    pub fn caption_tokens(&self, tok: &GlideTokenizer) -> BTreeSet<u32> {
        let mut used = BTreeSet::new();
        let sampled = self
            .entries
            .iter()
            .filter(|e| !e.labels.iter().any(|l| names_a_scene_object(l)));
        for e in sampled {
            for l in &e.labels {
                used.extend(tok.encode(&format!("emoji of {l}")));
                used.extend(tok.encode(l));
                for t in &e.tags {
                    used.extend(tok.encode(&format!("{l}, {t}")));
                }
            }
        }
        used
    }

    /// The survey's caption scheme: a label, "emoji of " at p=0.75, and
    /// 1–3 keywords at p=0.5 (no articles: CLDR labels are not all nouns).
    pub fn caption(&self, i: usize, rng: &mut Rng) -> String {
        let e = &self.entries[i];
        let mut c = e.labels[rng.below(e.labels.len())].clone();
        if rng.f32() < 0.75 {
            c = format!("emoji of {c}");
        }
        if !e.tags.is_empty() && rng.f32() < 0.5 {
            let mut tags = e.tags.clone();
            for _ in 0..1 + rng.below(3.min(tags.len())) {
                let t = tags.swap_remove(rng.below(tags.len()));
                c.push_str(", ");
                c.push_str(&t);
            }
        }
        c
    }

    /// The entry a caption of `caption`'s scheme names: the label before any
    /// ", keyword", with or without "emoji of ".
    pub fn named(&self, caption: &str) -> Option<usize> {
        let c = caption.trim();
        let c = c.strip_prefix("emoji of ").unwrap_or(c);
        let label = c.split(", ").next()?;
        // Tone variants are labelled "<label>, <tone>": try the whole text first.
        [c, label].into_iter().find_map(|l| {
            self.entries
                .iter()
                .position(|e| e.labels.iter().any(|x| x == l))
        })
    }

    /// The 256-px image on white (upsampler targets).
    pub fn large(&self, i: usize) -> Result<Vec<u8>> {
        Ok(on_white(&read_png(&self.png[i])?))
    }

    /// The 256-px alpha (object masks).
    pub fn alpha(&self, i: usize) -> Result<Vec<u8>> {
        Ok(read_png(&self.png[i])?
            .chunks_exact(4)
            .map(|p| p[3])
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hexcodes_and_labels_are_normalised() {
        assert_eq!(normalize_hex("0031-FE0F-20E3"), "31-20e3");
        assert_eq!(
            normalize_hex("1F9CD-1F3FF-200D-2642-FE0F"),
            "1f9cd-1f3ff-200d-2642"
        );
        assert_eq!(clean_label("flag: Japan"), "flag of japan");
        assert_eq!(clean_label("keycap: 1"), "keycap 1");
        assert_eq!(
            clean_label("man standing: dark skin tone"),
            "man standing, dark skin tone"
        );
        assert_eq!(clean_label("man\u{2019}s shoe"), "man's shoe");
        let tags: Vec<String> = [
            "af", "burn", "flame", "litaf", "fire", "let's", "4", "hot", "hot",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(filter_tags(&tags, "fire"), ["burn", "flame", "hot"]);
        assert_eq!(concept_of("woman dancing"), "dancing");
    }

    /// A miniature of the two packages: a face, a hand with a single-tone
    /// and a mixed-tone variant, a keycap, three flags (Spain and Ceuta
    /// share artwork; a busy chequer), a Twemoji extra without metadata, an
    /// Emojibase entry Twemoji lacks, a regional indicator.
    fn fake_packages(root: &Path) -> (PathBuf, PathBuf) {
        let tw = root.join("twemoji");
        let eb = root.join("emojibase");
        std::fs::create_dir_all(&tw).unwrap();
        std::fs::create_dir_all(eb.join("en")).unwrap();
        std::fs::write(tw.join("package.json"), r#"{"version":"15.0.0"}"#).unwrap();
        std::fs::write(eb.join("package.json"), r#"{"version":"17.0.0"}"#).unwrap();
        let svg = |body: &str| {
            format!(r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 36 36">{body}</svg>"#)
        };
        let files = [
            (
                "1f600",
                svg(r##"<circle cx="18" cy="18" r="18" fill="#FFCC4D"/>"##),
            ),
            (
                "1f44b",
                svg(r##"<rect x="8" y="4" width="20" height="28" fill="#FFDC5D"/>"##),
            ),
            (
                "1f44b-1f3fb",
                svg(r##"<rect x="8" y="4" width="20" height="28" fill="#F7DECE"/>"##),
            ),
            (
                "1f44b-1f3fb-200d-1f44b-1f3ff",
                svg(r##"<rect width="36" height="36" fill="#000"/>"##),
            ),
            (
                "31-20e3",
                svg(r##"<rect width="36" height="36" fill="#3B88C3"/>"##),
            ),
            (
                "1f1ea-1f1f8",
                svg(
                    r##"<rect y="5" width="36" height="26" fill="#C60A1D"/><rect y="12" width="36" height="12" fill="#FFC400"/>"##,
                ),
            ),
            (
                "1f1ea-1f1e6",
                svg(
                    r##"<rect y="5" width="36" height="26" fill="#C60A1D"/><rect y="12" width="36" height="12" fill="#FFC400"/>"##,
                ),
            ),
            (
                "1f1ef-1f1f5",
                (0..36)
                    .step_by(4)
                    .flat_map(|x| (0..36).step_by(4).map(move |y| (x, y)))
                    .filter(|(x, y)| (x + y) % 8 == 0)
                    .map(|(x, y)| {
                        format!(r##"<rect x="{x}" y="{y}" width="4" height="4" fill="#000"/>"##)
                    })
                    .collect::<String>(),
            ),
            (
                "e50a",
                svg(r##"<rect width="36" height="36" fill="#f0f"/>"##),
            ),
            (
                "1f7e2",
                svg(r##"<circle cx="18" cy="18" r="18" fill="#78B159"/>"##),
            ),
        ];
        for (name, body) in files {
            let body = if body.starts_with("<svg") {
                body
            } else {
                svg(&body)
            };
            std::fs::write(tw.join(format!("{name}.svg")), body).unwrap();
        }
        let data = serde_json::json!([
            {"label": "regional indicator A", "hexcode": "1F1E6"},
            {"label": "grinning face", "hexcode": "1F600", "group": 0, "subgroup": 1,
             "tags": ["face", "grin", "lol", "happy"]},
            {"label": "waving hand", "hexcode": "1F44B", "group": 1, "subgroup": 16,
             "tags": ["hand", "wave", "hello"],
             "skins": [
                {"label": "waving hand: light skin tone", "hexcode": "1F44B-1F3FB", "tone": 1},
                {"label": "waving hands: light skin tone, dark skin tone",
                 "hexcode": "1F44B-1F3FB-200D-1F44B-1F3FF", "tone": [1, 5]}]},
            {"label": "keycap: 1", "hexcode": "0031-FE0F-20E3", "group": 8, "subgroup": 90,
             "tags": ["1", "keycap", "one"]},
            {"label": "flag: Spain", "hexcode": "1F1EA-1F1F8", "group": 9, "subgroup": 98, "tags": ["flag"]},
            {"label": "flag: Ceuta & Melilla", "hexcode": "1F1EA-1F1E6", "group": 9, "subgroup": 98, "tags": ["flag"]},
            {"label": "flag: Japan", "hexcode": "1F1EF-1F1F5", "group": 9, "subgroup": 98, "tags": ["flag"]},
            {"label": "phoenix", "hexcode": "1F426-200D-1F525", "group": 3, "subgroup": 40, "tags": ["fire"]},
            {"label": "green circle", "hexcode": "1F7E2", "group": 8, "subgroup": 93, "tags": []}
        ]);
        let messages = serde_json::json!({
            "groups": [{"key": "component", "order": 2}, {"key": "flags", "order": 9}],
            "subgroups": [{"key": "country-flag", "order": 98}, {"key": "subdivision-flag", "order": 99}]
        });
        std::fs::write(eb.join("en/data.json"), data.to_string()).unwrap();
        std::fs::write(eb.join("en/messages.json"), messages.to_string()).unwrap();
        (tw, eb)
    }

    #[test]
    fn labels_naming_a_scene_object_are_recognised() {
        for label in [
            "green circle",
            "yellow square",
            "large blue diamond",
            "red triangle pointed up",
            "black medium-small square",
            "hollow red circle",
        ] {
            assert!(names_a_scene_object(label), "{label}");
        }
        for label in [
            "white circle",
            "brown square",
            "star",
            "red apple",
            "crossed fingers, dark skin tone",
            "star-struck",
            "flag of switzerland",
        ] {
            assert!(!names_a_scene_object(label), "{label}");
        }
        // Every held-out pair of the evaluation, as an emoji would name it.
        for &(c, s) in &engine::demo::shapes::HELD_OUT {
            assert!(names_a_scene_object(&format!(
                "{} {}",
                COLORS[c].0, SHAPES[s]
            )));
        }
    }

    #[test]
    fn builds_a_cache_that_trains() {
        let root = std::env::temp_dir().join(format!("webglide-emoji-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (tw, eb) = fake_packages(&root);
        let out = root.join("cache");
        // One country flag kept: the busy chequer goes, Spain (= Ceuta) stays.
        let built = build(&tw, &eb, &out, false, 1).unwrap();
        assert_eq!(
            built,
            Built::Rendered {
                entries: 6,
                skipped: 3
            }
        );
        assert!(!out.with_extension("tmp").exists());
        assert_eq!(build(&tw, &eb, &out, false, 1).unwrap(), Built::Cached);

        let emoji = Emoji::load(&out).unwrap();
        let by_file = |f: &str| emoji.entries.iter().position(|e| e.file == f).unwrap();
        let spain = &emoji.entries[by_file("1f1ea-1f1f8.png")];
        assert_eq!(spain.labels, ["flag of spain", "flag of ceuta & melilla"]);
        assert!(spain.flag);
        let keycap = &emoji.entries[by_file("31-20e3.png")];
        assert_eq!(
            (keycap.labels[0].as_str(), keycap.tags.clone()),
            ("keycap 1", vec!["one".to_string()])
        );
        let tone = &emoji.entries[by_file("1f44b-1f3fb.png")];
        assert_eq!(tone.labels, ["waving hand, light skin tone"]);
        assert_eq!(tone.base, Some(by_file("1f44b.png")));
        assert_eq!(emoji.entries[by_file("1f600.png")].tags, ["grin", "happy"]);

        // Captions name their entry.
        assert_eq!(
            emoji.named("emoji of grinning face, grin"),
            Some(by_file("1f600.png"))
        );
        assert_eq!(
            emoji.named("flag of ceuta & melilla"),
            Some(by_file("1f1ea-1f1f8.png"))
        );
        assert_eq!(
            emoji.named("waving hand, light skin tone"),
            Some(by_file("1f44b-1f3fb.png"))
        );
        assert_eq!(
            emoji.named("emoji of waving hand, hello"),
            Some(by_file("1f44b.png"))
        );
        assert_eq!(emoji.named("a red circle above a blue square"), None);

        // 224-px content centred on 256: the face's disc touches x = 16 and 239.
        let face = by_file("1f600.png");
        let alpha = emoji.alpha(face).unwrap();
        assert_eq!(alpha[128 * 256 + 8], 0);
        assert_eq!(alpha[128 * 256 + 128], 255);
        assert!(alpha[128 * 256 + 17] > 200 && alpha[128 * 256 + 14] == 0);
        let large = emoji.large(face).unwrap();
        assert_eq!(&large[..3], &[255, 255, 255]);
        assert_eq!(&large[(128 * 256 + 128) * 3..][..3], &[0xff, 0xcc, 0x4d]);
        assert_eq!(emoji.small[face], box_down(&large, 256, 4));

        // Sampling reaches every kind of entry; captions follow the scheme
        // and hold only tokens of `caption_tokens` (kept by checkpoints).
        let tok = crate::train::tokenizer().unwrap();
        let used = emoji.caption_tokens(&tok);
        let mut rng = Rng(7);
        let mut seen = vec![0; emoji.entries.len()];
        for _ in 0..4000 {
            let i = emoji.sample(&mut rng);
            seen[i] += 1;
            let c = emoji.caption(i, &mut rng);
            assert!(tok.encode(&c).iter().all(|t| used.contains(t)), "{c}");
            let label = emoji.entries[i]
                .labels
                .iter()
                .find(|l| c.contains(l.as_str()));
            assert!(label.is_some(), "{c}");
            let rest = c
                .trim_start_matches("emoji of ")
                .trim_start_matches(label.unwrap().as_str());
            for t in rest.split(", ").skip(1) {
                assert!(emoji.entries[i].tags.iter().any(|x| x == t), "{c}");
            }
        }
        // Every entry but the one naming a shapes scene's object (and a
        // held-out pair of the evaluation) is drawn.
        let green_circle = by_file("1f7e2.png");
        assert_eq!(emoji.left_out, 1);
        assert_eq!(seen[green_circle], 0);
        assert!(
            seen.iter()
                .enumerate()
                .all(|(i, &n)| n > 0 || i == green_circle),
            "{seen:?}"
        );
        let flags = seen[by_file("1f1ea-1f1f8.png")] as f32 / 4000.0;
        assert!((flags - FLAG_SHARE).abs() < 0.02, "{flags}");

        // A concept list narrows sampling to its concepts (and their tone
        // variants); an unknown name is an error that names it.
        let mut waving = Emoji::load(&out).unwrap();
        waving.keep_concepts(&["waving hand".into()]).unwrap();
        assert_eq!(waving.concept_count(), 1);
        let mut drawn = std::collections::BTreeSet::new();
        for _ in 0..200 {
            drawn.insert(waving.entries[waving.sample(&mut rng)].file.clone());
        }
        assert_eq!(
            drawn.into_iter().collect::<Vec<_>>(),
            ["1f44b-1f3fb.png", "1f44b.png"]
        );
        let err = waving
            .keep_concepts(&["waving hand".into(), "wavinghand".into()])
            .unwrap_err();
        assert!(err.to_string().contains("\"wavinghand\""), "{err}");

        // A damaged cache is an error, not a panic.
        std::fs::write(out.join("1f600.png"), b"\x89PNG trunc").unwrap();
        assert!(Emoji::load(&out).is_err());
        std::fs::remove_file(eb.join("en/data.json")).unwrap();
        let err = build(&tw, &eb, &root.join("other"), false, 1).unwrap_err();
        assert!(format!("{err:#}").contains("data.json"), "{err:#}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn batches_mix_emoji_and_shapes() {
        use crate::train::{demo_config, make_batch, tokenizer, Data};
        let root = std::env::temp_dir().join(format!("webglide-emoji-mix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (tw, eb) = fake_packages(&root);
        build(&tw, &eb, &root.join("cache"), false, KEEP_COUNTRY_FLAGS).unwrap();
        let data = Data {
            emoji: Some(Emoji::load(&root.join("cache")).unwrap()),
            shapes_share: 0.5,
            ..Data::shapes()
        };
        let labels: Vec<String> = data
            .emoji
            .as_ref()
            .unwrap()
            .entries
            .iter()
            .flat_map(|e| e.labels.clone())
            .collect();
        let tok = tokenizer().unwrap();
        let mut rng = Rng(11);
        for kind in ["base", "upsample", "base-inpaint"] {
            let cfg = demo_config(kind).unwrap();
            let s = cfg.image_size;
            let b = make_batch(&cfg, &tok, &data, &mut rng, 24, 0.0).unwrap();
            assert_eq!(b.x0.len(), 24 * 3 * s * s);
            let emoji = b
                .captions
                .iter()
                .filter(|c| labels.iter().any(|l| c.contains(l.as_str())))
                .count();
            let shapes = b
                .captions
                .iter()
                .filter(|c| c.starts_with("a ") || c.starts_with("an "))
                .count();
            assert_eq!(emoji + shapes, 24, "{:?}", b.captions);
            assert!(emoji > 4 && shapes > 4, "{:?}", b.captions);
            if cfg.super_res {
                // The low-res input is the target 4×4 box-averaged.
                let n = s * s;
                let first = &b.x0[..3 * n];
                let lo = b.low_res[(s / 4) * 8 + 8];
                let hi: f32 = (0..4)
                    .flat_map(|y| (0..4).map(move |x| (32 + y) * s + 32 + x))
                    .map(|i| first[i])
                    .sum::<f32>()
                    / 16.0;
                assert!((lo - hi).abs() < 0.02, "{lo} {hi}");
            }
            if cfg.inpaint {
                assert_eq!(b.keep.len(), 24 * s * s);
                // Some masks are whole objects (here the round face): not rectangles.
                let mut keep = b.keep.clone();
                for _ in 0..8 {
                    keep.extend(
                        make_batch(&cfg, &tok, &data, &mut rng, 24, 0.0)
                            .unwrap()
                            .keep,
                    );
                }
                let not_rect = keep.chunks(s * s).any(|m| {
                    let holes: Vec<usize> = (0..s * s).filter(|&i| m[i] == 0.0).collect();
                    let (xs, ys) = (holes.iter().map(|i| i % s), holes.iter().map(|i| i / s));
                    let w = xs.clone().max().unwrap() - xs.min().unwrap() + 1;
                    let h = ys.clone().max().unwrap() - ys.min().unwrap() + 1;
                    holes.len() < w * h
                });
                assert!(not_rect);
            }
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
