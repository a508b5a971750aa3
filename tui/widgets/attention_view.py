"""View 5: what each CBAM block attends to, for a fixed set of test images (one a class):
its spatial map in half-block cells on a colour scale beside the image, and the spread
of its channel weights. [ and ] step through the epochs.

The images are laid out as cards, as many side by side as the width holds; where one
card at full size does not fit, every map is shown at half (or a quarter of) its size
rather than cut. The view scrolls (arrows, page keys, the wheel). Its lines are built
once per epoch shown and width, and only the rows in view are rendered.
"""

from __future__ import annotations

from functools import lru_cache

from rich.cells import cell_len
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from core.events import AttentionImage, AttentionMaps, BlockAttention
from core.state import RunState

# A viridis-like scale: dark blue (ignored) through green to yellow (attended).
STOPS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
COLUMN_GAP, CARD_GAP = 2, 4
TEXT_W = 13  # "μ 0.52 σ 0.13": the block's figures under its map
BOLD, DIM = Style(bold=True), Style(dim=True)

Line = list[Segment]


class AttentionView(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    AttentionView {
        overflow-x: hidden;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.offset_back = 0  # 0: the latest epoch; 1: the one before ...
        self._state: RunState | None = None
        self._built: tuple[object, ...] | None = None
        self._lines: list[Line] = []

    @property
    def plain_lines(self) -> list[str]:
        return ["".join(s.text for s in line) for line in self._lines]

    def update_from(self, state: RunState) -> None:
        self._state = state
        width = self.scrollable_content_region.width
        maps = state.attention[-1 - min(self.offset_back, len(state.attention) - 1)] if state.attention else None
        key = (id(maps), len(state.attention), width)
        if key == self._built or width <= 0:
            return
        self._built = key
        self._lines = attention_lines(state, self.offset_back, width)
        self.virtual_size = Size(width, len(self._lines))
        self.refresh()

    def on_resize(self) -> None:
        if self._state is not None:
            self.update_from(self._state)

    def step(self, delta: int, state: RunState) -> None:
        self.offset_back = max(0, min(self.offset_back + delta, len(state.attention) - 1))
        self._built = None
        self.update_from(state)

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if index >= len(self._lines) or width <= 0:
            return Strip.blank(max(width, 0), self.rich_style)
        return Strip(self._lines[index]).crop_extend(0, width, self.rich_style).apply_style(self.rich_style)


def attention_lines(state: RunState, back: int, width: int) -> list[Line]:
    """The view's lines at ``width`` cells: a head, then the image cards, in rows."""
    if not state.attention:
        return [[Segment("attention: after the first epoch", DIM)]]
    maps: AttentionMaps = state.attention[-1 - min(back, len(state.attention) - 1)]
    head = f"attention after epoch {maps.epoch} (stage {maps.stage})"
    lines: list[Line] = [[Segment(head, BOLD)]]
    if len(state.attention) > 1 and cell_len(head) + 30 <= width:
        lines[0].append(Segment("   [ ] earlier / later epochs", DIM))
    lines.append([Segment(_fit("spatial maps: dark = damped, bright = kept", width), DIM)])
    lines.append([Segment(_fit("channel weights: mean μ, spread σ, share above ½", width), DIM)])
    if not maps.images:
        return lines
    shrink = next((f for f in (1, 2, 4) if max(_card_width(image, f) for image in maps.images) <= width), 4)
    cards, card_w = _cards(maps, shrink)
    per_row = max(1, (width + CARD_GAP) // (card_w + CARD_GAP))
    for start in range(0, len(cards), per_row):
        row = cards[start : start + per_row]
        lines.append([])
        for y in range(max(len(card) for card in row)):
            line: Line = []
            for i, card in enumerate(row):
                if i:
                    line.append(Segment(" " * CARD_GAP))
                line += card[y] if y < len(card) else [Segment(" " * card_w)]
            lines.append(line)
    return lines


@lru_cache(maxsize=4)
def _cards(maps: AttentionMaps, shrink: int) -> tuple[list[list[Line]], int]:
    """Each image's card and the cards' width: built once per epoch and scale, whatever the
    width (a scroll bar appearing narrows the view only by a column or two)."""
    thumb_w = max(_thumb_width(image, shrink) for image in maps.images)  # the same columns in every card
    cards = [_card(image, shrink, thumb_w) for image in maps.images]
    return cards, max(_card_width(image, shrink, thumb_w) for image in maps.images)


def _fit(text: str, width: int) -> str:
    """Whole words that fit."""
    while cell_len(text) > width and " " in text:
        text = text.rsplit(" ", 1)[0]
    return text if cell_len(text) <= width else ""


# --- one image's card: the image, then each block's map, each with its words below ------------


def _side(size: int, shrink: int) -> int:
    return max(size // shrink, 1)


def _card_width(image: AttentionImage, shrink: int, thumb_w: int = 0) -> int:
    widths = [max(thumb_w, _thumb_width(image, shrink))] + [max(_side(b.size, shrink), TEXT_W) for b in image.blocks]
    return sum(widths) + COLUMN_GAP * (len(widths) - 1)


def _thumb_width(image: AttentionImage, shrink: int) -> int:
    return max(_side(image.size, shrink), cell_len(image.label), cell_len(image.predicted) + 2)


def _card(image: AttentionImage, shrink: int, thumb_w: int) -> list[Line]:
    mark = "✓" if image.label == image.predicted else "✗"
    verdict = Style(color="green" if mark == "✓" else "red")
    width = thumb_w
    columns = [(_column(_rgb_rows(image, shrink), [(image.label, BOLD), (f"{mark} {image.predicted}", verdict)],
                        width), width)]
    for block in image.blocks:
        words = [(block.block, Style(bold=True, color="magenta")),
                 (f"μ {block.channel_mean:.2f} σ {block.channel_std:.2f}", DIM),
                 (f">½ {100 * block.channel_above_half:.0f}%", DIM)]
        width = max(_side(block.size, shrink), TEXT_W)
        columns.append((_column(_level_rows(block, shrink), words, width), width))
    lines = []
    for y in range(max(len(column) for column, _ in columns)):
        line: Line = []
        for i, (column, w) in enumerate(columns):
            if i:
                line.append(Segment(" " * COLUMN_GAP))
            line += column[y] if y < len(column) else [Segment(" " * w)]
        lines.append(line)
    return lines


def _column(cells: list[list[tuple[tuple[int, int, int], tuple[int, int, int]]]],
            words: list[tuple[str, Style]], width: int) -> list[Line]:
    """Half-block rows (top and bottom colour per cell), then the words, each ``width`` wide."""
    out: list[Line] = []
    for row in cells:
        line = [Segment("▀", _cell_style(top, bottom)) for top, bottom in row]
        line.append(Segment(" " * (width - len(row))))
        out.append(line)
    for text, style in words:
        text = text[:width]
        out.append([Segment(text, style), Segment(" " * (width - cell_len(text)))])
    return out


def _pooled(values: list[list[float]], shrink: int) -> list[list[float]]:
    """Average ``shrink`` x ``shrink`` squares of a square grid of numbers."""
    if shrink == 1 or len(values) < shrink:
        return values
    n = len(values) // shrink
    return [[sum(values[y * shrink + j][x * shrink + i] for j in range(shrink) for i in range(shrink)) / shrink**2
             for x in range(n)] for y in range(n)]


def _pairs(grid: list[list[tuple[int, int, int]]]) -> list[list[tuple[tuple[int, int, int], tuple[int, int, int]]]]:
    """Rows of (top, bottom) colours: two rows of the grid per line of text."""
    out = []
    for y in range(0, len(grid), 2):
        bottom = grid[y + 1] if y + 1 < len(grid) else grid[y]
        out.append(list(zip(grid[y], bottom, strict=True)))
    return out


def _rgb_rows(image: AttentionImage, shrink: int) -> list[list[tuple[tuple[int, int, int], tuple[int, int, int]]]]:
    n, p = image.size, image.pixels
    channels = [_pooled([[float(p[3 * (y * n + x) + c]) for x in range(n)] for y in range(n)], shrink)
                for c in range(3)]
    side = len(channels[0])
    grid = [[(round(channels[0][y][x]), round(channels[1][y][x]), round(channels[2][y][x])) for x in range(side)]
            for y in range(side)]
    return _pairs(grid)


def _level_rows(block: BlockAttention, shrink: int) -> list[list[tuple[tuple[int, int, int], tuple[int, int, int]]]]:
    n, m = block.size, block.spatial
    levels = _pooled([[float(m[y * n + x]) for x in range(n)] for y in range(n)], shrink)
    return _pairs([[_colour(round(v)) for v in row] for row in levels])


@lru_cache(maxsize=16384)  # ten 32x32 images and their maps: about 6,000 colour pairs
def _cell_style(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Style:
    return Style(color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom))


@lru_cache(maxsize=256)
def _colour(level: int) -> tuple[int, int, int]:
    t = max(0, min(level, 255)) / 255 * (len(STOPS) - 1)
    i = min(int(t), len(STOPS) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(STOPS[i], STOPS[i + 1], strict=True))
    return r, g, b
