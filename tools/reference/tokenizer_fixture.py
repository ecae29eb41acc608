#!/usr/bin/env python3
"""Tokenizer fixtures for framepack-models' text tests: real vocabularies, reference token ids.

FramePack tokenizes with transformers 4.46.2 (its pinned version): `LlamaTokenizerFast` on the
LLaMA-3 `tokenizer.json` (prompt inside the HunyuanVideo template, max_length 351, truncation,
padding) and the *slow* `CLIPTokenizer` on `vocab.json` + `merges.txt` (max_length 77). This
script rebuilds both tokenizers from public copies of the same vocabularies and records the ids
the reference produces for a set of prompts.

Vocabularies (PyPI, not Hugging Face):
  - `llama-models` ships Meta's LLaMA-3 BPE ranks, `llama_models/llama3/tokenizer.model`
    (tiktoken format, 2.2 MB). transformers' `TikTokenConverter` turns it into the
    `tokenizer.json` the HF checkpoints ship (17 MB; the merges are derived from the ranks).
  - `clip-anytorch` ships OpenAI's CLIP BPE list, `clip/bpe_simple_vocab_16e6.txt.gz`, from which
    `vocab.json` / `merges.txt` follow exactly as in `openai/clip-vit-large-patch14`.

Written (all small; see docs/encoders.md, "Tokenizer fixtures"):
  framepack-models/tests/fixtures/tokenizer_llama3/tokenizer.model.gz      the BPE ranks, gzip (1.0 MB)
  framepack-models/tests/fixtures/tokenizer_llama3/tokenizer_skeleton.json the converted tokenizer.json without
                                                          `model.vocab` / `model.merges`, plus
                                                          sha256 digests of both (the Rust test
                                                          re-derives them from the ranks and checks
                                                          the digests)
  framepack-models/tests/fixtures/tokenizer_clip/vocab.json.gz, merges.txt.gz
  framepack-models/tests/fixtures/tokenizer_reference.json                 prompts and reference ids

Run from the repository root, in an environment with FramePack's pinned transformers
(kept apart from the main one):
  pip install --target /tmp/tf446 --no-deps transformers==4.46.2 tokenizers==0.20.3 \
      huggingface-hub==0.26.2
  pip install --target /tmp/refpkgs --no-deps llama-models==0.3.0 clip-anytorch==2.6.0 tiktoken
  PYTHONPATH=/tmp/tf446:/tmp/refpkgs python3 tools/reference/tokenizer_fixture.py
"""
import gzip
import hashlib
import importlib.util
import io
import json
import os
import tempfile

import transformers
from tokenizers import AddedToken, processors
from transformers import CLIPTokenizer, LlamaTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

OUT = "framepack-models/tests/fixtures"

# diffusers' HunyuanVideo DEFAULT_PROMPT_TEMPLATE, as FramePack uses it (crop_start 95).
TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
CROP_START = 95
MAX_PROMPT_TOKENS = 256

LONG = (
    "A cinematic tracking shot follows a young woman in a flowing crimson dress as she runs barefoot "
    "along a wet, reflective beach at golden hour. Waves roll in slowly behind her, their white foam "
    "catching the warm orange light, while seagulls circle overhead against a sky streaked with violet "
    "and pink clouds. Her long dark hair whips in the wind; she laughs, glances back over her shoulder, "
    "and raises one arm toward the horizon. The camera glides smoothly at waist height, keeping her "
    "centered, then gradually rises into a high crane shot that reveals a lighthouse on a rocky cliff, "
    "fishing boats bobbing in the harbor, and a small wooden pier stretching into the sea. Fine sand "
    "sprays from her footsteps, droplets sparkle like diamonds, and the shallow depth of field blurs the "
    "distant town lights that begin to flicker on one by one. The mood is joyful, free and nostalgic, with "
    "soft film grain, gentle lens flares, rich saturated colors, and a subtle slow-motion effect of 48 "
    "frames per second. In the final seconds a golden retriever bounds into frame, splashing through the "
    "surf to join her, and the two of them run together toward the setting sun as the music swells. "
    "Behind them, children fly a bright yellow kite shaped like a dragon, an old fisherman mends his nets "
    "on an upturned rowing boat, and a couple shares an ice cream under a striped umbrella. The tide "
    "erases their footprints as the last light fades to deep blue, and the first stars appear above the sea."
)

