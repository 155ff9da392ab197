"""MPA-FER demo: which expression each face shows, and why.

    python demo/app.py [--host 127.0.0.1] [--port 7860] [--share] [--checkpoint PATH]

Runs offline with the bundled default model (or, while none is bundled, an untrained
random-weight model behind a visible warning). All logic lives in ``demo/handlers.py``.

Privacy: nothing outlives the request on purpose.
* Images are decoded in memory (``mpafer.images.load_image``); results are kept per browser
  tab in ``gr.State`` (server memory, dropped after ``STATE_TTL_S``).
* Gradio itself writes each upload, and each image it sends back, to disk. They go to a
  private ``GRADIO_TEMP_DIR`` made for this process (``private_temp_dir``); the Blocks'
  ``delete_cache`` removes them once older than ``CACHE_AGE_S`` (checked every
  ``CACHE_EVERY_S``), and the whole folder is deleted when the app exits, on Ctrl-C or on
  SIGTERM (how hosts stop containers).
* Images sent back carry no metadata: EXIF (camera, GPS) of an upload is not copied.
* Blocks have no flagging, examples are not cached, and Gradio's run history (which keeps
  inputs and outputs in the browser, or in a Hugging Face bucket the user connects) is off.
"""
from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python demo/app.py` from a checkout: find mpafer and demo
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXAMPLES = [ROOT / "assets" / "examples" / name for name in ("astronaut.jpg", "group.jpg")]
CACHE_EVERY_S, CACHE_AGE_S = 60, 300  # delete_cache: every minute, files older than 5 minutes
STATE_TTL_S = 900  # a tab's last analysis is dropped after 15 minutes
LIVE_STREAM_EVERY_S = 0.1  # ask the browser for up to 10 frames a second
MAX_FILE_SIZE = "50mb"
# Images sent back are JPEG: encoding an 800x800 result takes 2 ms against 59 ms for
# Gradio's default WebP, which matters for the live stream and under load.
SERVED_FORMAT = "jpeg"
CONCURRENCY = 2  # requests served at once; each gets cores // CONCURRENCY torch threads
# for every launch (the script, the load test, the tests): no run history kept in the browser
# or sent to a bucket, a bounded upload size, a bounded number of tabs' states in memory
LAUNCH_OPTIONS = {"max_file_size": MAX_FILE_SIZE, "state_session_capacity": 100, "footer_links": ["api"],
                  "run_history": False}

UNTRAINED_BANNER = (
    "> ⚠️ **No trained model is bundled with this copy yet.** The demo is running an *untrained*, "
    "random-weight model so that every part of the interface works, but **its predictions are not "
    "meaningful**. Start it with `--checkpoint PATH` to use a trained MPA-FER checkpoint."
)
INTRO = (
    "# MPA-FER: facial expressions, explained\n"
    "Every face is found, cropped and classified by MPA-FER (frozen CLIP-style encoders, learned "
    "text and visual prompts, global-local alignment). The heatmaps show where on the face each "
    "class's text matched; the table lists the written descriptions that best match each facial region."
)
PRIVACY = (
    "<small>Privacy: photos and webcam frames are processed in memory and not stored. The temporary "
    "files the web server needs are deleted within minutes and when the app stops.</small>"
)


def private_temp_dir() -> Path:
    """Point Gradio at a fresh temp folder of this process's own, removed at exit.

    Call before the Blocks are built (Gradio reads ``GRADIO_TEMP_DIR`` then). An existing
    ``GRADIO_TEMP_DIR`` is used as the parent, so hosts that redirect temp files still can.
    """
    folder = tempfile.TemporaryDirectory(prefix="mpafer-gradio-", dir=os.environ.get("GRADIO_TEMP_DIR"))
    atexit.register(folder.cleanup)
    os.environ["GRADIO_TEMP_DIR"] = folder.name
    return Path(folder.name)


def torch_threads(concurrency: int = CONCURRENCY) -> int:
    """Intra-op threads per request so that concurrent requests share the cores, not fight.

    Measured on a 2-core box shared with another busy process: a 112 px forward pass took
    27 ms with 1 thread and 1.2 s with 2 (spinning OpenMP threads starved of a core).
    """
    return max(1, (os.cpu_count() or 1) // concurrency)


def atomic_image_cache() -> None:
    """Make Gradio write the images it serves atomically (write aside, then rename).

    Gradio 6.31 names a served image after the hash of its bytes and rewrites that file in
    place on every request (``processing_utils.save_pil_to_cache``), so two users who get
    the same picture (an example, or one face shown twice) race: one response's file is
    truncated while the other is being sent, and the download fails with "Too little data
    for declared Content-Length" (seen with 8 concurrent clients in demo/load_test.py).
    Gradio's own ``save_file_to_cache`` already uses the rename pattern; this applies it to
    images too. Idempotent.
    """
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "_mpafer_atomic", False):
        return

    def save_pil_to_cache(img, cache_dir, name="image", format="webp"):
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        target = (folder / f"{name}.{format}").resolve()
        handle, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(staging, target)  # readers of the old copy keep a complete file
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return str(target)

    save_pil_to_cache._mpafer_atomic = True
    processing_utils.save_pil_to_cache = save_pil_to_cache


def build_app(predictor):
    """The whole UI as one ``gr.Blocks``, wired to ``demo.handlers`` with ``predictor``."""
    import gradio as gr

    from demo import handlers
    from mpafer.tracking import FaceTracker

    atomic_image_cache()

    classes = list(predictor.classes)

    def analyze(image, gradcam, heat_class):
        return handlers.analyze(predictor, image, gradcam, heat_class)

    def select_face(session, index, heat_class, gradcam):
        return handlers.select_face(predictor, session, index, heat_class, gradcam)

    def probe(session, index, text):
        return handlers.probe(predictor, session, index, text)

    def live(frame, tracker):
        # one FaceTracker per tab's stream (kept in gr.State): labels smoothed over ~0.5 s per face
        tracker = tracker if isinstance(tracker, FaceTracker) else FaceTracker()
        return handlers.live(predictor, frame, tracker), tracker

    with gr.Blocks(title="MPA-FER: facial expressions, explained",
                   delete_cache=(CACHE_EVERY_S, CACHE_AGE_S)) as demo:
        gr.Markdown(INTRO)
        if predictor.untrained:
            gr.Markdown(UNTRAINED_BANNER, elem_id="untrained-banner")
        gr.Markdown(f"<small>Model: {predictor.source}</small>")
        session = gr.State(None, time_to_live=STATE_TTL_S)

        with gr.Tab("Photo"):
            with gr.Row():
                with gr.Column():
                    image_in = gr.Image(sources=["upload", "webcam", "clipboard"], type="filepath",
                                        label="Photo", elem_id="photo-input")
                    gradcam = gr.Checkbox(False, label="Also show Grad-CAM (slower, a second view)")
                    gr.Examples([[str(p)] for p in EXAMPLES if p.is_file()], inputs=[image_in],
                                cache_examples=False)
                with gr.Column():
                    annotated = gr.Image(label="Faces found", interactive=False, elem_id="annotated",
                                         format=SERVED_FORMAT)
                    message = gr.Markdown(handlers.NO_IMAGE, elem_id="message")
            face_selector = gr.Dropdown(choices=[], label="Face", visible=False, elem_id="face-selector",
                                        allow_custom_value=True)  # the handler clamps any index
            with gr.Row():
                probabilities = gr.Label(num_top_classes=len(classes), label="Expression", elem_id="probabilities")
                heatmap = gr.Image(label="Where the predicted class matched", interactive=False,
                                   elem_id="heatmap", format=SERVED_FORMAT)
                with gr.Column():
                    heat_class = gr.Dropdown(choices=classes, value=classes[0], label="Heatmap for class")
                    class_heatmap = gr.Image(label="Where this class matched", interactive=False,
                                             elem_id="class-heatmap", format=SERVED_FORMAT)
            gradcam_image = gr.Image(label="Grad-CAM for the predicted class", interactive=False,
                                     visible=False, elem_id="gradcam", format=SERVED_FORMAT)
            regions = gr.Dataframe(headers=handlers.REGION_HEADERS, label="Best-matching descriptions per region",
                                   interactive=False, wrap=True, elem_id="regions")
            with gr.Group():
                gr.Markdown("### Probe the face with your own words")
                with gr.Row():
                    probe_text = gr.Textbox(placeholder="e.g. wrinkled nose", label="Description", scale=4)
                    probe_button = gr.Button("Probe", scale=1)
                with gr.Row():
                    probe_image = gr.Image(label="Where it matches", interactive=False, elem_id="probe-heatmap",
                                           format=SERVED_FORMAT)
                    with gr.Column():
                        probe_message = gr.Markdown()
                        probe_scores = gr.Dataframe(headers=handlers.PROBE_HEADERS, interactive=False)

        with gr.Tab("Live webcam"):
            gr.Markdown("Allow the camera, then start recording: each frame is analysed as it arrives "
                        "(fast path: no descriptions, no Grad-CAM).")
            with gr.Row():
                webcam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam",
                                  elem_id="live-webcam")
                live_out = gr.Image(label="Live expression", interactive=False, elem_id="live-output",
                                    format=SERVED_FORMAT)
            live_tracker = gr.State(None, time_to_live=STATE_TTL_S)
        gr.Markdown(PRIVACY)

        face_panel = [probabilities, heatmap, class_heatmap, gradcam_image, regions]
        # preprocess=False: the handler gets the upload's path and reads it itself, so a non-image
        # gets a friendly message and a huge JPEG is decoded at reduced size (see handlers.py)
        image_in.change(analyze, [image_in, gradcam, heat_class],
                        [annotated, message, face_selector, *face_panel, session], api_name="analyze",
                        preprocess=False)
        # .input: only what the user changes (analyze sets the face selector itself)
        for control in (face_selector, heat_class, gradcam):
            control.input(select_face, [session, face_selector, heat_class, gradcam], face_panel,
                          api_name=False, show_progress="hidden")
        probe_io = ([session, face_selector, probe_text], [probe_image, probe_message, probe_scores])
        probe_button.click(probe, *probe_io, api_name="probe")
        probe_text.submit(probe, *probe_io, api_name=False)
        webcam.stream(live, [webcam, live_tracker], [live_out, live_tracker], stream_every=LIVE_STREAM_EVERY_S,
                      time_limit=600, concurrency_limit=CONCURRENCY, show_progress="hidden", api_name="live")
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="MPA-FER Gradio demo")
    # hosts such as Hugging Face Spaces say where to listen through Gradio's own variables
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1, or $GRADIO_SERVER_NAME; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="default 7860, or $GRADIO_SERVER_PORT")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder (default: the bundled model; 'untrained' for random weights)")
    return parser.parse_args(argv)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # Gradio's launch() then shuts down and atexit cleanups run


def main(argv=None) -> int:
    args = parse_args(argv)
    private_temp_dir()
    import torch

    torch.set_num_threads(torch_threads())
    # hosts stop containers with SIGTERM, which would skip atexit and leave the temp folder
    signal.signal(signal.SIGTERM, _interrupt)
    from mpafer.backbone import BackboneError
    from mpafer.checkpoint import CheckpointError
    from mpafer.predictor import Predictor

    try:
        predictor = Predictor(args.checkpoint)
    except (CheckpointError, BackboneError) as err:
        print(f"error: cannot load the model: {err}", file=sys.stderr)
        return 2
    demo = build_app(predictor)
    demo.queue(default_concurrency_limit=CONCURRENCY).launch(
        server_name=args.host, server_port=args.port, share=args.share, **LAUNCH_OPTIONS)
    predictor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
