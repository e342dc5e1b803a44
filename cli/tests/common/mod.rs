//! Helpers shared by the CLI integration tests.
#![allow(dead_code)]

pub const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/glide");

/// Runs the built `webglide` binary.
pub fn webglide(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_webglide"))
        .args(args)
        .output()
        .expect("run webglide")
}

/// A PNG's width, height, pixels and text chunks.
pub fn read_png(path: &std::path::Path) -> (u32, u32, Vec<u8>, Vec<(String, String)>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let text = r
        .info()
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect();
    (info.width, info.height, buf, text)
}

/// Runs `webglide` on input it must refuse: exit status 2, `expect` in the
/// message, no panic, and nothing written into `out_dir`.
pub fn refuses(args: &[&str], expect: &str, out_dir: &std::path::Path) {
    let r = webglide(args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    let shown: Vec<String> = args.iter().map(|a| a.chars().take(40).collect()).collect();
    assert_eq!(r.status.code(), Some(2), "{shown:?}: {stderr}");
    assert!(
        stderr.contains(expect),
        "{shown:?}: expected {expect:?} in {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{shown:?}: {stderr}");
    let left: Vec<_> = std::fs::read_dir(out_dir).unwrap().collect();
    assert!(left.is_empty(), "{shown:?} left behind: {left:?}");
}