PROMPTS = [
    ("a_cat", "a cat"),
    ("ascii", "The girl dances gracefully, with clear movements, full of charm."),
    ("japanese", "桜の木の下で猫が眠っている。カメラはゆっくりとズームインする。"),
    ("chinese", "一只猫在草地上奔跑，阳光明媚"),
    ("emoji", "A dog 🐶 surfing 🏄‍♂️ on a wave 🌊, 4K, ultra-detailed!!!"),
    ("accents_numbers", "It's 12:30 — the U.S.A.'s \"BIG\" day; café naïve résumé Ångström"),
    ("whitespace", "  two   spaces\tand\ttabs  \n and a line break"),
    ("leading_newline", "\nA man walks into the rain."),
    ("special_token_text", "hello <|eot_id|> world"),
    ("empty", ""),
    ("long", LONG),
    # " a" is one token: 255 of them + <|eot_id|> = exactly 256 kept tokens.
    ("limit_exact", "a" + " a" * 254),
    # 256 content tokens: the reference keeps 256 and drops the closing <|eot_id|>.
    ("limit_plus_one", "a" + " a" * 255),
    # CLIP: 75 content tokens fit exactly, 76 are truncated to 75.
    ("clip_exact", "a" + " a" * 74),
    ("clip_plus_one", "a" + " a" * 75),
]

