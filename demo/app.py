"""MPA-FER demo: which expression each face shows, and why.

    python demo/app.py [--host 127.0.0.1] [--port 7860] [--share] [--checkpoint PATH]

Runs offline with the bundled default model (or, while none is bundled, an untrained
random-weight model behind a visible warning). This file only lays out the page and wires it;
the handlers are plain functions in ``demo/handlers.py`` (the Photo tab), ``demo/probe_view.py``
and ``demo/live_view.py``, each rendering the library's ``FaceExplanation`` of a face.

Hugging Face Spaces and ``gradio demo/app.py`` (hot reload) look for a module-level ``demo``:
it is built on first access (``$MPAFER_CHECKPOINT`` or the bundled model), so importing this
module for its helpers (the tests do) loads no model. ``python demo/app.py`` builds it from
the command line and launches it.

Privacy: nothing outlives the request on purpose.
* Images are decoded in memory (``mpafer.images.load_image``); results are kept per browser
  tab in ``gr.State`` (server memory, dropped after ``STATE_TTL_S``).
* Gradio writes each upload (as sent: EXIF and GPS included) to disk before a handler runs.
  Uploads go to a private ``GRADIO_TEMP_DIR`` made for this process (``demo.serving.private_temp_dir``),
  each in a folder of its own with an unguessable name (``private_uploads``), and the
  analysis deletes the file as soon as it is decoded, readable or not
  (``demo.uploads.discard_upload``; the bundled examples stay). Live webcam frames arrive as
  in-memory data URLs and are never written.
* The images sent back (boxes, heatmaps) are drawn from the decoded pixels, so they carry
  no metadata: EXIF (camera, GPS) of an upload is never written anywhere. Gradio serves
  them from files in the same folder; the Blocks' ``delete_cache`` removes those (and any
  upload no analysis read, e.g. from a tab closed mid-upload) once older than
  ``CACHE_AGE_S`` (checked every ``CACHE_EVERY_S``), and the whole folder is deleted when the
  app exits, on Ctrl-C or on SIGTERM (how hosts stop containers).
* Blocks have no flagging, examples are not cached, and Gradio's run history (which keeps
  inputs and outputs in the browser, or in a Hugging Face bucket the user connects) is off.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python demo/app.py` from a checkout: find mpafer and demo
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from demo.serving import (CONCURRENCY, atomic_image_cache, port_problem, private_temp_dir,  # noqa: E402
                          private_uploads, torch_threads)
from mpafer.cli_types import whole_number  # noqa: E402

EXAMPLES = [ROOT / "assets" / "examples" / name for name in ("astronaut.jpg", "group.jpg")]
CACHE_EVERY_S, CACHE_AGE_S = 60, 300  # delete_cache: every minute, files older than 5 minutes
STATE_TTL_S = 900  # a tab's last analysis is dropped after 15 minutes
LIVE_STREAM_EVERY_S = 0.1  # ask the browser for up to 10 frames a second
MAX_FILE_SIZE = "50mb"
# Images sent back are JPEG: encoding an 800x800 result takes 2 ms against 59 ms for
# Gradio's default WebP, which matters for the live stream and under load.
SERVED_FORMAT = "jpeg"
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
    "The demo finds every face in a photo and shows which facial expression the model sees on each, "
    "and why: the heatmaps show where on the face each expression's text matched (and why one expression "
    "rather than another), a blurring check shows which parts of the face the answer rests on, and the "
    "table lists the written descriptions (\"corners of the mouth pulled up\") that best match each part "
    "of the face. "
    "The model is MPA-FER: frozen CLIP-style image and text encoders with learned text and visual "
    "prompts and global-local alignment."
)
# one voice for what the model does and does not do; shown on the page and said in the README
ABOUT = (
    "**What it does, and what it does not.** The model reads facial **expressions** (how a face looks), "
    "not inner emotions: a smile is not proof that someone is happy. It learned from one data set, "
    "FER2013 with FERPlus labels: about 35,000 small (48-pixel), grey photos of faces collected from the "
    "web, each labelled by crowd workers. It carries that data set's biases (who is in the photos, many "
    "posed or exaggerated expressions, how the labellers read them) and is less reliable on faces unlike "
    "those. It is for learning how such systems work, **not for monitoring, grading or judging people.**"
)
PRIVACY = (
    "<small>Privacy: your photo is read into memory, and the file your browser uploaded is deleted as soon "
    "as it has been decoded (the bundled examples stay). Live webcam frames are never written to disk. "
    "The pictures this page shows you (boxes, heatmaps) are redrawn without metadata (no EXIF, no GPS) and "
    "deleted within about 6 minutes, and every temporary file when the app stops. A tab's results stay in "
    "server memory for up to 15 minutes. Nothing is flagged or kept.</small>"
)
LIVE_LEGEND = (
    "Colours on each face: red where the face matches the text of the expression on its label most, blue "
    "where least (each face on its own scale). Labels are averaged over about half a second."
)
HEAT_CLASS_INFO = "starts at the expression the model sees; pick another to compare (Grad-CAM follows it)"
CONTRAST_CLASS_INFO = "why the expression picked above rather than this one; starts at the runner-up"


def model_label(predictor) -> str:
    """The page's model line: a folder of this checkout by its path in the repo, any other
    folder by its name (a public page should not show the host's directories)."""
    if predictor.untrained:
        return predictor.source
    folder = Path(predictor.source).resolve()
    return str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else folder.name


def build_app(predictor):
    """The whole UI as one ``gr.Blocks``, wired to the handlers with ``predictor``."""
    import gradio as gr

    from gradio.utils import get_upload_folder

    from demo import face_panel, handlers, live_view, probe_view, wording
    from mpafer.tracking import FaceTracker

    atomic_image_cache()
    private_uploads()
    uploads = get_upload_folder()  # where Gradio writes uploads: the private temp folder
    examples = [p for p in EXAMPLES if p.is_file()]

    classes = list(predictor.classes)

    def analyze(image, gradcam):
        # the second heatmap starts at each face's predicted class; the upload is deleted once decoded
        return handlers.analyze(predictor, image, gradcam, uploads=uploads, keep=examples)

    def select_face(session, index, heat_class, gradcam, contrast_class):
        return handlers.select_face(predictor, session, index, heat_class, gradcam, contrast_class)

    def contrast(session, index, heat_class, contrast_class):
        return handlers.contrast(predictor, session, index, heat_class, contrast_class)

    def change_face(session, index, gradcam):
        view, probe_outputs = handlers.change_face(predictor, session, index, gradcam)
        return (*view, *probe_outputs)

    def probe(session, index, text):
        return probe_view.probe(predictor, session, index, text)

    def live(frame, tracker):
        # one FaceTracker per tab's stream (kept in gr.State): labels smoothed over ~0.5 s per face
        tracker = tracker if isinstance(tracker, FaceTracker) else FaceTracker()
        return live_view.live(predictor, frame, tracker), tracker  # looked up per call (tests wrap it)

    with gr.Blocks(title="MPA-FER: facial expressions, explained",
                   delete_cache=(CACHE_EVERY_S, CACHE_AGE_S)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(ABOUT, elem_id="about-note")
        if predictor.untrained:
            gr.Markdown(UNTRAINED_BANNER, elem_id="untrained-banner")
        gr.Markdown(f"<small>Model: {model_label(predictor)}</small>")
        session = gr.State(None, time_to_live=STATE_TTL_S)

        with gr.Tab("Photo"):
            with gr.Row():
                with gr.Column():
                    image_in = gr.Image(sources=["upload", "webcam", "clipboard"], type="filepath",
                                        label="Photo", elem_id="photo-input")
                    gradcam = gr.Checkbox(False, label="Also show Grad-CAM (slower, a second view)",
                                          elem_id="gradcam-toggle")
                    gr.Examples([[str(p)] for p in examples], inputs=[image_in], cache_examples=False)
                with gr.Column():
                    annotated = gr.Image(label="Faces found", interactive=False, elem_id="annotated",
                                         format=SERVED_FORMAT)
                    message = gr.Markdown(handlers.NO_IMAGE, elem_id="message")
            face_selector = gr.Dropdown(choices=[], label="Face", visible=False, elem_id="face-selector",
                                        allow_custom_value=True)  # the handler clamps any index
            with gr.Row():
                probabilities = gr.Label(num_top_classes=len(classes), label="Expression the model sees",
                                         elem_id="probabilities")
                heatmap = gr.Image(label="Where the predicted expression matched", interactive=False,
                                   elem_id="heatmap", format=SERVED_FORMAT)
                with gr.Column():
                    heat_class = gr.Dropdown(choices=classes, value=None, label="Heatmap for expression",
                                             info=HEAT_CLASS_INFO, elem_id="heat-class")
                    class_heatmap = gr.Image(label="Where this expression matched", interactive=False,
                                             elem_id="class-heatmap", format=SERVED_FORMAT)
            heat_legend = gr.Markdown(elem_id="heat-legend")
            with gr.Row():
                with gr.Column():
                    contrast_class = gr.Dropdown(choices=classes, value=None, label="Rather than",
                                                 info=CONTRAST_CLASS_INFO, elem_id="contrast-class")
                    contrast_image = gr.Image(label="Why one expression rather than the other", interactive=False,
                                              elem_id="contrast", format=SERVED_FORMAT)
                    contrast_legend = gr.Markdown(elem_id="contrast-legend")
                with gr.Column(scale=2):
                    occlusion_summary = gr.Markdown(elem_id="occlusion-summary")
                    occlusion = gr.Dataframe(headers=wording.OCCLUSION_HEADERS, label="Blurring check: each part "
                                             "of the face blurred out in turn", interactive=False, wrap=True,
                                             elem_id="occlusion")
            gradcam_image = gr.Image(label="Grad-CAM", interactive=False,
                                     visible=False, elem_id="gradcam", format=SERVED_FORMAT)
            regions = gr.Dataframe(headers=face_panel.REGION_HEADERS,
                                   label=f"Best-matching descriptions (top {face_panel.SHORT_TABLE_ROWS} per region)",
                                   interactive=False, wrap=True, elem_id="regions")
            score_key = gr.Markdown(elem_id="score-key")
            with gr.Accordion("More descriptions", open=False, elem_id="more-descriptions"):
                more_regions = gr.Dataframe(headers=face_panel.REGION_HEADERS, interactive=False, wrap=True,
                                            show_label=False, elem_id="more-regions")
            gr.Markdown("### Probe the face with your own words")
            with gr.Row(equal_height=True):
                probe_text = gr.Textbox(placeholder="e.g. wrinkled nose", label="Description", scale=4,
                                        elem_id="probe-text")
                probe_button = gr.Button("Probe", variant="primary", size="lg", scale=1, min_width=120,
                                         elem_id="probe-button")
            with gr.Row():
                probe_image = gr.Image(label="Where it matches", interactive=False, elem_id="probe-heatmap",
                                       format=SERVED_FORMAT)
                with gr.Column():
                    # a Textbox, not Markdown: the user's own words are shown as plain text, never rendered
                    probe_message = gr.Textbox(label="Result", interactive=False, lines=4, elem_id="probe-message")
                    probe_chart = gr.BarPlot(x=probe_view.PROBE_CHART_X, y=probe_view.PROBE_CHART_Y, sort="-y",
                                             label="How close your words are to each expression's text",
                                             y_title="closer than the average expression (cosine)",
                                             elem_id="probe-chart")

        with gr.Tab("Live webcam"):
            gr.Markdown("Allow the camera, then start recording: each frame is analysed as it arrives "
                        "(fast path: no descriptions, no Grad-CAM).")
            with gr.Row():
                webcam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam",
                                  elem_id="live-webcam")
                live_out = gr.Image(label="Live expression", interactive=False, elem_id="live-output",
                                    format=SERVED_FORMAT)
            gr.Markdown(LIVE_LEGEND, elem_id="live-legend")
            live_tracker = gr.State(None, time_to_live=STATE_TTL_S)
        gr.Markdown(PRIVACY)

        # in the order of demo.outputs.FaceView and ProbeOutputs
        face_outputs = [probabilities, heatmap, class_heatmap, gradcam_image, regions, more_regions, heat_legend,
                      score_key, heat_class, contrast_image, contrast_legend, contrast_class, occlusion,
                      occlusion_summary]
        contrast_panel = [contrast_image, contrast_legend, contrast_class]  # demo.outputs.ContrastOutputs
        probe_panel = [probe_image, probe_message, probe_chart]
        # preprocess=False: the handler gets the upload's path and reads it itself, so a non-image
        # gets a friendly message and a huge JPEG is decoded at reduced size, once (see handlers.py).
        # A new photo resets the class picker to the predicted class and clears the last probe.
        image_in.change(analyze, [image_in, gradcam],
                        [annotated, message, face_selector, *face_outputs, *probe_panel, session], api_name="analyze",
                        preprocess=False)
        # .input: only what the user changes (analyze sets the face selector itself). Another face
        # resets both class pickers and clears the probe; another class or Grad-CAM keeps both.
        face_selector.input(change_face, [session, face_selector, gradcam], [*face_outputs, *probe_panel],
                            api_name=False, show_progress="hidden")
        for control in (heat_class, gradcam):
            control.input(select_face, [session, face_selector, heat_class, gradcam, contrast_class], face_outputs,
                          api_name=False, show_progress="hidden")
        # another B redraws the contrast view alone
        contrast_class.input(contrast, [session, face_selector, heat_class, contrast_class], contrast_panel,
                             api_name="contrast", show_progress="hidden")
        probe_io = ([session, face_selector, probe_text], probe_panel)
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
    parser.add_argument("--port", type=whole_number(1, 65535), default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="default 7860, or $GRADIO_SERVER_PORT")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--checkpoint", default=os.environ.get("MPAFER_CHECKPOINT") or None,
                        help="checkpoint folder (default: $MPAFER_CHECKPOINT, else the bundled model; "
                             "'untrained' for random weights)")
    return parser.parse_args(argv)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # Gradio's launch() then shuts down and atexit cleanups run


