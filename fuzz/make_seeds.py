"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/.

Seeds are small on purpose (libFuzzer's inputs are at most 64 KiB): tiny
images in every accepted format, PyTorch archives in the layouts the reader
knows (torch.save state dict, Lightning-style wrapper, TorchScript module,
pickled tuple), manifests of both families, a manifest + q8 shard pair,
tokenizer prompts. Run: python3 fuzz/make_seeds.py (needs Pillow).
"""
import io, json, os, struct, sys, zipfile

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)
C = os.path.join(ROOT, "corpus")


def put(target, name, data):
    os.makedirs(os.path.join(C, target), exist_ok=True)
    with open(os.path.join(C, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- images and masks -------------------------------------------------------
from PIL import Image

def img_bytes(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()

grad = Image.new("RGB", (7, 5))
grad.putdata([(x * 36, y * 50, 128) for y in range(5) for x in range(7)])
put("image", "rgb.png", img_bytes(grad, "PNG"))
put("image", "rgb.jpg", img_bytes(grad, "JPEG", quality=60))
put("image", "rgb.webp", img_bytes(grad, "WEBP", lossless=True))
put("image", "lossy.webp", img_bytes(grad, "WEBP", quality=50))
put("image", "rgba.png", img_bytes(Image.new("RGBA", (3, 4), (255, 0, 0, 128)), "PNG"))
put("image", "grey16.png", img_bytes(Image.new("I;16", (4, 3), 30000), "PNG"))
put("image", "palette.png", img_bytes(grad.convert("P"), "PNG"))
put("image", "progressive.jpg", img_bytes(grad, "JPEG", progressive=True))
checker = Image.new("L", (8, 8))
checker.putdata([255 * ((x // 2 + y // 2) % 2) for y in range(8) for x in range(8)])
put("mask", "checker.png", img_bytes(checker, "PNG"))
put("mask", "white.png", img_bytes(Image.new("L", (3, 3), 255), "PNG"))
put("mask", "black.jpg", img_bytes(Image.new("L", (5, 4), 0), "JPEG"))
put("mask", "rgba.png", img_bytes(Image.new("RGBA", (4, 4), (255, 255, 255, 0)), "PNG"))

# --- PyTorch archives -------------------------------------------------------
class Pickle:
    """The opcodes of torch.save / PyTorch's C++ pickler (protocol 2)."""
    def __init__(self):
        self.b = bytearray(b"\x80\x02")
    def op(self, x):
        self.b += x
        return self
    def glob(self, m, n):
        return self.op(f"c{m}\n{n}\n".encode())
    def s(self, x):
        x = x.encode()
        return self.op(b"X" + struct.pack("<I", len(x)) + x)
    def i(self, v):
        if -2**31 <= v < 2**31:
            return self.op(b"J" + struct.pack("<i", v))
        return self.op(b"\x8a\x08" + struct.pack("<q", v))  # LONG1
    def ints(self, v):
        self.op(b"(")
        for x in v:
            self.i(x)
        return self.op(b"t")
    def tensor(self, storage, key, shape):
        n = 1
        for d in shape:
            n *= d
        stride = [1] * len(shape)
        for k in range(len(shape) - 2, -1, -1):
            stride[k] = stride[k + 1] * shape[k + 1]
        self.glob("torch._utils", "_rebuild_tensor_v2").op(b"(")
        self.op(b"(").s("storage").glob("torch", storage).s(key).s("cpu").i(min(n, 2**62)).op(b"tQ")
        self.i(0).ints(shape).ints(stride).op(b"\x89")
        return self.glob("collections", "OrderedDict").op(b")R").op(b"tR")

def archive(name, pkl, storages):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", bytes(pkl))
        for k, v in storages.items():
            z.writestr(f"{name}/data/{k}", v)
    return b.getvalue()

f32 = lambda *v: struct.pack(f"<{len(v)}f", *v)
# A state dict {w: 2x3 f32, b: 3 f16} with memo use, as torch.save writes it.
p = Pickle().glob("collections", "OrderedDict").op(b")R").op(b"q\x00(")
p.s("w").tensor("FloatStorage", "0", [2, 3]).op(b"q\x01")
p.s("b").tensor("HalfStorage", "1", [3])
p.op(b"u.")
put("checkpoint", "state_dict.pt", archive("ckpt", p.b, {"0": f32(1, 2, 3, 4, 5, 6), "1": b"\x00<\x00<\x00<"}))
# Lightning / Karlo style {"state_dict": {...}, "epoch": 1}.
p = Pickle().op(b"}(").s("epoch").i(1).s("state_dict").op(b"}(")
p.s("model.w").tensor("FloatStorage", "0", [2])
p.op(b"uu.")
put("checkpoint", "wrapped.ckpt", archive("ckpt", p.b, {"0": f32(1, 2)}))
# CLIP stats: a pickled tuple of two tensors.
p = Pickle().op(b"(").tensor("FloatStorage", "0", [2]).tensor("FloatStorage", "1", [2]).op(b"t.")
put("checkpoint", "stats.th", archive("stats", p.b, {"0": f32(0, 1), "1": f32(1, 2)}))
# A TorchScript module: __torch__ objects, int buffers, a nested module.
p = Pickle().glob("__torch__.model", "Model").op(b")\x81}(").s("training").op(b"\x89")
p.s("ln").glob("__torch__.model.ln", "LayerNorm").op(b")\x81}(").s("weight").tensor("HalfStorage", "0", [2]).op(b"ub")
p.s("context_length").tensor("LongStorage", "1", [])
p.op(b"ub.")
put("checkpoint", "torchscript.pt", archive("jit", p.b, {"0": b"\x00<\x00<", "1": struct.pack("<q", 77)}))

# --- manifests and shards ---------------------------------------------------
for path, name in [
    ("public/models/demo/base/manifest.json", "glide_base.json"),
    ("e2e/artifacts/models/unclip/prior/manifest.json", "unclip_prior.json"),
    ("e2e/artifacts/models/unclip/clip-text/manifest.json", "unclip_clip_text.json"),
]:
    full = os.path.join(REPO, path)
    if os.path.exists(full):
        put("manifest", name, open(full, "rb").read())

def safetensors(tensors):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

put("safetensors", "f32.safetensors", safetensors({"a": ("F32", [2, 2], f32(1, 2, 3, 4)), "b": ("F16", [2], b"\x00<\x00<")}))
clip_stats = "/work/shared/fixtures/unclip/prior/clip_stats.safetensors"
if os.path.exists(clip_stats):
    put("safetensors", "clip_stats.safetensors", open(clip_stats, "rb").read())
# A manifest (GLIDE format) naming one q8-packed weight, then its shard:
# 2 bytes of manifest length, the manifest, the shard.
base = json.load(open(os.path.join(REPO, "public/models/demo/base/manifest.json")))
m = {
    "format": base["format"], "kind": "base", "config": base["config"], "quant": "q8",
    "tensors": {"w": {"shard": "s.safetensors", "dtype": "q8", "shape": [2, 32]}},
    "shards": [{"file": "s.safetensors", "bytes": 0, "sha256": ""}],
}
# q8 rows: 9 words per block of 32 (a scale word and 32 int8); 2 rows of 32 columns.
words = struct.pack("<f", 0.01) + bytes(range(32))
shard = safetensors({"w": ("U32", [2, 9], words * 2)})
mj = json.dumps(m).encode()
put("safetensors", "manifest_q8_shard", struct.pack("<H", len(mj)) + mj + shard)

# --- text -------------------------------------------------------------------
prompts = ["a red circle above a blue square", "an oil painting of a corgi",
           "Hello, World! 123 ünïcödé 🙂", "  multiple   spaces\tand\nlines  ", "",
           "a" * 300, "&amp; <b>html</b> ftfy’s “quotes”"]
tokens = "/work/shared/fixtures/unclip/tokenizer/tokens.json"
if os.path.exists(tokens):
    cases = json.load(open(tokens))
    for c in cases["entries"]:
        if isinstance(c.get("text"), str):
            prompts.append(c["text"])
for i, t in enumerate(prompts):
    for target in ["glide_tokenizer", "clip_tokenizer", "png_text"]:
        put(target, f"prompt{i:02}", t)
print("seeds written to", C)

# --- regressions: inputs that broke (or would have broken) the checkpoint reader
def raw_pickle_archive(pkl, storages=None):
    return archive("bad", bytearray(pkl), storages or {})

# SHORT_BINUNICODE8 with a length of 2^64 - 1 (overflowed the bounds check).
put("checkpoint", "regress-huge-string-length", raw_pickle_archive(b"\x80\x02\x8d" + b"\xff" * 8 + b"."))
# Billion laughs: a list memoised, then [x, x] memoised again, 40 times.
laughs = bytearray(b"\x80\x02]q\x00")
for i in range(40):
    laughs += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1])
