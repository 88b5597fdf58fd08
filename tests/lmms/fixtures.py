"""Fixtures of the lmms-eval tests: the Video-MME-format data under an ``HF_HOME`` and a tiny checkpoint that reads
option letters.

* ``make_videomme_home(hf_home, ...)``: ``hf_home/videomme/{videomme/test-00000-of-00001.parquet, data/<id>.mp4,
  subtitle/<id>.srt}``, the release layout, written by ``tests.eval.mc_fixtures.make_videomme`` (test-bed clips
  and questions); lmms-eval's Video-MME code finds the videos under ``$HF_HOME/videomme/data``.
* ``make_letter_checkpoint(d)``: a tiny random Video-LLaVA whose word-level vocabulary holds the option letters, the
  test-bed words and the words of video_eval's Video-MME prompt (as ``tests/eval/test_benchmarks_e2e.py``'s
  ``letter_checkpoint``), so likelihood scoring over the letters can run.
"""

from __future__ import annotations

import json
from pathlib import Path


def make_videomme_home(hf_home, *, n_videos: int = 4, questions_per_video: int = 2, seed: int = 0) -> dict:
    from tests.eval.mc_fixtures import make_videomme

    return make_videomme(Path(hf_home) / "videomme", n_videos=n_videos, questions_per_video=questions_per_video,
                         seed=seed, parquet=True)


def make_letter_checkpoint(d) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import make_model
    from video_eval.mcq import LETTER_INSTRUCTION, VIDEOMME_INSTRUCTION, VIDEOMME_POST
    from videosparse.testbed.synthetic import vocabulary

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<video>", "<image>"]
    prompt_words = set(" ".join([VIDEOMME_INSTRUCTION, VIDEOMME_POST, LETTER_INSTRUCTION]).split())
    words = sorted(set(vocabulary()) | set("ABCDE") | {"A.", "B.", "C.", "D.", "E."} | prompt_words | {"USER:", "ASSISTANT:"})
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=["<video>", "<image>"])
    model = make_model("sdpa", image_size=32, patch=8, vocab=len(fast), seed=3)
    model.config.video_token_id = fast.convert_tokens_to_ids("<video>")
    model.config.image_token_id = fast.convert_tokens_to_ids("<image>")
    model.config.text_config.eos_token_id = fast.eos_token_id
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    fast.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
         "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
         "resample": 3}))
    return str(d)
