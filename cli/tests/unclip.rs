//! unCLIP in the CLI on models converted from the tiny official fixtures
//! (random weights: the images are noise, but every stage of Karlo's
//! procedures runs): `convert` of every kind (the decoder from its official
//! `.ckpt`), `generate --pipeline unclip` and `variations` — PNG size and
//! text chunks, same seed → same image, guidance changes the image — and
//! the errors of missing or mismatched folders.

mod common;
use common::{read_png, refuses, webglide};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/unclip");

fn ok(args: &[&str]) -> String {
    let r = webglide(args);
    assert!(
        r.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

fn err(args: &[&str]) -> String {
    let r = webglide(args);
    assert!(!r.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&r.stderr).into_owned()
}

/// The five folders of an unCLIP set (SR at the fixture's 64 px).
fn models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("webglide-unclip-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (src, kind, case, extra) in [
            (
                "clip_text/weights.safetensors",
                "clip-text",
                "clip_text",
                vec![],
            ),
            (
                "clip_text/weights.safetensors",
                "clip-visual",
                "clip_text",
                vec![],
            ),
            (
                "prior/weights.safetensors",
                "prior",
                "prior",
                vec!["--stats", "prior/clip_stats.safetensors", "--quant", "f16"],
            ),
            (
                "decoder/checkpoint.ckpt",
                "decoder",
                "decoder",
                vec!["--quant", "q8"],
            ),
            (
                "sr/weights.safetensors",
                "sr",
                "sr",
                vec!["--sr-size", "64"],
            ),
        ] {
            let out = dir.join(kind);
            let src = format!("{FIX}/{src}");
            let config = format!("{FIX}/{case}/config.json");
            let extra: Vec<String> = extra
                .iter()
                .map(|a| {
                    if a.ends_with(".safetensors") {
                        format!("{FIX}/{a}")
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let mut args = vec!["convert", &src, "--kind", kind, "--config", &config];
            args.extend(extra.iter().map(String::as_str));
            args.extend(["--out", out.to_str().unwrap()]);
            ok(&args);
        }
        dir
    })
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("webglide-unclip-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A short run: 5 prior steps, 2 decoder steps, 2 SR steps (the first-steps
/// model once, then the last-step model: both SR networks run). lavapipe
/// computes ~2 GFLOP/s, so every step counts in the suite's time.
const SHORT: [&str; 6] = [
    "--prior-steps",
    "5",
    "--decoder-steps",
    "2",
    "--sr-steps",
    "2",
];

fn generate(out: &Path, extra: &[&str]) -> (u32, u32, Vec<u8>, Vec<(String, String)>) {
    let m = models().to_str().unwrap();
    let mut args = vec!["generate", "--pipeline", "unclip", "--model", m];
    args.extend([
        "--prompt",
        "a photo of a red cube",
        "--out",
        out.to_str().unwrap(),
    ]);
    args.extend(SHORT);
    args.extend_from_slice(extra);
    ok(&args);
    read_png(out)
}

#[test]
fn generate_unclip_writes_deterministic_pngs_with_parameters() {
    let dir = tempdir("gen");
    let (w, h, a, text) = generate(&dir.join("a.png"), &["--seed", "5"]);
    assert_eq!((w, h), (64, 64), "decoder 32 px -> SR 64 px");
    for (k, v) in [
        ("webglide:pipeline", "unclip"),
        ("webglide:prompt", "a photo of a red cube"),
        ("webglide:prior_guidance", "4"),
        ("webglide:decoder_guidance", "8"),
        ("webglide:decoder_steps", "2"),
        ("webglide:seed", "5"),
    ] {
        assert!(
            text.iter().any(|(tk, tv)| tk == k && tv == v),
            "{k}={v} in {text:?}"
        );
    }
    let (_, _, c, _) = generate(
        &dir.join("c.png"),
        &["--seed", "5", "--decoder-guidance", "2"],
    );
    assert_ne!(a, c, "decoder guidance changes the image");
    let (_, _, d, _) = generate(
        &dir.join("d.png"),
        &["--seed", "5", "--prior-guidance", "1"],
    );
    assert_ne!(a, d, "prior guidance changes the image");
    // A batch: image 1 is the single run's image (same seed in another
    // process, same noise rows: the run is reproducible), image 2 differs.
    let m = models().to_str().unwrap();
    let e = dir.join("e.png");
    let args = ["generate", "--pipeline", "unclip", "--model", m, "--prompt"];
    let more = ["--seed", "5", "--batch", "2", "--out", e.to_str().unwrap()];
    ok(&[&args[..], &["a photo of a red cube"], &SHORT[..], &more[..]].concat());
    let (_, _, e1, _) = read_png(&dir.join("e-1.png"));
    let (_, _, e2, _) = read_png(&dir.join("e-2.png"));
    assert_eq!(a, e1);
    assert_ne!(e1, e2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn variations_of_an_image() {
    let dir = tempdir("var");
    // A 50×30 RGBA source (any size: squashed to the visual tower's 32 px).
    let src = dir.join("src.png");
    let pixels: Vec<u8> = (0..50 * 30)
        .flat_map(|i| [(i % 50 * 5) as u8, (i / 50 * 8) as u8, 128, 255])
        .collect();
    let f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
    let mut enc = png::Encoder::new(f, 50, 30);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .unwrap()
        .write_image_data(&pixels)
        .unwrap();
    let m = models().to_str().unwrap();
    let out = dir.join("v.png");
    let args = [
        "variations",
        "--image",
        src.to_str().unwrap(),
        "--n",
        "2",
        "--model",
        m,
    ];
    let stdout = ok(&[
        &args[..],
        &[
            "--decoder-steps",
            "2",
            "--sr-steps",
            "2",
            "--seed",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
    ]
    .concat());
    assert!(
        stdout.contains("v-1.png") && stdout.contains("v-2.png"),
        "{stdout}"
    );
    let (w, h, v1, text) = read_png(&dir.join("v-1.png"));
    let (_, _, v2, _) = read_png(&dir.join("v-2.png"));
    assert_eq!((w, h), (64, 64));
    assert_ne!(v1, v2, "each variation has its own noise");
    assert!(text
        .iter()
        .any(|(k, v)| k == "webglide:mode" && v == "variations"));
    assert!(
        !text.iter().any(|(k, _)| k.starts_with("webglide:prior")),
        "{text:?}"
    );
    // Another image gives other variations with the same seed.
    let src2 = dir.join("src2.png");
    let f = std::io::BufWriter::new(std::fs::File::create(&src2).unwrap());
    let mut enc = png::Encoder::new(f, 50, 30);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let flipped: Vec<u8> = pixels.chunks(4).rev().flatten().copied().collect();
    enc.write_header()
        .unwrap()
        .write_image_data(&flipped)
        .unwrap();
    let out2 = dir.join("w.png");
    ok(&[
        &[
            "variations",
            "--image",
            src2.to_str().unwrap(),
            "--n",
            "2",
            "--model",
            m,
        ],
        &[
            "--decoder-steps",
            "2",
            "--sr-steps",
            "2",
            "--seed",
            "2",
            "--out",
            out2.to_str().unwrap(),
        ][..],
    ]
    .concat());
    let (_, _, w1, _) = read_png(&dir.join("w-1.png"));
    assert_ne!(v1, w1, "the image conditions the decoder");
    // Not an image: a clear error, no output.
    let bad = dir.join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let e = err(&[
        "variations",
        "--image",
        bad.to_str().unwrap(),
        "--model",
        m,
        "--out",
        dir.join("x.png").to_str().unwrap(),
    ]);
    assert!(e.contains("not a readable"), "{e}");
    assert!(!dir.join("x-1.png").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn over_limit_batches_and_images_fail_clearly_and_leave_no_file() {
    let dir = tempdir("limits");
    let inputs = tempdir("limits-in");
    let m = models().to_str().unwrap();
    let out = dir.join("o.png");
    let out = out.to_str().unwrap();
    let wide = inputs.join("wide.png");
    image::RgbImage::new(1, 8193).save(&wide).unwrap();
    let ok = inputs.join("ok.png");
    image::RgbImage::new(40, 30).save(&ok).unwrap();
    let (wide, ok) = (wide.to_str().unwrap(), ok.to_str().unwrap());
    for batch in ["0", "17", "1000000000000000"] {
        let expect = format!("batch size {batch} (1..=16)");
        let args = [
            "generate",
            "--pipeline",
            "unclip",
            "--prompt",
            "x",
            "--batch",
            batch,
        ];
        refuses(
            &[&args[..], &["--model", m, "--out", out]].concat(),
            &expect,
            &dir,
        );
        let args = [
            "variations",
            "--image",
            ok,
            "--n",
            batch,
            "--model",
            m,
            "--out",
            out,
        ];
        refuses(&args, &expect, &dir);
    }
    let args = ["variations", "--image", wide, "--model", m, "--out", out];
    refuses(
        &args,
        "the image is too large (at most 8192 px a side",
        &dir,
    );
    let prompt = "a".repeat(2049);
    let args = ["generate", "--pipeline", "unclip", "--prompt", &prompt];
    refuses(
        &[&args[..], &["--model", m, "--out", out]].concat(),
        "a prompt of 2049 bytes",
        &dir,
    );
}

#[test]
fn missing_or_mismatched_folders_are_clear_errors() {
    let dir = tempdir("err");
    let m = models();
    // A set without the prior.
    let partial = dir.join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    for kind in ["clip-text", "decoder", "sr"] {
        let to = partial.join(kind);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(m.join(kind)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    let out = dir.join("o.png");
    let args = [
        "generate",
        "--pipeline",
        "unclip",
        "--prompt",
        "x",
        "--out",
        out.to_str().unwrap(),
    ];
    let e = err(&[
        &args[..],
        &["--model", partial.to_str().unwrap()],
        &SHORT[..],
    ]
    .concat());
    assert!(
        e.contains("prior/manifest.json not found") && e.contains("--kind prior"),
        "{e}"
    );
    assert!(!out.exists());
    // A GLIDE folder where an unCLIP one belongs.
    let e = err(&[
        &args[..],
        &[
            "--model",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../public/models/demo"),
        ],
    ]
    .concat());
    assert!(e.contains("clip-text"), "{e}");
    // Unknown pipeline and absurd parameters.
    let mm = m.to_str().unwrap();
    let e = err(&[
        "generate",
        "--pipeline",
        "dalle",
        "--prompt",
        "x",
        "--model",
        mm,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("unknown pipeline"), "{e}");
    let e = err(&[&args[..], &["--model", mm, "--decoder-guidance", "1e9"]].concat());
    assert!(e.contains("decoder guidance"), "{e}");
    let e = err(&[&args[..], &["--model", mm, "--decoder-steps", "zero"]].concat());
    assert!(e.contains("decoder steps"), "{e}");
    // The converter: the prior needs its statistics; a decoder file is not an SR.
    let p = dir.join("p");
    let e = err(&[
        "convert",
        &format!("{FIX}/prior/weights.safetensors"),
        "--kind",
        "prior",
        "--config",
        &format!("{FIX}/prior/config.json"),
        "--out",
        p.to_str().unwrap(),
    ]);
    assert!(e.contains("--stats"), "{e}");
    let e = err(&[
        "convert",
        &format!("{FIX}/decoder/checkpoint.ckpt"),
        "--kind",
        "sr",
        "--config",
        &format!("{FIX}/sr/config.json"),
        "--out",
        p.to_str().unwrap(),
    ]);
    assert!(e.contains("unknown key"), "{e}");
    assert!(!p.exists(), "a failed conversion leaves nothing");
    std::fs::remove_dir_all(&dir).ok();
}

/// A pickle writer for the opcodes of PyTorch's C++ pickler (protocol 2).
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X")
            .op(&(s.len() as u32).to_le_bytes())
            .op(s.as_bytes())
    }
    fn int(&mut self, v: i32) -> &mut Self {
        self.op(b"J").op(&v.to_le_bytes())
    }
    fn ints(&mut self, v: &[usize]) -> &mut Self {
        self.op(b"(");
        for &x in v {
            self.int(x as i32);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(persistent ('storage', torch.<storage>, key, 'cpu', n), 0, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, storage: &str, key: &str, shape: &[usize]) -> &mut Self {
        let n: usize = shape.iter().product();
        let mut stride = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        self.op(b"(")
            .str("storage")
            .global("torch", storage)
            .str(key)
            .str("cpu");
        self.int(n as i32)
            .op(b"tQ")
            .int(0)
            .ints(shape)
            .ints(&stride)
            .op(&[0x89]);
        self.global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR")
    }
}

/// A module tree (name → submodule or tensor) as TorchScript pickles it:
/// `GLOBAL __torch__.…; EMPTY_TUPLE; NEWOBJ; EMPTY_DICT; MARK; attrs; SETITEMS; BUILD`.
enum Node {
    Module(Vec<(String, Node)>),
    Tensor(&'static str, String, Vec<usize>),
}

fn write_node(p: &mut Pickle, node: &Node, class: &str) {
    match node {
        Node::Tensor(storage, key, shape) => {
            p.tensor(storage, key, shape);
        }
        Node::Module(attrs) => {
            p.global(&format!("__torch__.{class}"), "Module")
                .op(b")")
                .op(&[0x81]);
            p.op(b"}(").str("training").op(&[0x89]);
            for (name, child) in attrs {
                p.str(name);
                write_node(p, child, &format!("{class}.{name}"));
            }
            p.op(b"ub");
        }
    }
}

fn insert(node: &mut Node, path: &[&str], leaf: Node) {
    let Node::Module(attrs) = node else {
        panic!("a tensor has no children")
    };
    if path.len() == 1 {
        attrs.push((path[0].to_string(), leaf));
        return;
    }
    if !attrs.iter().any(|(n, _)| n == path[0]) {
        attrs.push((path[0].to_string(), Node::Module(Vec::new())));
    }
    let child = &mut attrs.iter_mut().find(|(n, _)| n == path[0]).unwrap().1;
    insert(child, &path[1..], leaf);
}

/// The released `ViT-L-14.pt` is a TorchScript archive of an fp16 CLIP with
/// integer buffers beside the weights. The fixture CLIP written that way
/// converts to the same tensors (as f16 values) as its safetensors, for each tower.
#[test]
fn torchscript_clip_archive_converts_like_its_state_dict() {
    let dir = tempdir("jit");
    let bytes = std::fs::read(format!("{FIX}/clip_text/weights.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut root = Node::Module(Vec::new());
    let mut storages: Vec<(String, Vec<u8>)> = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for name in &names {
        let t = st.tensor(name).unwrap();
        let halves: Vec<u8> = t
            .data()
            .chunks_exact(4)
            .flat_map(|c| {
                half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
            })
            .collect();
        let key = storages.len().to_string();
        storages.push((key.clone(), halves));
        let path: Vec<&str> = name.split('.').collect();
        insert(
            &mut root,
            &path,
            Node::Tensor("HalfStorage", key, t.shape().to_vec()),
        );
    }
    for (name, v) in [
        ("input_resolution", 32i64),
        ("context_length", 77),
        ("vocab_size", 49408),
    ] {
        let key = storages.len().to_string();
        storages.push((key.clone(), v.to_le_bytes().to_vec()));
        insert(&mut root, &[name], Node::Tensor("LongStorage", key, vec![]));
    }
    let mut p = Pickle::default();
    p.op(&[0x80, 2]);
    write_node(
        &mut p,
        &root,
        "multimodal.model.multimodal_transformer.Multimodal",
    );
    p.op(b".");
    let archive = dir.join("ViT-tiny.pt");
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::fs::File::create(&archive).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("ViT-tiny/data.pkl", opts).unwrap();
        z.write_all(&p.0).unwrap();
        z.start_file("ViT-tiny/constants.pkl", opts).unwrap();
        z.write_all(&[0x80, 2, b')', b'.']).unwrap();
        z.start_file("ViT-tiny/code/__torch__/multimodal/model.py", opts)
            .unwrap();
        z.write_all(b"class Multimodal(Module):\n  pass\n").unwrap();
        for (key, data) in &storages {
            z.start_file(format!("ViT-tiny/data/{key}"), opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    for kind in ["clip-text", "clip-visual"] {
        let config = format!("{FIX}/clip_text/config.json");
        let jit_out = dir.join(format!("{kind}-jit"));
        ok(&[
            "convert",
            archive.to_str().unwrap(),
            "--kind",
            kind,
            "--config",
            &config,
            "--out",
            jit_out.to_str().unwrap(),
        ]);
        let read = |d: &Path| -> Vec<(String, Vec<f32>)> {
            let shard = std::fs::read(d.join("model-00001.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&shard).unwrap();
            let mut v: Vec<(String, Vec<f32>)> = st
                .tensors()
                .into_iter()
                .map(|(n, t)| {
                    let vals = t
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    (n, vals)
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let got = read(&jit_out);
        let want: Vec<(String, Vec<f32>)> = names
            .iter()
            .filter(|n| (kind == "clip-visual") == n.starts_with("visual.") && *n != "logit_scale")
            .map(|n| {
                let t = st.tensor(n).unwrap();
                let vals = t
                    .data()
                    .chunks_exact(4)
                    .map(|c| {
                        half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_f32()
                    })
                    .collect();
                (n.clone(), vals)
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{kind}: tensor count");
        for ((gn, gv), (wn, wv)) in got.iter().zip(&want) {
            assert_eq!(gn, wn);
            assert_eq!(gv, wv, "{kind}: {gn}");
        }
    }
    // A truncated archive is an error that leaves nothing behind.
    let cut = dir.join("cut.pt");
    let all = std::fs::read(&archive).unwrap();
    std::fs::write(&cut, &all[..all.len() / 2]).unwrap();
    let out = dir.join("cut-out");
    let e = err(&[
        "convert",
        cut.to_str().unwrap(),
        "--kind",
        "clip-text",
        "--config",
        &format!("{FIX}/clip_text/config.json"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("truncated") || e.contains("zip"), "{e}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}