laughs += b"."
put("checkpoint", "regress-billion-laughs", raw_pickle_archive(laughs))
# 20000 nested one-tuples (recursion on drop).
put("checkpoint", "regress-deep-nesting", raw_pickle_archive(b"\x80\x02N" + b"\x85" * 20000 + b"."))
# A tensor whose shape multiplies past 2^64, and one far larger than its storage.
for name, shape in [("regress-shape-overflow", [2**22] * 3), ("regress-numel-over-storage", [1 << 20, 1 << 10])]:
    p = Pickle().op(b"}(").s("w").tensor("FloatStorage", "0", shape).op(b"u.")
    put("checkpoint", name, archive("ckpt", p.b, {"0": f32(1, 2)}))
# A storage entry whose header claims 1 TB.
good = open(os.path.join(C, "checkpoint", "state_dict.pt"), "rb").read()
i = good.index(b"PK\x03\x04" , good.index(b"ckpt/data/0") - 40)
claimed = bytearray(good)
# Local header: uncompressed size at +22; central directory copy at +24 of its record.
claimed[i + 22:i + 26] = b"\xff\xff\xff\x7f"
cd = claimed.find(b"ckpt/data/0", claimed.index(b"PK\x01\x02"))
rec = claimed.rfind(b"PK\x01\x02", 0, cd)
claimed[rec + 24:rec + 28] = b"\xff\xff\xff\x7f"
put("checkpoint", "regress-claimed-size", bytes(claimed))
print("regression seeds written")
