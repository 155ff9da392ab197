"""Hard-prompt bank: class names, prompt templates and LLM-written visual descriptions.

A bank is one JSON file in ``assets/descriptions`` (schema version 1). It supplies the three
hard-prompt granularities of MPA-FER (``a photo of {name}.``, face templates, and templates
filled with a region-tagged visual description) and the region-tagged descriptions the demo
uses to explain a prediction. Standard library only, so it imports without torch.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NoReturn

REGIONS = ("brows", "eyes", "nose", "mouth", "cheeks", "forehead", "face")
GRANULARITIES = ("coarse", "face", "detailed")
SCHEMA_VERSION = 1

_REQUIRED_KEYS = ("version", "name", "classes", "prompt_names", "templates", "descriptions")
# "meta" holds free-form provenance (which model wrote the descriptions, when).
_OPTIONAL_KEYS = ("meta",)
_ENTRY_KEYS = ("region", "text")
# Placeholders each granularity must contain; no others are allowed, so that filling a
# template can never raise KeyError at training time.
_TEMPLATE_FIELDS = {
    "coarse": {"name"},
    "face": {"name"},
    "detailed": {"name", "description"},
}


class BankError(ValueError):
    """A bank file is missing, unreadable or breaks the schema; the message names file and entry."""


@dataclass(frozen=True)
class Description:
    class_name: str
    region: str
    text: str


@dataclass(frozen=True)
class HardPrompt:
    class_index: int
    granularity: str
    text: str
    region: str | None  # set only for "detailed" prompts
    description: str | None  # the description text a "detailed" prompt was filled with


@dataclass(frozen=True)
class HardPromptBank:
    name: str
    classes: tuple[str, ...]
    prompt_names: dict[str, str]
    templates: dict[str, tuple[str, ...]]
    descriptions: dict[str, tuple[Description, ...]]
    source: str

    @property
    def class_prompt_names(self) -> tuple[str, ...]:
        """The word placed after the soft context for each class, in class order."""
        return tuple(self.prompt_names[c] for c in self.classes)

    def prompts(self, granularity: str | None = None) -> list[HardPrompt]:
        """All hard prompts, class-major; within a class coarse, face, then detailed
        (description-major, then template). ``granularity`` keeps only one kind."""
        if granularity is not None and granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r} (expected one of {GRANULARITIES})")
        wanted = GRANULARITIES if granularity is None else (granularity,)
        out: list[HardPrompt] = []
        for index, class_name in enumerate(self.classes):
            name = self.prompt_names[class_name]
            for kind in wanted:
                if kind == "detailed":
                    for desc in self.descriptions[class_name]:
                        for template in self.templates[kind]:
                            text = template.format(name=name, description=desc.text)
                            out.append(HardPrompt(index, kind, text, desc.region, desc.text))
                else:
                    for template in self.templates[kind]:
                        out.append(HardPrompt(index, kind, template.format(name=name), None, None))
        return out

    def descriptions_flat(self) -> list[Description]:
        """Every description, class-major, in file order within a class."""
        return [d for c in self.classes for d in self.descriptions[c]]

    def subset(self, classes: Iterable[str]) -> HardPromptBank:
        """A bank restricted to (and ordered as) ``classes``, e.g. AffectNet-8 -> 7."""
        chosen = tuple(classes)
        unknown = [c for c in chosen if c not in self.classes]
        if unknown:
            raise BankError(f"{_label(self.source)}: subset: unknown class {unknown[0]!r} "
                            f"(classes: {', '.join(self.classes)})")
        if not chosen or len(set(chosen)) != len(chosen):
            raise BankError(f"{_label(self.source)}: subset: classes must be non-empty and unique")
        return HardPromptBank(
            name=self.name,
            classes=chosen,
            prompt_names={c: self.prompt_names[c] for c in chosen},
            templates=dict(self.templates),
            descriptions={c: self.descriptions[c] for c in chosen},
            source=self.source,
        )


def bank_dir() -> Path:
    """Folder of the shipped banks: ``$MPAFER_ASSETS/descriptions`` if set, else the repo's."""
    assets = os.environ.get("MPAFER_ASSETS")
    if assets:
        return Path(assets).expanduser() / "descriptions"
    return Path(__file__).resolve().parent.parent / "assets" / "descriptions"


def available_banks() -> list[str]:
    """Names (file stems) of the banks in :func:`bank_dir`, sorted."""
    folder = bank_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if p.is_file())


