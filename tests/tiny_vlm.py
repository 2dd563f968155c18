"""A tiny, randomly initialised vision-language model built from config (no download).

LLaVA architecture: a 2-layer CLIP vision tower on 28×28 inputs and a 2-layer Qwen2 text model,
with a byte-level BPE tokenizer trained in-process and a Qwen-style chat template. It loads
through the same Auto classes as a real checkpoint, so the training and evaluation code paths run
unchanged on it::

    path = build_tiny_llava(tmp_path)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)

Its outputs are random tokens: it exercises plumbing (data, collators, LoRA, GRPO generation,
saving and reloading), never quality. Needs ``torch``, ``transformers`` and ``tokenizers``; no
torchvision (the PIL image processor is used).
"""

from __future__ import annotations

import json
from pathlib import Path

#: chat template shared by the tokenizer and the processor: Qwen-style turns, string or block
#: content, one ``<image>`` per image block, optional generation prompt
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]

# Enough medical and tag vocabulary that the BPE merges keep real traces to a few hundred tokens.
_CORPUS = [
    "<think>Perception: the image shows a chest radiograph with consolidation in the right lower lobe."
    "</think>\n<answer>A</answer>",
    "Clinical context: the patient presented with fever, cough and dyspnoea. Interpretation and medical "
    "knowledge: the finding is consistent with pneumonia. Answer justification: option B is correct.",
    "What imaging modality is shown? A. CT B. MRI C. X-ray D. Ultrasound E. Histology",
    "Which finding is most consistent with the diagnosis? The figure shows a microscopy section of the "
    "tissue with haematoxylin and eosin staining; arrows mark the lesion in the panel.",
    "You are a medical expert. Look at the image, reason step by step inside <think></think>, then give "
    "the letter of the correct option inside <answer></answer>.",
]

#: sizes of the tiny model; small enough that a training step takes milliseconds on a CPU
TINY_SIZES = {"vocab_size": 600, "text_hidden": 64, "text_layers": 2, "vision_hidden": 32, "vision_layers": 2}


def build_tiny_llava(tmpdir: str | Path, *, seed: int = 0) -> Path:
    """Build the tiny random LLaVA model and its processor and save both to ``tmpdir/tiny-llava``.

    Returns that folder. Calling it again on the same ``tmpdir`` returns the existing folder
    without rebuilding. Deterministic for a given ``seed``."""
    out = Path(tmpdir) / "tiny-llava"
    if (out / "config.json").exists() and (out / "processor_config.json").exists():
        return out

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_SIZES["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )

    vision = CLIPVisionConfig(
        hidden_size=TINY_SIZES["vision_hidden"],
        intermediate_size=2 * TINY_SIZES["vision_hidden"],
        num_hidden_layers=TINY_SIZES["vision_layers"],
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=32,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=TINY_SIZES["text_hidden"],
        intermediate_size=2 * TINY_SIZES["text_hidden"],
        num_hidden_layers=TINY_SIZES["text_layers"],
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "TINY_MODEL.json").write_text(
        json.dumps({"what": "random tiny LLaVA for tests; outputs are noise", "seed": seed, **TINY_SIZES}, indent=1)
    )
    return out
