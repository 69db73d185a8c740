"""Draw the template-browser thumbnails: ``<workflow>.jpg`` beside every ``<workflow>.json`` here.

ComfyUI's template browser (Workflow > Browse Templates) lists the ``*.json`` files of a pack's
``example_workflows/`` folder and shows ``<workflow>.jpg`` next to each one (served by the same
static route; without it the browser gets a 404 and shows an empty card).

No model runs here: no released weights are available offline, and a thumbnail must not pass a
drawing off as a model's output. Each thumbnail is, honestly labelled, the example input
(``input_example.jpg``; for a video workflow, that picture repeated as frames of a film strip),
the workflow's name and model, and a diagram of its node graph read from the JSON: the nodes in
columns by their distance from the inputs, named as ComfyUI shows them (the node's title, else the
pack's display name, else ComfyUI's), with one arrow per link.

512 x 512 JPEG (quality 85), square like the cards of ComfyUI's own templates. The only font is
the one Pillow bundles, so the result depends on Pillow alone. Run it after adding or changing a
workflow (tests/test_web_and_workflows.py checks that every workflow has its thumbnail and that
this script draws the same pictures):

    python example_workflows/make_thumbnails.py            # writes example_workflows/*.jpg
    python example_workflows/make_thumbnails.py --out DIR  # writes them into DIR instead
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
INPUT = HERE / "input_example.jpg"
SIZE = 512
QUALITY = 85

#: names ComfyUI shows for the core / VideoHelperSuite nodes the workflows use
OTHER_NODES = {"LoadImage": "Load Image", "SaveImage": "Save Image", "PreviewImage": "Preview Image",
               "MaskToImage": "Convert Mask to Image", "VHS_LoadVideo": "Load Video (Upload)",
               "VHS_VideoCombine": "Video Combine"}
FAMILIES = {"birefnet": "BiRefNet", "focus": "FOCUS"}

BACKGROUND, PANEL, TEXT, MUTED = (32, 32, 36), (52, 52, 58), (236, 236, 236), (170, 170, 178)
PACK_EDGE, CORE_EDGE, WIRE = (86, 156, 214), (120, 120, 128), (150, 150, 160)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: the bundled scalable font
    except TypeError:  # older Pillow: its fixed-size bitmap font
        return ImageFont.load_default()


def display_names() -> dict:
    """The pack's NODE_DISPLAY_NAME_MAPPINGS, imported as ComfyUI imports the pack (its folder as a
    package; importing it needs no ComfyUI)."""
    name = "birefnet_pack_for_thumbnails"
    spec = importlib.util.spec_from_file_location(name, HERE.parent / "__init__.py",
                                                  submodule_search_locations=[str(HERE.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return dict(module.NODE_DISPLAY_NAME_MAPPINGS)


def title_of(stem: str) -> str:
    """``birefnet_remove_background`` -> ``BiRefNet: remove background``."""
    first, _, rest = stem.partition("_")
    family = FAMILIES.get(first.lower())
    words = rest if family else stem
    return f"{family}: {words.replace('_', ' ')}" if family else words.replace("_", " ")


def model_of(workflow: dict) -> str | None:
    for node in workflow["nodes"]:
        values = node.get("widgets_values")
        if node["type"] == "BiRefNetLoader" and isinstance(values, list) and values:
            return str(values[0]).replace(" (download)", "")
    return None


def columns(workflow: dict) -> list[list[dict]]:
    """The nodes in columns: column k holds the nodes whose longest chain of links from an input
    node has k links; within a column, in the order of their position on the canvas."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    sources = {n: [link[1] for link in workflow["links"] if link[3] == n] for n in nodes}
    depth: dict = {}

    def depth_of(node_id, seen=()):
        if node_id not in depth:
            if node_id in seen:  # (a cycle cannot be saved by ComfyUI; guard anyway)
                return 0
            depth[node_id] = 1 + max((depth_of(s, seen + (node_id,)) for s in sources[node_id]), default=-1)
        return depth[node_id]

    out: list[list[dict]] = [[] for _ in range(1 + max(depth_of(n) for n in nodes))]
    for node_id in nodes:
        out[depth[node_id]].append(nodes[node_id])
    return [sorted(col, key=lambda n: (n["pos"][1], n["pos"][0])) for col in out]


def wrap(draw: ImageDraw.ImageDraw, text: str, face, width: float) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=face) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def label(draw: ImageDraw.ImageDraw, xy, text: str, face) -> None:
    """Text on a dark tag (marks what the picture is)."""
    x, y = xy
    box = draw.textbbox((x + 6, y + 4), text, font=face)
    draw.rectangle((x, y, box[2] + 6, box[3] + 5), fill=(0, 0, 0))
    draw.text((x + 6, y + 4), text, fill=TEXT, font=face)


