"""Hard-prompt bank: shipped banks, the loader's validation, and the LLM generator script."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # so plain `pytest` works as well as `python -m pytest`

from mpafer.descriptions import (  # noqa: E402
    GRANULARITIES,
    REGIONS,
    BankError,
    HardPromptBank,
    available_banks,
    bank_dir,
    load_bank,
    validate_bank_dict,
)

GENERATOR = REPO / "training" / "generate_descriptions.py"
SHIPPED_MIN_PER_CLASS = 16

OFFICIAL_ORDER = {
    "ferplus": ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"),
    "rafdb": ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"),
    "affectnet8": ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"),
    "affectnet7": ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"),
}
# Each dataset's class name -> the expression it denotes.
EXPRESSION = {"happy": "happiness", "sad": "sadness"}
PROMPT_NAME = {"neutral": "neutral", "happiness": "happy", "surprise": "surprised", "sadness": "sad",
               "anger": "angry", "disgust": "disgusted", "fear": "fearful", "contempt": "contemptuous"}
# Regions carrying each expression's action units (FACS), which must each be described.
REQUIRED_REGIONS = {
    "neutral": {"brows", "eyes", "mouth", "face"},
    "happiness": {"mouth", "cheeks", "eyes", "face"},  # AU6 + AU12
    "surprise": {"brows", "eyes", "forehead", "mouth", "face"},  # AU1+2+5+26
    "sadness": {"brows", "eyes", "mouth", "face"},  # AU1+4+15
    "anger": {"brows", "eyes", "forehead", "mouth", "face"},  # AU4+5+7+23
    "disgust": {"nose", "mouth", "cheeks", "face"},  # AU9+15+16
    "fear": {"brows", "eyes", "forehead", "mouth", "face"},  # AU1+2+4+5+7+20+26
    "contempt": {"mouth", "cheeks", "face"},  # unilateral AU14
}


def expression_of(class_name: str) -> str:
    return EXPRESSION.get(class_name, class_name)


# ---------------------------------------------------------------- shipped banks


def test_all_four_banks_are_shipped():
    assert set(OFFICIAL_ORDER) <= set(available_banks())
    assert bank_dir() == REPO / "assets" / "descriptions"


@pytest.mark.parametrize("name", sorted(OFFICIAL_ORDER))
def test_shipped_bank_loads_in_official_order(name):
    bank = load_bank(name, min_per_class=SHIPPED_MIN_PER_CLASS)
    assert bank.name == name
    assert bank.classes == OFFICIAL_ORDER[name]
    assert Path(bank.source) == bank_dir() / f"{name}.json"
    assert bank.class_prompt_names == tuple(PROMPT_NAME[expression_of(c)] for c in bank.classes)


@pytest.mark.parametrize("name", sorted(OFFICIAL_ORDER))
def test_shipped_descriptions_cover_the_expressive_regions(name):
    bank = load_bank(name)
    for class_name in bank.classes:
        items = bank.descriptions[class_name]
        assert len(items) >= SHIPPED_MIN_PER_CLASS, class_name
        regions = {d.region for d in items}
        assert regions <= set(REGIONS)
        missing = REQUIRED_REGIONS[expression_of(class_name)] - regions
        assert not missing, f"{name}/{class_name} lacks {missing}"
        assert all(d.class_name == class_name for d in items)


@pytest.mark.parametrize("name", sorted(OFFICIAL_ORDER))
def test_shipped_descriptions_are_short_plain_phrases(name):
    for d in load_bank(name).descriptions_flat():
        words = d.text.split()
        assert 3 <= len(words) <= 12, d
        assert d.text == d.text.lower() == d.text.strip(), d
        assert not d.text.endswith("."), d


@pytest.mark.parametrize("name", sorted(OFFICIAL_ORDER))
def test_no_description_is_shared_between_classes(name):
    # Descriptions explain predictions per region: a phrase under two classes explains nothing.
    owner: dict[str, str] = {}
    for d in load_bank(name).descriptions_flat():
        assert owner.setdefault(d.text, d.class_name) == d.class_name, f"{d.text!r} in two classes"


def test_affectnet7_is_affectnet8_without_contempt():
    eight, seven = load_bank("affectnet8"), load_bank("affectnet7")
    assert seven.descriptions == {c: eight.descriptions[c] for c in seven.classes}
    assert seven.templates == eight.templates
    reduced = eight.subset(seven.classes)
    assert reduced.classes == seven.classes
    assert reduced.descriptions == seven.descriptions
    assert reduced.prompt_names == seven.prompt_names
    with pytest.raises(BankError, match="unknown class 'joy'"):
        eight.subset(["neutral", "joy"])


def test_hard_prompts_fit_the_clip_context():
    tokenizer_module = pytest.importorskip("open_clip.tokenizer")
    tokenizer = tokenizer_module.SimpleTokenizer()
    for name in OFFICIAL_ORDER:
        for prompt in load_bank(name).prompts():
            # +2 for the start and end tokens; leave room under 77 for the soft context.
            assert len(tokenizer.encode(prompt.text)) + 2 <= 60, prompt.text


def test_hard_prompts_and_class_free_descriptions_fit_the_default_backbones_context():
    """The default backbone's MiniLM tower reads 48 word pieces (its config), not CLIP's 77: every text it
    is given (each hard prompt, each description in the class-free template) must fit untruncated."""
    import open_clip
    from transformers import AutoTokenizer

    from mpafer.backbone import BackboneConfig, build_from_config  # noqa: F401  (registers model configs)
    from mpafer.description_bank import DESCRIPTION_TEMPLATE
    from mpafer.text_tower import resolve_hf_name

    text_cfg = open_clip.get_model_config("mpafer-face-minilm")["text_cfg"]
    context = int(text_cfg["context_length"])
    assert context == 48
    tokenizer = AutoTokenizer.from_pretrained(resolve_hf_name(text_cfg["hf_tokenizer_name"]))
    for name in OFFICIAL_ORDER:
        for prompt in load_bank(name).prompts():
            texts = [prompt.text] + ([DESCRIPTION_TEMPLATE.format(description=prompt.description)]
                                     if prompt.description else [])
            for text in texts:
                assert len(tokenizer(text)["input_ids"]) <= context, f"{name}: {text!r}"


# ---------------------------------------------------------------- prompts()


def test_prompts_count_order_and_texts():
    bank = load_bank("ferplus")
    n_coarse, n_face, n_detailed = (len(bank.templates[g]) for g in GRANULARITIES)
    n_desc = sum(len(bank.descriptions[c]) for c in bank.classes)
    prompts = bank.prompts()
    assert len(prompts) == len(bank.classes) * (n_coarse + n_face) + n_desc * n_detailed
    assert [p.class_index for p in prompts] == sorted(p.class_index for p in prompts)
    assert prompts == bank.prompts()  # stable

    coarse = bank.prompts("coarse")
    assert [p.text for p in coarse] == [bank.templates["coarse"][0].format(name=n)
                                        for n in bank.class_prompt_names]
    assert coarse[1].text == "a photo of happy."
    assert all(p.region is None and p.description is None for p in coarse + bank.prompts("face"))

    detailed = bank.prompts("detailed")
    assert len(detailed) == n_desc * n_detailed
    flat = bank.descriptions_flat()
    assert [(p.description, p.region) for p in detailed[::n_detailed]] == [(d.text, d.region) for d in flat]
    for p in detailed:
        cls = bank.classes[p.class_index]
        assert p.region in REGIONS
        assert p.description in p.text and bank.prompt_names[cls] in p.text
    for p in prompts:
        assert "{" not in p.text and "}" not in p.text
    with pytest.raises(ValueError, match="granularity"):
        bank.prompts("sentence")


# ---------------------------------------------------------------- validation


def tiny_bank() -> dict:
    return {
        "version": 1,
        "name": "tiny",
        "classes": ["happiness", "fear"],
        "prompt_names": {"happiness": "happy", "fear": "fearful"},
        "templates": {"coarse": ["a photo of {name}."],
                      "face": ["a face that looks {name}."],
                      "detailed": ["a face that looks {name}, with {description}."]},
        "descriptions": {
            "happiness": [{"region": "mouth", "text": "corners of the mouth pulled up"},
                          {"region": "face", "text": "joyful face"}],
            "fear": [{"region": "brows", "text": "brows raised and drawn together"},
                     {"region": "mouth", "text": "lips stretched sideways"}],
        },
    }


def test_user_bank_loads_from_path_with_minimum_one(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(tiny_bank()))
    bank = load_bank(path)
    assert isinstance(bank, HardPromptBank)
    assert bank.source == str(path) and bank.classes == ("happiness", "fear")
    assert len(bank.prompts()) == 2 * (1 + 1) + 4 * 1
    assert load_bank(str(path)).descriptions == bank.descriptions


def test_bank_dir_honours_mpafer_assets(tmp_path, monkeypatch):
    (tmp_path / "descriptions").mkdir()
    (tmp_path / "descriptions" / "tiny.json").write_text(json.dumps(tiny_bank()))
    monkeypatch.setenv("MPAFER_ASSETS", str(tmp_path))
    assert bank_dir() == tmp_path / "descriptions"
    assert available_banks() == ["tiny"]
    assert load_bank("tiny").name == "tiny"


def test_unknown_bank_name_lists_the_available_ones():
    with pytest.raises(BankError, match=r"nope: no such bank .*ferplus"):
        load_bank("nope")


def _set(path, value):
    def edit(d):
        *parents, last = path
        for key in parents:
            d = d[key]
        d[last] = value
    return edit


def _delete(path):
    def edit(d):
        *parents, last = path
        for key in parents:
            d = d[key]
        del d[last]
    return edit


MALFORMED = {
    "wrong version": (_set(["version"], 2), "version: unsupported version 2"),
    "missing key": (_delete(["templates"]), "templates: missing key"),
    "misspelt key": (_set(["descriptons"], {}), "descriptons: unknown key"),
    "no classes": (_set(["classes"], []), "classes: must be a non-empty list"),
    "duplicate class": (_set(["classes"], ["happiness", "happiness"]), "classes[1]: duplicate class"),
    "prompt name for unknown class": (_set(["prompt_names", "joy"], "joyful"),
                                      "prompt_names['joy']: unknown class 'joy' (classes: happiness, fear)"),
    "missing prompt name": (_delete(["prompt_names", "fear"]), "prompt_names['fear']: missing"),
    "descriptions for unknown class": (_set(["descriptions", "joy"], [{"region": "face", "text": "a b c"}]),
                                       "descriptions['joy']: unknown class 'joy' (classes: happiness, fear)"),
    "class without descriptions": (_delete(["descriptions", "fear"]), "descriptions['fear']: missing"),
    "empty description list": (_set(["descriptions", "fear"], []), "descriptions['fear']: must be a non-empty"),
    "entry without region": (_set(["descriptions", "fear", 1], {"text": "lips stretched"}),
                             "descriptions['fear'][1]: missing 'region'"),
    "unknown region": (_set(["descriptions", "fear", 0, "region"], "chin"),
                       "descriptions['fear'][0]: unknown region 'chin'"),
    "empty text": (_set(["descriptions", "fear", 0, "text"], "   "), "descriptions['fear'][0]: empty text"),
    "entry not an object": (_set(["descriptions", "fear", 0], "brows raised"),
                            "descriptions['fear'][0]: expected an object"),
    "duplicate text": (_set(["descriptions", "fear", 1, "text"], "brows raised and drawn together"),
                       "descriptions['fear'][1]: duplicate text"),
    "template without name": (_set(["templates", "face"], ["a photo of a face."]),
                              "templates['face'][0]: missing {name}"),
    "detailed template without description": (_set(["templates", "detailed"], ["a {name} face."]),
                                              "templates['detailed'][0]: missing {description}"),
    "template with unknown placeholder": (_set(["templates", "coarse"], ["a {label} photo of {name}."]),
                                          "templates['coarse'][0]: unexpected placeholder {label}"),
    "missing granularity": (_delete(["templates", "coarse"]), "templates['coarse']: missing granularity"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_bank_is_rejected_naming_file_and_entry(case, tmp_path):
    edit, expected = MALFORMED[case]
    data = copy.deepcopy(tiny_bank())
    edit(data)
    path = tmp_path / "ferplus.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BankError) as caught:
        load_bank(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message


def test_invalid_json_names_the_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"version": 1,\n "name": }')
    with pytest.raises(BankError, match=r"broken\.json: invalid JSON at line 2"):
        load_bank(path)


def test_minimum_per_class_is_configurable(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_bank()))
    load_bank(path, min_per_class=2)
    with pytest.raises(BankError, match=r"descriptions\['happiness'\]: 2 descriptions, fewer than the minimum 3"):
        load_bank(path, min_per_class=3)


def test_validate_bank_dict_names_the_given_source():
    data = tiny_bank()
    validate_bank_dict(data, "mine.json")
    data["descriptions"]["joy"] = data["descriptions"].pop("fear")  # a typo'd class is named first
    with pytest.raises(BankError, match=r"^mine\.json: descriptions\['joy'\]: unknown class 'joy'"):
        validate_bank_dict(data, "mine.json")
    with pytest.raises(BankError, match=r"^x\.json: top level: expected a JSON object"):
        validate_bank_dict([1, 2], "x.json")


# ---------------------------------------------------------------- generator


def load_generator_module():
    spec = importlib.util.spec_from_file_location("generate_descriptions", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_parses_untidy_model_replies():
    parse = load_generator_module().parse_descriptions
    reply = ('Sure! Here they are:\n```json\n[{"region": "Eyebrows", "text": "Brows  raised high."},\n'
             ' {"region": "lips", "text": "jaw dropped open"}, {"region": "ears", "text": "ears back"},\n'
             ' {"region": "eyes", "text": ""}, {"region": "whole face", "text": "startled look"}]\n```\nHope it helps.')
    assert parse(reply) == [{"region": "brows", "text": "brows raised high"},
                            {"region": "mouth", "text": "jaw dropped open"},
                            {"region": "face", "text": "startled look"}]
    assert parse('{"features": [{"region": "nose", "text": "nose wrinkled"}]}') == [
        {"region": "nose", "text": "nose wrinkled"}]
    assert parse("I cannot help with that.") == []


class FakeChatHandler(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible /chat/completions that answers with untidy but usable JSON."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            n = len(server.requests)
        if server.mode == "unauthorized":
            return self._send(401, {"error": {"message": "Incorrect API key provided"}})
        regions = ["Eyebrows", "eyes", "nose", "Lips", "cheeks", "forehead", "whole face"]
        count = 3 if server.mode == "few" else 21
        items = [{"region": regions[k % 7], "text": f"Feature {k} of reply {n}."} for k in range(count)]
        items += [{"region": "ears", "text": "ears pulled back"}, dict(items[0])]
        content = "Here you go:\n```json\n" + json.dumps(items, indent=1) + "\n```"
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def fake_llm():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatHandler)
    server.requests, server.mode, server.lock = [], "ok", threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_generator(*args, env_extra=None, timeout=30):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(GENERATOR), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=REPO)


def test_generator_writes_a_valid_bank_from_a_fake_endpoint(fake_llm, tmp_path):
    out = tmp_path / "banks" / "rafdb-gen.json"
    port = fake_llm.server_address[1]
    result = run_generator("--base-url", f"http://127.0.0.1:{port}/v1/", "--model", "fake-model",
                           "--classes-from", "rafdb", "--per-class", 16, "--out", out, "--timeout", 5,
                           env_extra={"OPENAI_API_KEY": "test-key"})
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 7 and progress[0].startswith("[1/7] surprise: 16 descriptions")

    bank = load_bank(out, min_per_class=16)
    assert bank.classes == OFFICIAL_ORDER["rafdb"]
    assert bank.name == "rafdb-gen"
    assert bank.templates == load_bank("rafdb").templates
    for class_name in bank.classes:
        items = bank.descriptions[class_name]
        assert len(items) == 16
        assert {d.region for d in items} == set(REGIONS)  # aliases mapped, "ears" dropped
        assert all(d.text == d.text.lower() and not d.text.endswith(".") for d in items)
    assert json.loads(out.read_text())["meta"]["model"] == "fake-model"
    assert sorted(p.name for p in out.parent.iterdir()) == ["rafdb-gen.json"]  # no temp file left

    assert len(fake_llm.requests) == 7
    for request, name in zip(fake_llm.requests, load_bank("rafdb").class_prompt_names):
        assert request["path"] == "/v1/chat/completions"
        assert request["auth"] == "Bearer test-key"
        assert request["body"]["model"] == "fake-model"
        question = request["body"]["messages"][-1]["content"]
        assert f"distinguish the facial expression of {name}?" in question


def test_generator_fails_when_the_model_gives_too_few(fake_llm, tmp_path):
    fake_llm.mode = "few"
    out = tmp_path / "out.json"
    port = fake_llm.server_address[1]
    result = run_generator("--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m", "--api-key", "k",
                           "--classes-from", "ferplus", "--per-class", 16, "--retries", 1, "--out", out)
    assert result.returncode == 1
    assert "class 'neutral'" in result.stderr and "6 usable descriptions after 2 tries" in result.stderr
    assert len(fake_llm.requests) == 2
    assert not out.exists()


def test_generator_reports_a_rejected_key(fake_llm, tmp_path):
    fake_llm.mode = "unauthorized"
    port = fake_llm.server_address[1]
    result = run_generator("--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m", "--api-key", "bad",
                           "--out", tmp_path / "out.json")
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr and "OPENAI_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_generator_fails_fast_on_a_closed_port(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.json"
    out.write_text("previous bank")
    start = time.monotonic()
    result = run_generator("--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m", "--api-key", "k",
                           "--out", out, timeout=10)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 5, elapsed
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"cannot reach http://127.0.0.1:{port}/v1/chat/completions" in lines[0]
    assert "--base-url" in lines[0]
    assert out.read_text() == "previous bank"  # an existing bank is never clobbered on failure


def test_generator_without_key_says_how_to_set_it(tmp_path):
    result = run_generator("--model", "m", "--out", tmp_path / "out.json", timeout=10)
    assert result.returncode != 0
    assert "OPENAI_API_KEY" in result.stderr and "Traceback" not in result.stderr