def load_predictor(checkpoint: str | None):
    """The predictor the app serves (``Predictor``'s errors pass through), with this process's
    private temp folder made first (Gradio reads ``GRADIO_TEMP_DIR`` when the Blocks are built)
    and torch's threads shared between concurrent requests."""
    private_temp_dir()
    import torch

    torch.set_num_threads(torch_threads())
    from mpafer.predictor import Predictor

    return Predictor(checkpoint)


def __getattr__(name: str):
    """``demo``, built on first access (PEP 562) with the flags' defaults, from the environment
    (``$MPAFER_CHECKPOINT``, ``$GRADIO_SERVER_NAME`` ...): what Spaces and ``gradio demo/app.py``
    read. Importing the module stays cheap: no model loads until then."""
    global demo
    if name != "demo":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    demo = build_app(load_predictor(parse_args([]).checkpoint))
    return demo


def main(argv=None) -> int:
    global demo  # the launched app is the module's ``demo``, as Gradio's reloader expects
    args = parse_args(argv)
    problem = port_problem(args.host, args.port)  # before the model loads: said at once
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # hosts stop containers with SIGTERM, which would skip atexit and leave the temp folder
    signal.signal(signal.SIGTERM, _interrupt)
    from mpafer.backbone import BackboneError
    from mpafer.checkpoint import CheckpointError

    try:
        predictor = load_predictor(args.checkpoint)
    except (CheckpointError, BackboneError) as err:
        print(f"error: cannot load the model: {err}", file=sys.stderr)
        return 2
    demo = build_app(predictor)
    try:
        demo.queue(default_concurrency_limit=CONCURRENCY).launch(
            server_name=args.host, server_port=args.port, share=args.share, **LAUNCH_OPTIONS)
    except OSError as err:  # the port was taken between the check and the launch
        if "port" not in str(err).lower():
            raise
        print(f"error: port {args.port} is already in use on {args.host}; choose another with --port, "
              f"e.g. --port {args.port + 1 if args.port < 65535 else 7860}", file=sys.stderr)
        return 2
    finally:
        predictor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
