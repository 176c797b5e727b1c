"""Build a small random-weight InternVL checkpoint offline that loads like a real "-hf" one.

Tests, the demo and CPU benchmarks cannot download OpenGVLab/InternVL3-1B-hf, so this module
writes a directory with the same files and classes (InternVLForConditionalGeneration,
InternVLProcessor, GotOcr2ImageProcessor, Qwen2Tokenizer): only sizes and weights differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    InternVLVisionConfig,
    Qwen2Config,
    Qwen2Tokenizer,
)


@dataclass(frozen=True)
class TinyPreset:
    """Sizes of one tiny InternVL; tiles are square, `tile_size` pixels a side."""

    tile_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    bpe_vocab_size: int
    init_std: float
    text_vocab_size: int | None = None  # None: exactly the tokenizer's length
    max_position_embeddings: int = 8192
    dtype: torch.dtype = torch.float32

    @property
    def image_seq_length(self) -> int:
        """Image tokens per tile after InternVL's 0.5 pixel shuffle."""
        return (self.tile_size // self.patch_size) ** 2 // 4


# init_std: the smallest of 0.02/0.05/0.1/0.2/0.3 at which greedy output was varied and differed
# per image for seeds 0-9 ("test", "bench"); for the 1B shape 0.02 repeats one token, and 0.05
# keeps the residual stream near 100 where 0.1 reaches about 1000, closer to fp16's limit.
PRESETS: dict[str, TinyPreset] = {
    "test": TinyPreset(
        tile_size=64, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=2,
        vision_intermediate=128, text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2,
        text_intermediate=256, bpe_vocab_size=1024, init_std=0.2,
    ),
    "bench": TinyPreset(
        tile_size=224, patch_size=14, vision_hidden=256, vision_layers=6, vision_heads=4,
        vision_intermediate=1024, text_hidden=384, text_layers=8, text_heads=6, text_kv_heads=2,
        text_intermediate=1536, bpe_vocab_size=2048, init_std=0.1,
    ),
    # InternViT-300M + Qwen2.5-0.5B, as in OpenGVLab/InternVL3-1B-hf's config.json.
    "internvl3-1b": TinyPreset(
        tile_size=448, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
        vision_intermediate=4096, text_hidden=896, text_layers=24, text_heads=14, text_kv_heads=2,
        text_intermediate=4864, bpe_vocab_size=2048, init_std=0.05, text_vocab_size=151674,
        max_position_embeddings=32768, dtype=torch.bfloat16,
    ),
}  # fmt: skip

# Verbatim chat_template.jinja of OpenGVLab/InternVL3-1B-hf (481 bytes on the Hub), as written
# by transformers' src/transformers/models/internvl/convert_internvl_weights_to_hf.py.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2's pre-tokenizer split, so the trained BPE tokenizes text the way Qwen2Tokenizer does.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Appended after the BPE vocabulary in Qwen2's order, as in the real tokenizer.
_PAD_TOKEN, _IM_START_TOKEN, _EOS_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
_SPECIAL_TOKENS = (_PAD_TOKEN, _IM_START_TOKEN, _EOS_TOKEN)
_IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
# ImageNet statistics, as in the real checkpoint's image processor.
_IMAGE_MEAN = [0.485, 0.456, 0.406]
_IMAGE_STD = [0.229, 0.224, 0.225]

_CORPUS = """\
A photo of a small grey cat sleeping on a red sofa next to an open window. The afternoon light
falls across the cushions, and a cup of tea is cooling on the wooden table beside a stack of books.
The street outside is busy: a yellow taxi waits at the corner, two cyclists pass a bakery, and a
woman in a blue coat carries an umbrella although the sky is clear. Shop signs show prices, opening
hours and a phone number; the bus stop lists routes 12, 27 and 305.
The chart compares monthly sales for three products. Revenue rises from January to June, drops in
August, and recovers by December. The table below gives totals in thousands of dollars, with a note
that the figures for the last quarter are estimates.
Question: What is written on the receipt? Answer: The receipt is from a grocery store, dated the
third of March, and lists bread, milk, eggs, apples and coffee, with a total of 23.45 paid by card.
Describe the image in one sentence. Count the people in the picture. Is there a dog in this photo?
Read the text in the image and translate it into English. Compare the two images and explain the
differences between them. What color is the car on the left, and where is it going?
The mountain lake reflects snowy peaks under a pale morning sky, while a boat drifts near the shore.
Children play football in the park; their parents talk on a bench under tall green trees.
The scanned invoice shows a company logo, an address in Berlin, an invoice number, a due date and
a list of services: design work, printing, delivery and tax. The signature at the bottom is blurred.
On the kitchen counter there are fresh vegetables: carrots, tomatoes, onions, a green pepper and a
knife on a cutting board. A recipe card explains how long to boil the pasta and when to add salt.
The screenshot of a mobile app shows a login form with fields for email and password, a button
labelled "Sign in", and a link for users who forgot their password or want to create an account.
At night the city bridge is lit in orange and purple; reflections shimmer on the river while a train
crosses slowly. Several birds rest on the railing, and a runner with headphones jogs past them.
书架上摆满了旧书和杂志，墙上挂着一幅山水画。医生正在看一张胸部X光片，旁边的屏幕上显示着病人的信息。
手机截图显示一个登录页面，有邮箱和密码输入框，还有一个“登录”按钮。晚上，城市的大桥被灯光照亮，河面闪闪发光。
这是一张照片，一只灰色的小猫睡在窗边的红色沙发上。下午的阳光照在靠垫上，木桌上放着一杯茶和几本书。
街上很热闹：一辆黄色的出租车停在路口，两个骑自行车的人经过面包店，一位穿蓝色外套的女士拿着雨伞。
图表比较了三种产品的月度销售额。收入从一月到六月上升，八月下降，到十二月又恢复了。
问题：图片中写了什么？回答：这是一张超市的收据，日期是三月三日，买了面包、牛奶、鸡蛋、苹果和咖啡。
请用一句话描述这张图片。图中有几个人？请识别图片中的文字并翻译成英文。比较这两张图片有什么不同。
湖面倒映着雪山，清晨的天空很淡，一条小船在岸边漂着。孩子们在公园里踢足球，父母坐在树下的长椅上聊天。
"""


def _train_bpe(
    bpe_vocab_size: int, texts: Iterable[str] | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    # Same normalizer and pre-tokenizer as Qwen2Tokenizer, so the BPE splits text the way it will.
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.splitlines() if texts is None else texts, trainer)
    trained = json.loads(bpe.to_str())["model"]
    return dict(trained["vocab"]), [(left, right) for left, right in trained["merges"]]


def train_tokenizer(bpe_vocab_size: int, texts: Iterable[str] | None = None) -> Qwen2Tokenizer:
    """Train a byte-level BPE (on the built-in corpus, else on texts) as InternVL's tokenizer."""
    vocab, merges = _train_bpe(bpe_vocab_size, texts)
    for token in (*_SPECIAL_TOKENS, *_IMAGE_TOKENS.values()):
        vocab[token] = len(vocab)
    options: dict[str, Any] = {
        "merges": merges,  # Qwen2Tokenizer's annotation says list[str]; tokenizers wants pairs
        "unk_token": None,  # byte-level BPE has no unknowns; the real tokenizer has none either
        "eos_token": _EOS_TOKEN,
        "pad_token": _PAD_TOKEN,
        "extra_special_tokens": dict(_IMAGE_TOKENS),  # named: tokenizer.context_image_token(_id)
        "model_input_names": ["input_ids", "attention_mask"],
        "return_token_type_ids": False,
        "padding_side": "left",
        "model_max_length": 8192,
        "errors": "replace",
    }
    tokenizer = Qwen2Tokenizer(vocab=vocab, **options)
    # Only eos and pad are special so far; <|im_start|> must not be split into bytes either.
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [_IM_START_TOKEN, _EOS_TOKEN]}, replace_extra_special_tokens=False
    )
    return tokenizer