# LLaMA-3 (not 3.1) special-token names, as in Meta-Llama-3-8B-Instruct, which the
# llava-llama-3-8b text encoder inherits. Ids 128000-128255.
LLAMA3_SPECIALS = (
    ["<|begin_of_text|>", "<|end_of_text|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
)
assert len(LLAMA3_SPECIALS) == 256


def package_file(package, *parts):
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise SystemExit(f"python package `{package}` not found; see the docstring for how to install it")
    return os.path.join(os.path.dirname(spec.origin), *parts)


def write_gz(path, data: bytes):
    """gzip without a timestamp, so regenerating gives identical bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(data)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return len(buf.getvalue())


def sha256_lines(lines):
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def llama3_tokenizer_json(ranks_path, json_path):
    """tokenizer.json as the HF LLaMA-3 checkpoints have it: TikTokenConverter's BPE and
    pre-tokenizer, the 256 special tokens, BOS added by the post-processor."""
    specials = [AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS]
    tok = TikTokenConverter(vocab_file=ranks_path, additional_special_tokens=specials).converted()
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", 128000)],
        ),
    ])
    tok.save(json_path)
    with open(json_path, encoding="utf-8") as f:
        return json.load(f)


def llama_reference(json_path, ranks_path):
    tokenizer = LlamaTokenizerFast(
        tokenizer_file=json_path,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        # LlamaTokenizerFast defaults to left padding; the checkpoint's tokenizer_config.json
        # pads on the right, which FramePack's crop `[:, 95:attention_length]` relies on.
        padding_side="right",
    )
    # Independent oracle: Meta's own tiktoken tokenizer on the same ranks.
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    meta = tiktoken.Encoding(
        name="llama3",
        pat_str=TikTokenConverter().pattern,
        mergeable_ranks=load_tiktoken_bpe(ranks_path),
        special_tokens={t: 128000 + i for i, t in enumerate(LLAMA3_SPECIALS)},
    )

    out = {}
    for name, prompt in PROMPTS:
        text = TEMPLATE.format(prompt)
        # Exactly encode_prompt_conds in FramePack's diffusers_helper/hunyuan.py.
        enc = tokenizer([text], padding="max_length", max_length=MAX_PROMPT_TOKENS + CROP_START,
                        truncation=True, return_tensors="pt", return_attention_mask=True)
        length = int(enc.attention_mask.sum())
        ids = enc.input_ids[0, :length].tolist()
        full = [128000] + meta.encode(text, allowed_special="all")
        assert ids == full[: MAX_PROMPT_TOKENS + CROP_START], f"{name}: HF and tiktoken disagree"
        assert ids[0] == 128000
        if not prompt.startswith("\n"):
            assert ids[91:95] == [128006, 882, 128007, 271], (name, ids[91:95])
        out[name] = {"ids": ids, "untruncated_len": len(full)}
    return out


def clip_files(bpe_path):
    """vocab.json and merges.txt exactly as `openai/clip-vit-large-patch14` has them."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_json = json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False).encode("utf-8")
    merges_txt = ("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n").encode("utf-8")
    assert len(vocab) == 49408
    return vocab_json, merges_txt


def clip_reference(folder):
    tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    assert tokenizer.fix_text is None, "ftfy is installed: FramePack's environment has no ftfy"
    out = {}
    for name, prompt in PROMPTS:
        # Exactly encode_prompt_conds: padding to 77 with truncation.
        ids = tokenizer([prompt], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids[0].tolist()
        untruncated = len(tokenizer(prompt).input_ids)
        out[name] = {"ids": ids, "untruncated_len": untruncated}
    return out


def main():
    assert transformers.__version__ == "4.46.2", f"run with transformers 4.46.2, not {transformers.__version__}"
    ranks_path = package_file("llama_models", "llama3", "tokenizer.model")
    bpe_path = package_file("clip", "bpe_simple_vocab_16e6.txt.gz")

    os.makedirs(f"{OUT}/tokenizer_llama3", exist_ok=True)
    os.makedirs(f"{OUT}/tokenizer_clip", exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # LLaMA-3
        with open(ranks_path, "rb") as f:
            ranks = f.read()
        n = write_gz(f"{OUT}/tokenizer_llama3/tokenizer.model.gz", ranks)
        print(f"tokenizer.model.gz: {n} bytes")
        json_path = os.path.join(tmp, "tokenizer.json")
        full = llama3_tokenizer_json(ranks_path, json_path)
        vocab = full["model"].pop("vocab")
        merges = full["model"].pop("merges")
        merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        full["framepack_fixture"] = {
            "vocab_size": len(vocab),
            "vocab_sha256": sha256_lines(f"{t}\t{i}" for t, i in by_id),
            "merges": len(merges),
            "merges_sha256": sha256_lines(merges),
        }
        with open(f"{OUT}/tokenizer_llama3/tokenizer_skeleton.json", "w", encoding="utf-8") as f:
            json.dump(full, f, ensure_ascii=False, indent=1)
        print(f"LLaMA-3: {len(vocab)} BPE tokens, {len(merges)} merges, {len(full['added_tokens'])} added")
        llama = llama_reference(json_path, ranks_path)

        # CLIP
        vocab_json, merges_txt = clip_files(bpe_path)
        clip_dir = os.path.join(tmp, "clip")
        os.makedirs(clip_dir)
        for name, data in [("vocab.json", vocab_json), ("merges.txt", merges_txt)]:
            with open(os.path.join(clip_dir, name), "wb") as f:
                f.write(data)
            n = write_gz(f"{OUT}/tokenizer_clip/{name}.gz", data)
            print(f"{name}.gz: {n} bytes")
        clip = clip_reference(clip_dir)

    reference = {
        "generator": f"tools/reference/tokenizer_fixture.py, transformers {transformers.__version__}",
        "template": TEMPLATE,
        "crop_start": CROP_START,
        "max_prompt_tokens": MAX_PROMPT_TOKENS,
        "prompts": [
            {"name": name, "prompt": prompt, "llama": llama[name], "clip": clip[name]}
            for name, prompt in PROMPTS
        ],
    }
    with open(f"{OUT}/tokenizer_reference.json", "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False, indent=1)
    for name, _ in PROMPTS:
        l = llama[name]
        c = clip[name]
        print(f"{name:>20}: llama {len(l['ids'])} ids (L = {len(l['ids']) - CROP_START}, untruncated "
              f"{l['untruncated_len']}), clip untruncated {c['untruncated_len']}")


if __name__ == "__main__":
    main()
