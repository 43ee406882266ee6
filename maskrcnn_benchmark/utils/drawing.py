"""Readable detection pictures: enlarge small images, draw boxes with labels on a filled background, never
one label on top of another."""
import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

# Short side of a drawn picture: a 128-pixel input shown at its own size has labels too small to read.
READABLE_MIN_SIDE = 512
Colour = tuple[int, int, int]
Rect = tuple[int, int, int, int]
BLACK, WHITE = (0, 0, 0), (255, 255, 255)


def enlargement_factor(size: tuple[int, int], min_side: int = READABLE_MIN_SIDE) -> int:
    """The smallest whole factor that brings the short side of `size` (width, height) to `min_side` (>= 1)."""
    return max(1, math.ceil(min_side / max(min(size), 1)))


def enlarge(image: Image.Image, factor: int, resample: int = Image.NEAREST) -> Image.Image:
    """An RGB copy of `image` scaled by the whole number `factor`."""
    image = image.convert("RGB")
    if factor == 1:
        return image.copy()
    return image.resize((image.width * factor, image.height * factor), resample)


def label_font(canvas_size: tuple[int, int]) -> ImageFont.ImageFont:
    """A font about 1/32 of the canvas's short side high (at least 12 px); PIL's bitmap font on old Pillow."""
    size = max(12, round(min(canvas_size) / 32))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: load_default takes no size
        return ImageFont.load_default()


def text_colour_on(background: Colour) -> Colour:
    """Black or white, whichever contrasts more with `background` (relative luminance, ITU-R BT.709)."""
    red, green, blue = background
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return BLACK if luminance > 140 else WHITE


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _free_rect(left: int, top: int, size: tuple[int, int], canvas_height: int, taken: Sequence[Rect],
               downwards: bool) -> Rect | None:
    """The first rectangle of `size` at `left` from `top` on, moving down (or up) past the `taken` ones that
    it meets; None when it would leave the canvas."""
    width, height = size
    for _ in range(len(taken) + 1):
        if top < 0 or top + height > canvas_height:
            return None
        rect = (left, top, left + width, top + height)
        blocking = [other for other in taken if _overlaps(rect, other)]
        if not blocking:
            return rect
        top = max(other[3] for other in blocking) if downwards else min(other[1] for other in blocking) - height
    return None


def place_label(anchor: tuple[float, float], label_size: tuple[int, int], canvas_size: tuple[int, int],
                taken: Sequence[Rect]) -> Rect:
    """A label rectangle for the box whose top-left corner is `anchor`, overlapping none of `taken`.

    It sits on the box's top edge, outside the box (not hiding the object), with the labels of coinciding boxes
    stacked upwards; where the canvas ends, it goes inside the box, stacked downwards. Only when neither fits
    may it overlap another label; it never leaves the canvas.
    """
    width, height = label_size
    canvas_width, canvas_height = canvas_size
    left = int(min(max(anchor[0], 0), max(canvas_width - width, 0)))
    top = int(min(max(anchor[1], 0), max(canvas_height - height, 0)))
    return (_free_rect(left, top - height, label_size, canvas_height, taken, downwards=False)
            or _free_rect(left, top, label_size, canvas_height, taken, downwards=True)
            or (left, top, left + width, top + height))


def draw_labelled_boxes(canvas: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str],
                        colour: Colour, line_width: int | None = None,
                        taken: list[Rect] | None = None) -> list[Rect]:
    """Outline each xyxy box in `colour` with its label in a contrasting colour on a `colour` filled box.

    Labels avoid the rectangles in `taken` and each other; the drawn label rectangles are appended to `taken`
    and returned.
    """
    draw = ImageDraw.Draw(canvas)
    font = label_font(canvas.size)
    line_width = line_width or max(2, round(min(canvas.size) / 256))
    taken = [] if taken is None else taken
    drawn: list[Rect] = []
    # Every outline first: an outline drawn after a label would cut through it.
    for box in boxes:
        draw.rectangle(list(box), outline=colour, width=line_width)
    for box, label in zip(boxes, labels):
        if not label:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        # One height for every label (ascender to descender), so that stacked labels line up evenly.
        _, line_top, _, line_bottom = draw.textbbox((0, 0), "Ag", font=font)
        top, bottom = min(top, line_top), max(bottom, line_bottom)
        padding = max(2, line_width)
        size = (right - left + 2 * padding, bottom - top + 2 * padding)
        rect = place_label((box[0], box[1]), size, canvas.size, taken)
        draw.rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=colour)
        draw.text((rect[0] + padding - left, rect[1] + padding - top), label, fill=text_colour_on(colour), font=font)
        taken.append(rect)
        drawn.append(rect)
    return drawn