def build_processor(preset: TinyPreset, tokenizer: Qwen2Tokenizer) -> InternVLProcessor:
    """Assemble the InternVL processor (tiling image processor, video processor, template)."""
    tile = {"height": preset.tile_size, "width": preset.tile_size}
    image_processor = GotOcr2ImageProcessor(
        size=tile,
        crop_to_patches=True,
        min_patches=1,
        max_patches=12,
        image_mean=_IMAGE_MEAN,
        image_std=_IMAGE_STD,
    )
    video_processor = InternVLVideoProcessor(
        size=tile, image_mean=_IMAGE_MEAN, image_std=_IMAGE_STD
    )
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=preset.image_seq_length,
        chat_template=CHAT_TEMPLATE,
    )


def model_config(preset: TinyPreset, tokenizer: Qwen2Tokenizer) -> InternVLConfig:
    """InternVLConfig for a preset, with token ids taken from the tokenizer."""
    vision = InternVLVisionConfig(
        hidden_size=preset.vision_hidden,
        num_hidden_layers=preset.vision_layers,
        num_attention_heads=preset.vision_heads,
        intermediate_size=preset.vision_intermediate,
        image_size=preset.tile_size,
        patch_size=preset.patch_size,
        attention_bias=True,  # InternViT-300M has qkv biases
        use_qk_norm=False,
        layer_scale_init_value=0.1,
    )
    text = Qwen2Config(
        vocab_size=preset.text_vocab_size or len(tokenizer),
        hidden_size=preset.text_hidden,
        intermediate_size=preset.text_intermediate,
        num_hidden_layers=preset.text_layers,
        num_attention_heads=preset.text_heads,
        num_key_value_heads=preset.text_kv_heads,
        max_position_embeddings=preset.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=preset.image_seq_length,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )


def preset_named(name: str) -> TinyPreset:
    """The preset called `name`, or a ValueError listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown tiny-model preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def parameter_count(preset: str) -> int:
    """Number of parameters of a preset's model, counted without allocating weights."""
    chosen = preset_named(preset)
    config = model_config(chosen, train_tokenizer(chosen.bpe_vocab_size))
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    return sum(parameter.numel() for parameter in model.parameters())


def _randomize(model: torch.nn.Module, *, std: float, seed: int) -> None:
    # The default init (std 0.02, zero position embeddings and CLS token) makes greedy decoding
    # repeat one token whatever the image; a wider normal over every matrix, including the
    # vision position embeddings and CLS token, gives image-dependent, varied output.
    # Vectors (norm scales, biases, layer scales) keep their deterministic defaults.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
            if parameter.dim() >= 2:
                values = torch.randn(parameter.shape, generator=generator) * std
                parameter.copy_(values)


def build_tiny_model(out_dir: str | Path, *, preset: str = "test", seed: int = 0) -> Path:
    """Write a random-weight InternVL checkpoint for `preset` to `out_dir` and return its path."""
    chosen = preset_named(preset)
    out_path = Path(out_dir)
    tokenizer = train_tokenizer(chosen.bpe_vocab_size)
    processor = build_processor(chosen, tokenizer)
    with torch.random.fork_rng(devices=[]):  # construction draws from the global RNG
        model = InternVLForConditionalGeneration(model_config(chosen, tokenizer))
    _randomize(model, std=chosen.init_std, seed=seed)
    # As in Qwen2.5's instruct checkpoints: a turn ends at <|im_end|> or <|endoftext|>.
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    # transformers types PreTrainedModel.to as the unbound nn.Module.to, hence the ignore.
    model.to(chosen.dtype).save_pretrained(out_path)  # type: ignore[arg-type]
    processor.save_pretrained(out_path)
    return out_path
