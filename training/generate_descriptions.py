"""Regenerate a hard-prompt bank with any OpenAI-compatible chat endpoint.

Asks the model, once per class, "What are the most useful visual features to distinguish the
facial expression of {class}?" and writes a version-1 bank (see mpafer/descriptions.py). The
class list, prompt names and templates come from an existing bank (--classes-from).

    python training/generate_descriptions.py --classes-from ferplus --per-class 16 \\
        --base-url http://localhost:11434/v1 --model llama3.1 --api-key none \\
        --out assets/descriptions/ferplus.json

Standard library only: it must run where nothing but Python is installed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from mpafer.descriptions import REGIONS, BankError, load_bank, validate_bank_dict  # noqa: E402

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # what the OpenAI SDK uses when none is set

# Words models use for a region, mapped onto the bank's region keys.
REGION_ALIASES = {
    "brow": "brows", "eyebrow": "brows", "eyebrows": "brows",
    "eye": "eyes", "eyelids": "eyes", "eyelid": "eyes",
    "nostrils": "nose", "nostril": "nose",
    "lips": "mouth", "lip": "mouth", "jaw": "mouth", "chin": "mouth",
    "cheek": "cheeks",
    "whole face": "face", "overall": "face", "head": "face", "whole": "face", "general": "face",
}

SYSTEM_PROMPT = (
    "You are an expert in facial expression analysis and the Facial Action Coding System (FACS). "
    "You answer with JSON only."
)


class GenerationError(Exception):
    """A failure the user can fix; main() prints it as one line, without a traceback."""


def build_question(prompt_name: str, others: list[str], per_class: int) -> str:
    return (
        f"What are the most useful visual features to distinguish the facial expression of "
        f"{prompt_name}?\n"
        f"Give exactly {per_class} short visual phrases, grounded in the facial action units of "
        f"this expression, that tell it apart from: {', '.join(others)}.\n"
        f"Cover every face region that matters, and include at least one phrase about the whole "
        f"face. Each phrase: 3 to 12 words, lower case, no final period, describing what can be "
        f"seen in a photo (no emotion words alone).\n"
        f'Answer with a JSON list of objects {{"region": ..., "text": ...}} where region is one of: '
        f"{', '.join(REGIONS)}."
    )


def chat(url: str, api_key: str, model: str, question: str, timeout: float) -> str:
    """POST one chat completion and return the assistant's text."""
    body = json.dumps({
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                     {"role": "user", "content": question}],
        "temperature": 0.7,
    }).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "Authorization": f"Bearer {api_key}",
    })
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
        hint = {401: "check --api-key / OPENAI_API_KEY", 403: "check --api-key / OPENAI_API_KEY",
                404: "check --base-url (it should end in /v1 or similar) and --model"}.get(
                    exc.code, "see the server's message")
        raise GenerationError(f"{url} answered HTTP {exc.code} {exc.reason}: {detail[:200]} ({hint})") from None
    except (TimeoutError, socket.timeout):
        raise GenerationError(f"{url} did not answer within {timeout:g} s (raise --timeout, or check "
                              f"the server)") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise GenerationError(f"cannot reach {url}: {reason} (start the server, or fix --base-url / "
                              f"OPENAI_BASE_URL)") from None
    except OSError as exc:
        raise GenerationError(f"cannot reach {url}: {exc} (fix --base-url / OPENAI_BASE_URL)") from None
    try:
        content = json.loads(payload)["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(content)
        return content
    except (ValueError, KeyError, IndexError, TypeError):
        raise GenerationError(f"{url} did not return an OpenAI-style chat completion "
                              f"(got {payload[:120]!r}); is --base-url right?") from None


def parse_descriptions(reply: str) -> list[dict]:
    """Pull a list of {region, text} out of a model reply: code fences, prose around the JSON,
    a wrapping object, region synonyms and sentence-style text are all tolerated."""
    text = re.sub(r"```[a-zA-Z]*", "", reply).strip()
    data = None
    for candidate in (text, _outermost(text, "[", "]"), _outermost(text, "{", "}")):
        if candidate:
            try:
                data = json.loads(candidate)
                break
            except ValueError:
                continue
    if isinstance(data, dict):  # e.g. {"descriptions": [...]} or {"features": [...]}
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        return []
    out, seen = [], set()
    for item in data:
        if not isinstance(item, dict):
            continue
        region = str(item.get("region", "")).strip().lower()
        region = REGION_ALIASES.get(region, region)
        phrase = " ".join(str(item.get("text", "")).split()).lower().rstrip(".").strip()
        if region in REGIONS and phrase and phrase not in seen:
            seen.add(phrase)
            out.append({"region": region, "text": phrase})
    return out


def _outermost(text: str, open_: str, close: str) -> str | None:
    start, end = text.find(open_), text.rfind(close)
    return text[start:end + 1] if 0 <= start < end else None


def write_atomically(path: Path, data: dict) -> None:
    """Write JSON next to ``path`` and rename it into place, so a crash never leaves half a bank."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate(args: argparse.Namespace) -> Path:
    if not args.api_key:
        raise GenerationError("no API key: pass --api-key or set OPENAI_API_KEY "
                              "(any value works for a local server that ignores it)")
    if not args.model:
        raise GenerationError("no model: pass --model or set OPENAI_MODEL")
    if args.per_class < 1:
        raise GenerationError("--per-class must be at least 1")
    try:
        template_bank = load_bank(args.classes_from)
    except BankError as exc:
        raise GenerationError(f"--classes-from: {exc}") from None

    base = args.base_url.rstrip("/")
    url = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
    classes = list(template_bank.classes)
    names = dict(template_bank.prompt_names)
    descriptions: dict[str, list[dict]] = {}
    for i, class_name in enumerate(classes, 1):
        others = [names[c] for c in classes if c != class_name]
        question = build_question(names[class_name], others, args.per_class)
        collected: list[dict] = []
        # Models sometimes return fewer (or unparsable) items; ask again and merge.
        for _ in range(1 + args.retries):
            known = {d["text"] for d in collected}
            collected += [d for d in parse_descriptions(chat(url, args.api_key, args.model, question,
                                                             args.timeout)) if d["text"] not in known]
            if len(collected) >= args.per_class:
                break
        if len(collected) < args.per_class:
            raise GenerationError(f"class {class_name!r}: the model gave {len(collected)} usable "
                                  f"descriptions after {1 + args.retries} tries, {args.per_class} "
                                  f"needed (lower --per-class or raise --retries)")
        descriptions[class_name] = collected[:args.per_class]
        regions = sorted({d["region"] for d in descriptions[class_name]})
        print(f"[{i}/{len(classes)}] {class_name}: {len(descriptions[class_name])} descriptions "
              f"({', '.join(regions)})", flush=True)

    out = Path(args.out)
    bank = {
        "version": 1,
        "name": args.name or out.stem,
        "classes": classes,
        "prompt_names": names,
        "templates": {k: list(v) for k, v in template_bank.templates.items()},
        "descriptions": descriptions,
        "meta": {"generator": "training/generate_descriptions.py", "model": args.model,
                 "date": _dt.date.today().isoformat()},
    }
    try:
        validate_bank_dict(bank, str(out), min_per_class=args.per_class)
    except BankError as exc:
        raise GenerationError(f"generated bank is invalid: {exc}") from None
    write_atomically(out, bank)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default=env("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
                   help="OpenAI-compatible API root, e.g. http://localhost:11434/v1 "
                        "(env OPENAI_BASE_URL; default %(default)s)")
    p.add_argument("--model", default=env("OPENAI_MODEL"), help="model name (env OPENAI_MODEL)")
    p.add_argument("--api-key", default=env("OPENAI_API_KEY"), help="API key (env OPENAI_API_KEY)")
    p.add_argument("--classes-from", default="ferplus",
                   help="bank whose classes, prompt names and templates to reuse: a name "
                        "(ferplus, rafdb, affectnet7, affectnet8) or a JSON path (default %(default)s)")
    p.add_argument("--per-class", type=int, default=16, help="descriptions per class (default %(default)s)")
    p.add_argument("--out", required=True, help="where to write the bank JSON")
    p.add_argument("--name", help="bank name stored in the file (default: the --out file stem)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default %(default)s)")
    p.add_argument("--retries", type=int, default=2,
                   help="extra requests per class when too few usable descriptions come back")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = generate(args)
    except GenerationError as exc:
        print(f"generate_descriptions: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("generate_descriptions: interrupted, nothing written", file=sys.stderr)
        return 130
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
