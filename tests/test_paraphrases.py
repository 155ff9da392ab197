"""The paraphrase probe's list is honest: no paraphrase reuses a content word of its class's texts."""
import json
import re
from pathlib import Path

from mpafer.descriptions import load_bank

PARAPHRASES = Path(__file__).resolve().parents[1] / "training" / "data" / "ferplus_paraphrases.json"
FUNCTION_WORDS = {"a", "an", "the", "of", "and", "or", "to", "with", "in", "on", "at", "by", "for", "as", "if",
                  "is", "into", "from", "up", "down", "out", "off", "no", "not", "something"}


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower())) - FUNCTION_WORDS


def test_twenty_paraphrases_share_no_content_word_with_their_class():
    data = json.loads(PARAPHRASES.read_text())
    bank = load_bank("ferplus")
    entries = data["paraphrases"]
    assert len(entries) == 20 and {e["class"] for e in entries} == set(bank.classes)
    for entry in entries:
        index = bank.classes.index(entry["class"])
        own = words(entry["class"]) | words(bank.prompt_names[entry["class"]])
        for prompt in bank.prompts():
            if prompt.class_index == index:
                own |= words(prompt.text)
        shared = words(entry["text"]) & own
        assert not shared, f"{entry['text']!r} shares {sorted(shared)} with the {entry['class']} texts"
    assert "{text}" in data["template"]


def test_generic_offsets_are_each_class_mean_cosine_with_the_mean_bank_sentence(tiny_model):
    import sys

    import numpy as np
    import torch

    sys.path.insert(0, str(PARAPHRASES.parents[1]))
    from paraphrase_probe import generic_offsets, image_features

    tiny_model.eval()
    size = tiny_model.image_size
    images = np.random.default_rng(0).integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 1, 3])
    classes = list(tiny_model.classes)
    offsets = generic_offsets(tiny_model, image_features(tiny_model, images), labels, classes)
    assert list(offsets) == [classes[0], classes[1], classes[3]]  # classes without faces are left out
    generic = torch.nn.functional.normalize(tiny_model.hard_text_features().float(), dim=-1).mean(0)
    cosines = image_features(tiny_model, images) @ (generic / generic.norm())
    assert abs(offsets[classes[1]] - float(cosines[2:5].mean())) < 1e-5
