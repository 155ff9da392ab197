"""The demo served on a loopback port, called through gradio_client as a remote user would."""
import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import ASTRONAUT, GROUP, REPO, free_port, served_app

sys.path.insert(0, str(REPO))

pytest.importorskip("gradio_client")



@pytest.fixture(scope="module")
def server():
    with served_app(concurrency=2) as (demo, temp):
        yield demo, temp


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0].local_url, verbose=False)


def analyze(client, path, gradcam=False):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), gradcam, api_name="/analyze")


def analyzed(client, path, gradcam=False) -> dict:
    """/analyze's outputs by name (those of outputs.AnalyzeOutputs but the tab's state)."""
    from demo.outputs import AnalyzeOutputs

    names = [name for name in AnalyzeOutputs._fields if name != "session"]
    values = analyze(client, path, gradcam)
    assert len(values) == len(names)
    return dict(zip(names, values))


def test_group_photo_end_to_end(client):
    out = analyzed(client, GROUP)
    assert out["message"].startswith("**4 faces**")
    selector, label = out["face_selector"], out["probabilities"]
    assert [value for _, value in selector["choices"]] == [0, 1, 2, 3] and selector["visible"]
    assert label["label"] in {c["label"] for c in label["confidences"]} and len(label["confidences"]) == 8
    for name in ("annotated", "heatmap", "class_heatmap"):
        assert Path(out[name]).is_file()
    assert out["gradcam"]["visible"] is False
    assert out["regions"]["headers"][:2] == ["region", "description"] and out["regions"]["data"]
    assert out["more_regions"]["data"] and "cosine similarity" in out["heat_legend"]
    assert out["heat_class"]["value"] == label["label"]  # the class picker starts at the predicted class

    # the probe reads this session's analysis (server-side state)
    image, text, chart = client.predict(index=3, text="wrinkled nose", api_name="/probe")
    assert Path(image).is_file() and "wrinkled nose" in text
    assert len(chart["data"]) == 8 and chart["mark"] == "bar"  # one bar per class


def test_outlines_contrast_and_occlusion_through_the_api(client):
    from demo.wording import OCCLUSION_HEADERS

    out = analyzed(client, ASTRONAUT)
    ranked = [c["label"] for c in sorted(out["probabilities"]["confidences"], key=lambda c: -c["confidence"])]
    label = out["probabilities"]["label"]
    assert ranked[0] == label
    assert "the 16 patches that entered the score" in out["heat_legend"]  # the top-k outlines, said
    # why A rather than B: B starts at the runner-up, the image carries its own legend
    assert out["contrast_class"]["value"] == ranked[1] and Path(out["contrast"]).is_file()
    assert f"Why {label} rather than {ranked[1]}?" in out["contrast_legend"]
    assert f"evidence for {ranked[1]}" in out["contrast_legend"]
    # the occlusion check for the predicted class, one row per region blurred out
    occlusion = out["occlusion"]
    assert occlusion["headers"] == OCCLUSION_HEADERS
    assert sorted(row[0] for row in occlusion["data"]) == sorted(["brows", "eyes", "nose", "mouth", "cheeks", "forehead"])
    assert all(row[2].endswith(" points") for row in occlusion["data"])
    assert f"Blurring check for {label}" in out["occlusion_summary"]
    assert "uncalibrated" in out["score_key"] and out["regions"]["headers"][2] == "written for"
    # another B through /contrast, on this session's analysis
    image, legend, picker = client.predict(index=0, heat_class=ranked[2], contrast_class=ranked[3],
                                           api_name="/contrast")
    assert Path(image).is_file() and f"Why {ranked[2]} rather than {ranked[3]}?" in legend
    assert picker["value"] == ranked[3]


def test_gradcam_and_bad_upload_through_the_api(client, tmp_path):
    gradcam = analyzed(client, ASTRONAUT, gradcam=True)["gradcam"]
    assert gradcam["visible"] and Path(gradcam["value"]["path"] if isinstance(gradcam["value"], dict)
                                       else gradcam["value"]).is_file()
    fake = tmp_path / "photo.jpg"
    fake.write_text("not really a photo")
    annotated, message, *_ = analyze(client, fake)
    assert annotated is None and "could not be read" in message and "photo.jpg" in message
    assert "mpafer-gradio" not in message  # no server paths


def test_page_shows_the_untrained_banner_and_uses_the_private_temp_dir(server, client):
    demo, temp = server
    config = json.loads(urllib.request.urlopen(demo.local_url + "config", timeout=10).read())
    texts = [c.get("props", {}).get("value") for c in config["components"]]
    assert any(isinstance(t, str) and "untrained" in t for t in texts)
    analyze(client, ASTRONAUT)
    files = [p for p in temp.rglob("*") if p.is_file()]
    assert files, "uploads and served images live in the private temp dir"
    assert all(str(p).startswith(str(temp)) for p in files)
    assert demo.delete_cache is not None