def load_bank(name_or_path: str | Path, *, min_per_class: int = 1) -> HardPromptBank:
    """Load and validate a bank given its name (``"ferplus"``) or a path to a JSON file."""
    path = _resolve(name_or_path)
    source = str(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BankError(f"{_label(source)}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BankError(f"{_label(source)}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                        f"{exc.msg}") from None
    validate_bank_dict(data, source, min_per_class=min_per_class)
    return _build(data, source)


def validate_bank_dict(data: Any, source: str, *, min_per_class: int = 1) -> None:
    """Raise :class:`BankError` naming ``source`` and the offending entry if ``data`` is not a
    valid version-1 bank with at least ``min_per_class`` descriptions for every class."""
    where = _label(source)

    def fail(entry: str, problem: str) -> NoReturn:
        raise BankError(f"{where}: {entry}: {problem}")

    if not isinstance(data, dict):
        fail("top level", f"expected a JSON object, got {_kind(data)}")
    for key in _REQUIRED_KEYS:
        if key not in data:
            fail(key, "missing key")
    for key in data:
        if key not in _REQUIRED_KEYS and key not in _OPTIONAL_KEYS:
            fail(key, f"unknown key (allowed: {', '.join(_REQUIRED_KEYS + _OPTIONAL_KEYS)})")
    version = data["version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        fail("version", f"unsupported version {version!r} (expected {SCHEMA_VERSION})")
    if not _nonempty_str(data["name"]):
        fail("name", "must be a non-empty string")

    classes = data["classes"]
    if not isinstance(classes, list) or not classes:
        fail("classes", "must be a non-empty list of class names")
    for i, c in enumerate(classes):
        if not _nonempty_str(c):
            fail(f"classes[{i}]", f"must be a non-empty string, got {c!r}")
        if c in classes[:i]:
            fail(f"classes[{i}]", f"duplicate class {c!r}")
    known = f"(classes: {', '.join(classes)})"

    names = data["prompt_names"]
    if not isinstance(names, dict):
        fail("prompt_names", f"expected an object, got {_kind(names)}")
    for c, word in names.items():
        if c not in classes:
            fail(f"prompt_names[{c!r}]", f"unknown class {c!r} {known}")
        if not _nonempty_str(word):
            fail(f"prompt_names[{c!r}]", "must be a non-empty string")
    for c in classes:
        if c not in names:
            fail(f"prompt_names[{c!r}]", "missing prompt name for class")

    templates = data["templates"]
    if not isinstance(templates, dict):
        fail("templates", f"expected an object, got {_kind(templates)}")
    for kind in templates:
        if kind not in GRANULARITIES:
            fail(f"templates[{kind!r}]", f"unknown granularity (allowed: {', '.join(GRANULARITIES)})")
    for kind in GRANULARITIES:
        entry = f"templates[{kind!r}]"
        if kind not in templates:
            fail(entry, "missing granularity")
        group = templates[kind]
        if not isinstance(group, list) or not group:
            fail(entry, "must be a non-empty list of strings")
        for i, template in enumerate(group):
            if not _nonempty_str(template):
                fail(f"{entry}[{i}]", "must be a non-empty string")
            problem = _template_problem(template, _TEMPLATE_FIELDS[kind])
            if problem:
                fail(f"{entry}[{i}]", f"{problem} in {template!r}")

    descriptions = data["descriptions"]
    if not isinstance(descriptions, dict):
        fail("descriptions", f"expected an object, got {_kind(descriptions)}")
    for c in descriptions:
        if c not in classes:
            fail(f"descriptions[{c!r}]", f"unknown class {c!r} {known}")
    for c in classes:
        entry = f"descriptions[{c!r}]"
        if c not in descriptions:
            fail(entry, "missing descriptions for class")
        items = descriptions[c]
        if not isinstance(items, list) or not items:
            fail(entry, "must be a non-empty list of {region, text} objects")
        seen: set[str] = set()
        for i, item in enumerate(items):
            at = f"{entry}[{i}]"
            if not isinstance(item, dict):
                fail(at, f"expected an object with region and text, got {_kind(item)}")
            for key in _ENTRY_KEYS:
                if key not in item:
                    fail(at, f"missing {key!r}")
            for key in item:
                if key not in _ENTRY_KEYS:
                    fail(at, f"unknown key {key!r} (allowed: region, text)")
            if item["region"] not in REGIONS:
                fail(at, f"unknown region {item['region']!r} (regions: {', '.join(REGIONS)})")
            text = item["text"]
            if not _nonempty_str(text):
                fail(at, "empty text")
            if text.strip() in seen:
                fail(at, f"duplicate text {text!r}")
            seen.add(text.strip())
        if len(items) < min_per_class:
            fail(entry, f"{len(items)} descriptions, fewer than the minimum {min_per_class}")


def _build(data: dict, source: str) -> HardPromptBank:
    classes = tuple(data["classes"])
    return HardPromptBank(
        name=data["name"],
        classes=classes,
        prompt_names={c: data["prompt_names"][c].strip() for c in classes},
        templates={k: tuple(data["templates"][k]) for k in GRANULARITIES},
        descriptions={
            c: tuple(Description(c, d["region"], d["text"].strip()) for d in data["descriptions"][c])
            for c in classes
        },
        source=source,
    )


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    # A bare name ("ferplus") means a shipped bank; anything path-like is taken literally.
    looks_like_path = isinstance(name_or_path, Path) or text.endswith(".json") or os.sep in text or "/" in text
    if looks_like_path:
        return Path(text).expanduser()
    path = bank_dir() / f"{text}.json"
    if not path.is_file():
        names = ", ".join(available_banks()) or "none"
        raise BankError(f"{text}: no such bank in {bank_dir()} (available: {names})")
    return path


def _template_problem(template: str, required: set[str]) -> str | None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:  # unbalanced braces
        return f"malformed placeholder ({exc})"
    missing = sorted(required - fields)
    if missing:
        return "missing " + ", ".join("{" + m + "}" for m in missing)
    extra = sorted(fields - required)
    if extra:
        return "unexpected placeholder " + ", ".join("{" + e + "}" for e in extra)
    return None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _label(source: str) -> str:
    # Shipped banks are named by file name; other sources keep their full path.
    path = Path(source)
    try:
        if path.resolve().parent == bank_dir().resolve():
            return path.name
    except OSError:
        pass
    return source
