//! Pillow's LANCZOS, bit for bit: `resize_lanczos` against `Image.resize(..., Image.LANCZOS)` of
//! `tools/reference/lanczos_fixture.py` on procedural images (down- and upscaling, one axis
//! unchanged, strong downscaling, a 7×5 source).

mod vision_common;

use framepack_models::vision::resize_lanczos;
use vision_common::{procedural_image, FIXTURES};

#[test]
fn lanczos_resize_is_bit_exact_with_pil() {
    let bytes = std::fs::read(format!("{FIXTURES}/vision_lanczos_pil.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let cases: Vec<f32> = st
        .tensor("cases")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(cases.len(), 6 * 4);
    for (i, case) in cases.chunks_exact(4).enumerate() {
        let [w, h, tw, th] = [0, 1, 2, 3].map(|k| case[k] as usize);
        let pil = st.tensor(&format!("case{i}")).unwrap();
        assert_eq!(pil.shape(), [th, tw, 3]);
        let image = procedural_image(w, h, i as u64);
        let ours = resize_lanczos(&image, w, h, 3, tw, th).unwrap();
        let differing = ours.iter().zip(pil.data()).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing, 0,
            "case {i}: {w}x{h} -> {tw}x{th}: {differing} bytes differ from Pillow"
        );
    }
}

#[test]
fn lanczos_rejects_bad_sizes() {
    assert!(resize_lanczos(&[0; 12], 2, 2, 3, 0, 4).is_err());
    assert!(resize_lanczos(&[0; 11], 2, 2, 3, 4, 4).is_err());
    assert!(resize_lanczos(&[], 0, 2, 3, 4, 4).is_err());
}