def test_the_page_says_what_the_model_does_and_shows_probes_as_plain_text(server):
    demo, _ = server
    config = json.loads(urllib.request.urlopen(demo.local_url + "config", timeout=10).read())
    by_id = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    about = by_id["about-note"]["props"]["value"]
    for words in ("expressions", "not inner emotions", "FER2013", "FERPlus", "48-pixel", "grey", "biases",
                  "not for monitoring"):
        assert words in about, words
    assert by_id["probe-message"]["type"] == "textbox"  # never rendered as markdown or HTML
    assert by_id["probe-button"]["props"]["variant"] == "primary"
    assert by_id["probe-chart"]["type"] == "nativeplot"  # gr.BarPlot
    privacy = next(c["props"]["value"] for c in config["components"]
                   if "Privacy" in str(c.get("props", {}).get("value")))
    assert "deleted as soon as it has been decoded" in privacy


def _files_with(folder: Path, data: bytes, marker: bytes) -> list[Path]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            if content == data or marker in content:
                found.append(path)
    return found


def test_no_copy_of_an_upload_is_left_after_the_request(server, client, tmp_path):
    """Gradio writes an upload (EXIF and GPS included) to the temp folder; the analysis deletes it
    as soon as it is decoded, and nothing written afterwards carries its metadata."""
    from PIL import Image

    from test_demo_handlers import _exif_photo

    demo, temp = server
    marker = f"PrivacyCam-{os.getpid()}"
    photo = tmp_path / "holiday.jpg"
    data = _exif_photo(photo, marker)
    before = {p for p in temp.rglob("*") if p.is_file()}
    out = analyzed(client, photo)
    assert out["message"].startswith("**One face:**")
    written = {p for p in temp.rglob("*") if p.is_file()} - before
    assert written  # the images served back (boxes, heatmaps) ...
    assert _files_with(temp, data, marker.encode()) == []  # ... but no copy of the upload, no EXIF
    for path in written:
        with Image.open(path) as image:
            assert not image.getexif(), path
    # an upload that is not an image is deleted as well
    junk = tmp_path / "notes.jpg"
    junk.write_bytes(b"not a photo " + marker.encode())
    assert "could not be read" in analyzed(client, junk)["message"]
    assert _files_with(temp, data, marker.encode()) == []


def test_served_images_are_replaced_not_rewritten_in_place(server, tmp_path):
    """Two users getting the same picture must not truncate each other's download."""
    from gradio import processing_utils
    from PIL import Image

    image = Image.new("RGB", (64, 64), (10, 200, 30))
    first = processing_utils.save_pil_to_cache(image, str(tmp_path), format="jpeg")
    inode = os.stat(first).st_ino
    second = processing_utils.save_pil_to_cache(image, str(tmp_path), format="jpeg")
    assert first == second and os.stat(second).st_ino != inode  # a reader of the first keeps a whole file
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["image.jpeg"]  # no staging files left


def test_concurrent_users_with_the_same_photo(server, tmp_path):
    """Everyone uploads the same (non-example) photo at once: each upload is its own file, so
    deleting one after its analysis never pulls another's from under it."""
    import threading

    from gradio_client import Client
    from PIL import Image

    photo = tmp_path / "class.png"
    Image.open(GROUP).save(photo)
    errors, answers = [], []

    def user():
        try:
            client = Client(server[0].local_url, verbose=False)
            for _ in range(3):
                answers.append(analyze(client, photo)[1])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=user) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(answers) == 12 and all(a.startswith("**4 faces**") for a in answers)


def test_app_script_serves_and_removes_its_temp_dir_on_sigterm(tmp_path):
    """`python demo/app.py` end to end: starts offline, answers, and on SIGTERM (how hosts
    stop containers) shuts down and deletes every file it wrote."""
    import signal
    import subprocess
    import time

    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GRADIO_TEMP_DIR", None)
    process = subprocess.Popen([sys.executable, str(REPO / "demo" / "app.py"), "--port", str(port),
                                "--checkpoint", "untrained"], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the app did not start within 60 s"
                time.sleep(0.3)
        message = Client(url, verbose=False).predict(handle_file(str(ASTRONAUT)), False, api_name="/analyze")[1]
        assert message.startswith("**One face:**")
        private = list(tmp_path.glob("mpafer-gradio-*"))
        assert len(private) == 1 and any(p.is_file() for p in private[0].rglob("*"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not list(tmp_path.glob("mpafer-gradio-*"))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not (tmp_path / ".gradio").exists()
