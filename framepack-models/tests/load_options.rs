//! The loading protocol's options: what each network honours, and the clear error for what it
//! cannot (never silently ignored).

use burn::tensor::DType;
use framepack_models::nn::WeightFormat;
use framepack_models::text::{ClipTextConfig, ClipTextEncoder, LlamaConfig, LlamaTextEncoder};
use framepack_models::vae::{HunyuanVideoVae, VaeConfig};
use framepack_models::vision::{SiglipVisionConfig, SiglipVisionEncoder};
use framepack_models::weights::{ManifestRecorder, RandomSource};
use framepack_models::{CpuBackend as B, LoadOptions, ModelError, Residency};

fn random() -> RandomSource<B> {
    RandomSource::host(&Default::default(), 7, 0.05)
}

/// `result` is the unsupported-option error of `network`, naming `word`.
fn assert_unsupported<T>(result: Result<T, ModelError>, network: &str, word: &str) {
    match result {
        Err(err @ ModelError::UnsupportedOption { network: n, .. }) if n == network => {
            let message = err.to_string();
            assert!(
                message.contains(network) && message.contains(word),
                "{message}"
            );
        }
        Err(other) => panic!("{network}: expected an unsupported option, got {other}"),
        Ok(_) => panic!("{network}: the option `{word}` was accepted"),
    }
}

#[test]
fn resident_only_networks_reject_streaming_and_fp8() {
    let streamed = LoadOptions::new(DType::F32).residency(Residency::Streamed);
    let fp8 = LoadOptions::new(DType::F32).block_weights(WeightFormat::Fp8);
    for (options, word) in [(&streamed, "Streamed"), (&fp8, "Fp8")] {
        assert_unsupported(
            HunyuanVideoVae::load(random(), VaeConfig::tiny(), options),
            "VAE",
            word,
        );
        assert_unsupported(
            ClipTextEncoder::load(random(), ClipTextConfig::tiny(), options),
            "CLIP text encoder",
            word,
        );
        assert_unsupported(
            SiglipVisionEncoder::load(random(), SiglipVisionConfig::tiny(), options),
            "SigLIP image encoder",
            word,
        );
    }
    let fp8 = LoadOptions::new(DType::F32).block_weights(WeightFormat::Fp8);
    assert_unsupported(
        LlamaTextEncoder::load(random(), LlamaConfig::tiny(), &fp8),
        "LLaMA text encoder",
        "Fp8",
    );
}

/// LLaMA streams from a source it can read again (here random weights, keyed by name: the
/// same each time), with the resident model's output; a source that cannot be read twice is
/// an error, not a silent resident load.
#[test]
fn llama_streams_from_sources_that_can_be_read_again() {
    let resident = LoadOptions::new(DType::F32);
    let streamed = resident.clone().residency(Residency::Streamed);
    let a = LlamaTextEncoder::load(random(), LlamaConfig::tiny(), &resident).unwrap();
    let b = LlamaTextEncoder::load(&mut random(), LlamaConfig::tiny(), &streamed).unwrap();
    let ids = [1, 5, 9, 200];
    let bits = |model: &LlamaTextEncoder<B>| {
        let out = model.hidden_states(&ids).unwrap();
        out.into_data().to_vec::<f32>().unwrap()
    };
    assert_eq!(bits(&b), bits(&a));
    assert_eq!(bits(&b), bits(&a), "every call reads the layers again");

    let mut recorder = ManifestRecorder::<B>::new(&Default::default());
    assert_unsupported(
        LlamaTextEncoder::load(&mut recorder, LlamaConfig::tiny(), &streamed),
        "LLaMA text encoder",
        "read again",
    );
}
