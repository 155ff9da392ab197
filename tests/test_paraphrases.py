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
