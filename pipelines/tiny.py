"""A tiny FLUX pipeline with random weights, built offline, for tests, demos and CPU benchmarks.

Same classes as FLUX.1 [dev] — FluxTransformer2DModel with the guidance embedding, CLIP and T5
text encoders with their tokenizers, an AutoencoderKL with 16 latent channels and a scale
factor of 8, the flow-match Euler scheduler — saved as an ordinary diffusers folder, so the
real loading code reads it. Its images are noise. Seeded: the same folder every time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

TINY_MARKER = "fluxserve-tiny-random"
TINY_README = """# fluxserve tiny random FLUX pipeline

This folder holds a FLUX pipeline with **random weights** and the classes of FLUX.1 [dev]
(Flux transformer with guidance embedding, CLIP + T5 text encoders, AutoencoderKL with 16 latent
channels and scale factor 8, flow-match Euler scheduler). It exists for tests, demos and CPU
benchmarks: **its images are noise**. Made by `fluxserve tiny-model DIR`.
"""

_T5_SENTENCES = [
    "a photo of a cat sitting on a red chair",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of mountains at sunrise",
    "portrait of an old man with a beard, studio lighting",
    "a bowl of fruit on a wooden table, still life",
    "the quick brown fox jumps over the lazy dog",
    "city skyline at night with neon lights and rain",
    "a small robot reading a book in a library",
]


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode table: one printable symbol per byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = [], 0
    for b in range(256):
        if b in printable:
            codes.append(b)
        else:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _clip_tokenizer(out_dir: Path):
    from transformers import CLIPTokenizer

    # Byte-level BPE: the 256 byte symbols, the same with </w>, and a few merges.
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges = ["t h", "th e</w>", "a n", "o n</w>", "e r"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    merge_pairs = [tuple(m.split(" ")) for m in merges]
    tok = CLIPTokenizer(vocab=vocab, merges=merge_pairs, model_max_length=77, pad_token="<|endoftext|>")
    tok.save_pretrained(out_dir)
    return tok


def _t5_tokenizer(out_dir: Path):
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    tmp = Path(tempfile.mkdtemp())
    try:
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(_T5_SENTENCES * 4) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(tmp / "spiece"),
            vocab_size=60,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            minloglevel=2,
        )
        processor = spm.SentencePieceProcessor(model_file=str(tmp / "spiece.model"))
        pieces = [
            (processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())
        ]
        tok = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)
        tok.save_pretrained(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def build_tiny_pipeline(seed: int = 0):
    """Build the tiny random pipeline in memory (float32, CPU)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tmp = Path(tempfile.mkdtemp())
    try:
        clip_tok = _clip_tokenizer(tmp / "tokenizer")
        t5_tok = _t5_tokenizer(tmp / "tokenizer_2")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            vocab_size=len(clip_tok),
            max_position_embeddings=77,
            hidden_act="gelu",
        )
    )
    torch.manual_seed(seed + 2)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=max(len(t5_tok), 64),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def write_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny pipeline as a diffusers folder, marked as random in model_index.json and a README."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(seed)
    pipe.save_pretrained(out, safe_serialization=True)
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_fluxserve"] = {"kind": TINY_MARKER, "note": "random weights: images are noise", "seed": seed}
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(TINY_README)
    return out


def is_tiny_model(folder: str | Path) -> bool:
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return index.get("_fluxserve", {}).get("kind") == TINY_MARKER
