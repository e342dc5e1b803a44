//! The unCLIP tensor lists the converter checks released files against:
//! equal to the official fixtures' state_dicts (names and shapes) and, at the
//! released sizes, to the official parameter counts.

use std::collections::BTreeMap;

use engine::unclip::weights::{UnclipConfig, CLIP_MEAN, CLIP_STD};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/unclip");

fn read(p: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}/{p}")).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// name → shape of a safetensors file.
fn file_shapes(p: &str) -> BTreeMap<String, Vec<usize>> {
    let bytes = read(p);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect()
}

fn listed(c: &UnclipConfig) -> BTreeMap<String, Vec<usize>> {
    let list = c.weight_shapes().unwrap();
    let n = list.len();
    let map: BTreeMap<_, _> = list.into_iter().collect();
    assert_eq!(map.len(), n, "a name listed twice");
    map
}

#[test]
fn tensor_lists_equal_the_fixture_state_dicts() {
    let sr_size = 64;
    for (kind, folder) in [
        ("clip-text", "clip_text"),
        ("clip-visual", "clip_text"),
        ("prior", "prior"),
        ("decoder", "decoder"),
        ("sr", "sr"),
    ] {
        let config =
            UnclipConfig::from_json(kind, &read(&format!("{folder}/config.json")), sr_size)
                .unwrap();
        assert_eq!(config.kind(), kind);
        let mut want = file_shapes(&format!("{folder}/weights.safetensors"));
        want.retain(|name, _| !config.ignored(name));
        if kind == "prior" {
            want.extend(file_shapes("prior/clip_stats.safetensors"));
            assert!(want.contains_key(CLIP_MEAN) && want.contains_key(CLIP_STD));
        }
        assert_eq!(listed(&config), want, "{kind}");
    }
}

#[test]
fn released_sizes_have_the_official_parameter_counts() {
    let v: serde_json::Value = serde_json::from_slice(&read("full_size_configs.json")).unwrap();
    let count = |kind: &str| -> u64 {
        listed(&UnclipConfig::released(kind).unwrap())
            .values()
            .map(|s| s.iter().product::<usize>() as u64)
            .sum()
    };
    let n = |path: &[&str]| path.iter().fold(&v, |x, k| &x[*k]).as_u64().unwrap();
    // The prior folder adds the two CLIP statistics vectors.
    assert_eq!(count("prior") - 2 * 768, n(&["prior", "n_params"]));
    assert_eq!(count("decoder"), n(&["decoder", "n_params"]));
    assert_eq!(count("sr"), n(&["sr", "n_params"]));
    assert_eq!(
        count("clip-visual"),
        n(&["clip_vit_l14", "n_params_visual"])
    );
    assert_eq!(
        count("clip-text"),
        n(&["clip_vit_l14", "n_params_text_incl_projection"])
    );
    // The configuration files of the released models give the same lists.
    for (kind, key) in [("prior", "prior"), ("decoder", "decoder"), ("sr", "sr")] {
        let json = serde_json::to_vec(&v[key]).unwrap();
        assert_eq!(
            UnclipConfig::from_json(kind, &json, 256).unwrap(),
            UnclipConfig::released(kind).unwrap()
        );
    }
}

#[test]
fn configs_of_the_wrong_kind_or_size_are_refused() {
    let decoder = read("decoder/config.json");
    assert!(UnclipConfig::from_json("prior", &decoder, 256).is_err());
    let manifest_form = serde_json::to_vec(&UnclipConfig::released("sr").unwrap()).unwrap();
    let err = UnclipConfig::from_json("decoder", &manifest_form, 256).unwrap_err();
    assert!(err.to_string().contains("'sr'"), "{err}");
    assert!(UnclipConfig::from_json("sr", &read("sr/config.json"), 99).is_err());
    assert!(UnclipConfig::released("vae").is_err());
}
