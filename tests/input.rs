//! Input images: FramePack's resize-and-center-crop to a bucket, bit for bit against Pillow
//! (`tools/reference/lanczos_fixture.py`), and how files are read.

mod common;

use framepack::framepack_core::Bucket;
use framepack::InputImage;
use sha2::{Digest, Sha256};

#[test]
fn resize_and_center_crop_matches_pillow() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/framepack-models/tests/fixtures/vision_lanczos_pil.json"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = json["crops"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let n = |v: &serde_json::Value| v.as_u64().unwrap();
        let (sw, sh) = (n(&case["source"][0]) as u32, n(&case["source"][1]) as u32);
        let (tw, th) = (n(&case["target"][0]) as u32, n(&case["target"][1]) as u32);
        let rgb = common::procedural_image(sw as usize, sh as usize, n(&case["seed"]));
        let image = InputImage::from_rgb8(sw, sh, rgb).unwrap();
        let out = image.to_bucket(Bucket::new(th, tw)).unwrap();
        assert_eq!(out.len(), (tw * th * 3) as usize);
        for probe in case["probes"].as_array().unwrap() {
            let (y, x) = (n(&probe["y"]) as usize, n(&probe["x"]) as usize);
            let p = (y * tw as usize + x) * 3;
            let want: Vec<u8> = probe["rgb"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| n(v) as u8)
                .collect();
            assert_eq!(
                &out[p..p + 3],
                want.as_slice(),
                "{sw}x{sh} -> {tw}x{th} at ({y}, {x})"
            );
        }
        let digest: String = Sha256::digest(&out)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            case["sha256"].as_str().unwrap(),
            "{sw}x{sh} -> {tw}x{th} differs from Pillow"
        );
    }
    // The identity: an image already at the bucket size is not resampled.
    let rgb = common::procedural_image(608, 640, 1);
    let image = InputImage::from_rgb8(608, 640, rgb.clone()).unwrap();
    assert_eq!(image.to_bucket(Bucket::new(640, 608)).unwrap(), rgb);
}

#[test]
fn files_are_read_as_8_bit_rgb() {
    let dir = tempfile::tempdir().unwrap();
    // RGBA: alpha dropped, colour kept.
    let rgba = image::RgbaImage::from_fn(4, 2, |x, y| image::Rgba([x as u8 * 10, y as u8, 7, 0]));
    let path = dir.path().join("alpha.png");
    rgba.save(&path).unwrap();
    let img = InputImage::open(&path).unwrap();
    assert_eq!((img.width(), img.height()), (4, 2));
    assert_eq!(&img.rgb().unwrap()[..6], &[0, 0, 7, 10, 0, 7]);
    assert_eq!(
        img.path(),
        Some(std::fs::canonicalize(&path).unwrap().as_path())
    );
    // 16-bit grey: reduced to 8 bits, three channels.
    let grey = image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(2, 2, image::Luma([65535]));
    let path = dir.path().join("grey16.png");
    grey.save(&path).unwrap();
    assert_eq!(InputImage::open(&path).unwrap().rgb().unwrap(), &[255; 12]);
    // JPEG.
    let path = dir.path().join("photo.jpg");
    image::RgbImage::from_pixel(16, 8, image::Rgb([200, 100, 50]))
        .save(&path)
        .unwrap();
    let img = InputImage::open(&path).unwrap();
    assert_eq!((img.width(), img.height()), (16, 8));
    let px = &img.rgb().unwrap()[..3];
    assert!(
        px.iter()
            .zip([200, 100, 50])
            .all(|(&a, b)| a.abs_diff(b) <= 3),
        "{px:?}"
    );
    // The same pixels hash the same, wherever they come from.
    let a = InputImage::from_rgb8(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
    let b = InputImage::from_rgb8(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
    let c = InputImage::from_rgb8(1, 2, vec![1, 2, 3, 4, 5, 6]).unwrap();
    assert_eq!(a.sha256(), b.sha256());
    assert_ne!(a.sha256(), c.sha256());
}