def picture(canvas: Image.Image, video: bool, top: int, height: int) -> None:
    source = Image.open(INPUT).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    if not video:
        width = round(source.width * height / source.height)
        canvas.paste(source.resize((width, height), Image.LANCZOS), ((SIZE - width) // 2, top))
        label(draw, ((SIZE - width) // 2, top + height - 24), "example input", font(13))
        return
    gap = 8  # a film strip: three frames between two rows of sprocket holes
    frame_w = min((SIZE - 20 - 4 * gap) // 3, round(source.width * (height - 44) / source.height))
    frame_h = round(source.height * frame_w / source.width)
    frame = source.resize((frame_w, frame_h), Image.LANCZOS)
    strip_w = 3 * frame_w + 4 * gap
    left = (SIZE - strip_w) // 2
    top += (height - frame_h - 44) // 2
    height = frame_h + 44
    draw.rectangle((left, top, left + strip_w, top + height), fill=(12, 12, 12))
    for x in range(left + 6, left + strip_w - 10, 22):
        for y in (top + 6, top + height - 16):
            draw.rounded_rectangle((x, y, x + 12, y + 10), radius=2, fill=(200, 200, 200))
    for i in range(3):
        canvas.paste(frame, (left + gap + i * (frame_w + gap), top + 22))
    label(draw, (left, top + height + 4), "example input, as frames of a video", font(13))


def diagram(canvas: Image.Image, workflow: dict, names: dict, pack_types: set, top: int, bottom: int) -> None:
    draw = ImageDraw.Draw(canvas)
    face = font(12)
    cols = columns(workflow)
    margin, gap = 10, 22
    box_w = (SIZE - 2 * margin - gap * (len(cols) - 1)) / len(cols)
    box_h = 40
    where = {}
    for c, col in enumerate(cols):
        x0 = margin + c * (box_w + gap)
        space = (bottom - top - len(col) * box_h) / (len(col) + 1)
        for r, node in enumerate(col):
            y0 = top + space + r * (box_h + space)
            where[node["id"]] = (x0, y0, x0 + box_w, y0 + box_h)
    for link in workflow["links"]:
        _, origin, _, target, _, _ = link
        (_, ay0, ax1, ay1), (bx0, by0, _, by1) = where[origin], where[target]
        a, b = (ax1, (ay0 + ay1) / 2), (bx0, (by0 + by1) / 2)
        draw.line((a, ((a[0] + b[0]) / 2, a[1]), ((a[0] + b[0]) / 2, b[1]), b), fill=WIRE, width=2, joint="curve")
        draw.polygon((b, (b[0] - 7, b[1] - 4), (b[0] - 7, b[1] + 4)), fill=WIRE)
    for node_id, (x0, y0, x1, y1) in where.items():
        node = next(n for n in workflow["nodes"] if n["id"] == node_id)
        edge = PACK_EDGE if node["type"] in pack_types else CORE_EDGE
        draw.rounded_rectangle((x0, y0, x1, y1), radius=6, fill=PANEL, outline=edge, width=2)
        text = node.get("title") or names.get(node["type"]) or OTHER_NODES.get(node["type"], node["type"])
        lines = wrap(draw, text, face, x1 - x0 - 8)[:2]
        line_h = 14
        y = (y0 + y1) / 2 - line_h * len(lines) / 2
        for line in lines:
            draw.text(((x0 + x1) / 2, y + line_h / 2), line, fill=TEXT, font=face, anchor="mm")
            y += line_h


def render(path: Path, names: dict | None = None) -> Image.Image:
    """The thumbnail of the workflow at ``path``."""
    workflow = json.loads(Path(path).read_text())
    names = display_names() if names is None else names
    canvas = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((14, 10), title_of(Path(path).stem), fill=TEXT, font=font(22))
    model = model_of(workflow)
    subtitle = f"model: {model}" if model else "node graph"
    draw.text((14, 38), f"{subtitle}  ·  drawn from the workflow; no model output shown", fill=MUTED, font=font(12))
    video = any(n["type"] == "VHS_LoadVideo" for n in workflow["nodes"])
    picture(canvas, video, top=62, height=222 if video else 246)
    diagram(canvas, workflow, names, set(names), top=318, bottom=SIZE - 6)
    return canvas


def encode(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write <workflow>.jpg into (default: here)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = display_names()
    for path in sorted(HERE.glob("*.json")):
        target = args.out / f"{path.stem}.jpg"
        target.write_bytes(encode(render(path, names)))
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
