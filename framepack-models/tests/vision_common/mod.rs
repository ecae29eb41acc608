//! Shared by the vision tests: the procedural test images and the PIL resize fixture of
//! `tools/reference/encoders_fixture.py`.

#![allow(dead_code)]

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// `procedural_image` of the fixture script: uint8 RGB `[height][width][3]` with a sawtooth, a
/// checkerboard and hashed noise.
pub fn procedural_image(width: usize, height: usize, seed: u64) -> Vec<u8> {
    const MASK: u64 = 0xFFFF_FFFF;
    let mut out = Vec::with_capacity(width * height * 3);
    for y in 0..height as u64 {
        for x in 0..width as u64 {
            for c in 0..3u64 {
                let mut h = ((x * 73_856_093) & MASK)
                    ^ ((y * 19_349_663) & MASK)
                    ^ ((c * 83_492_791) & MASK)
                    ^ seed;
                h ^= h >> 13;
                h = (h * 0x5BD1_E995) & MASK;
                h ^= h >> 15;
                let mut v = ((x * 3 + y * 2 + c * 40) % 256) as i64;
                if (x / 16 + y / 16) % 2 == 0 {
                    v = 255 - v;
                }
                v += (h % 33) as i64 - 16;
                out.push(v.clamp(0, 255) as u8);
            }
        }
    }
    out
}

/// One resize case: source size, target size, PIL's output, the source checksum.
pub struct ResizeCase {
    pub source: (usize, usize),
    pub target: (usize, usize),
    pub pil: Vec<u8>,
    pub checksum: u64,
}

pub fn resize_cases() -> Vec<ResizeCase> {
    let bytes = std::fs::read(format!("{FIXTURES}/vision_resize_pil.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let cases = st.tensor("cases").unwrap();
    let sizes: Vec<f32> = cases
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    sizes
        .chunks_exact(4)
        .enumerate()
        .map(|(i, s)| {
            let pil = st.tensor(&format!("case{i}")).unwrap();
            assert_eq!(pil.dtype(), safetensors::Dtype::U8);
            assert_eq!(pil.shape(), [s[3] as usize, s[2] as usize, 3]);
            let sum = st.tensor(&format!("source{i}_checksum")).unwrap();
            let sum = f64::from_le_bytes(sum.data()[..8].try_into().unwrap());
            ResizeCase {
                source: (s[0] as usize, s[1] as usize),
                target: (s[2] as usize, s[3] as usize),
                pil: pil.data().to_vec(),
                checksum: sum as u64,
            }
        })
        .collect()
}
