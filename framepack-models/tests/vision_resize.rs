//! SigLIP's preprocessing against PIL: the bicubic resize bit for bit on images of several
//! sizes (FramePack's 640×608 → 384×384, up- and downscaling, one axis unchanged, a 3×2
//! source), then the rescale / normalise steps of `SiglipImageProcessor`.

mod vision_common;

use framepack_models::vision::{resize_bicubic, SiglipImageProcessor};
use vision_common::{procedural_image, resize_cases};

#[test]
fn procedural_images_match_the_generator() {
    for (i, case) in resize_cases().iter().enumerate() {
        let (w, h) = case.source;
        let image = procedural_image(w, h, i as u64);
        let sum: u64 = image.iter().map(|&v| u64::from(v)).sum();
        assert_eq!(sum, case.checksum, "source image {i} ({w}x{h})");
    }
}

#[test]
fn bicubic_resize_is_bit_exact_with_pil() {
    let cases = resize_cases();
    assert_eq!(cases.len(), 6);
    for (i, case) in cases.iter().enumerate() {
        let (w, h) = case.source;
        let (tw, th) = case.target;
        let image = procedural_image(w, h, i as u64);
        let ours = resize_bicubic(&image, w, h, 3, tw, th).unwrap();
        assert_eq!(ours.len(), case.pil.len());
        let differing = ours.iter().zip(&case.pil).filter(|(a, b)| a != b).count();
        let max = ours
            .iter()
            .zip(&case.pil)
            .map(|(&a, &b)| (i16::from(a) - i16::from(b)).abs())
            .max()
            .unwrap_or(0);
        println!(
            "{w}x{h} -> {tw}x{th}: {differing} of {} bytes differ (max {max})",
            ours.len()
        );
        assert_eq!(
            differing, 0,
            "case {i}: {w}x{h} -> {tw}x{th}, max difference {max}"
        );
    }
}

#[test]
fn pixel_values_follow_the_reference_steps() {
    let processor = SiglipImageProcessor::default();
    let case = &resize_cases()[0];
    let (w, h) = case.source;
    let image = procedural_image(w, h, 0);
    let (values, [oh, ow]) = processor.pixel_values(&image, w, h).unwrap();
    assert_eq!((oh, ow), (384, 384));
    assert_eq!(values.len(), 3 * 384 * 384);
    // CHW from PIL's HWC bytes: f32(f64(v) / 255), then (x - 0.5) / 0.5.
    for &(y, x, c) in &[(0, 0, 0), (17, 300, 1), (383, 383, 2), (200, 5, 2)] {
        let v = case.pil[(y * 384 + x) * 3 + c];
        let expected = ((f64::from(v) * (1.0 / 255.0)) as f32 - 0.5) / 0.5;
        assert_eq!(values[c * 384 * 384 + y * 384 + x], expected);
    }
    assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(values.contains(&-1.0) && values.contains(&1.0));
}

#[test]
fn bad_images_are_errors_naming_the_argument() {
    let err = resize_bicubic(&[0; 10], 2, 2, 3, 4, 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`image`"), "{err}");
    let err = resize_bicubic(&[0; 12], 2, 2, 3, 0, 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`size`"), "{err}");
    let processor = SiglipImageProcessor::default();
    assert!(processor.pixel_values(&[], 0, 0).is_err());
}

#[test]
fn preprocessor_config_is_read_from_the_published_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocessor_config.json");
    // FLUX.1-Redux-dev's feature_extractor/preprocessor_config.json.
    std::fs::write(
        &path,
        r#"{"do_convert_rgb": null, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor", "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384}}"#,
    )
    .unwrap();
    let processor = SiglipImageProcessor::from_file(&path).unwrap();
    assert_eq!(processor, SiglipImageProcessor::default());

    std::fs::write(&path, r#"{"resample": 2, "image_mean": 0.5}"#).unwrap();
    let err = SiglipImageProcessor::from_file(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("resample 2"), "{err}");
}
