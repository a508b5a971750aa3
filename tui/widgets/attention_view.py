"""View 5: what each CBAM block attends to, for a fixed handful of test images: its
spatial map in half-block cells on a colour scale beside the image, and the spread
of its channel weights. [ and ] step through the epochs."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from core.events import AttentionImage, AttentionMaps, BlockAttention
from core.state import RunState

# A viridis-like scale: dark blue (ignored) through green to yellow (attended).
STOPS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


class AttentionView(VerticalScroll):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.offset_back = 0  # 0: the latest epoch; 1: the one before ...

    def compose(self):  # type: ignore[no-untyped-def]
        yield Static(id="attention-body")

    def update_from(self, state: RunState) -> None:
        self.query_one("#attention-body", Static).update(render_attention(state, self.offset_back))

    def step(self, delta: int, state: RunState) -> None:
        self.offset_back = max(0, min(self.offset_back + delta, len(state.attention) - 1))
        self.update_from(state)


def render_attention(state: RunState, back: int = 0) -> RenderableType:
    if not state.attention:
        return Text("attention: after the first epoch", style="dim")
    maps: AttentionMaps = state.attention[-1 - min(back, len(state.attention) - 1)]
    head = Text(f"attention after epoch {maps.epoch} (stage {maps.stage})", style="bold")
    head.append("   [ ] earlier / later epochs" if len(state.attention) > 1 else "", style="dim")
    rows: list[RenderableType] = [head, Text("spatial maps: dark = damped, bright = kept; "
                                            "channels: mean, spread and share of weights above 0.5", style="dim")]
    for image in maps.images:
        rows.append(_image_row(image))
    return Group(*rows)


def _image_row(image: AttentionImage) -> Table:
    grid = Table.grid(padding=(0, 2))
    cells: list[RenderableType] = [_thumbnail(image)]
    for block in image.blocks:
        cells.append(_block(block))
    for _ in cells:
        grid.add_column()
    grid.add_row(*cells)
    return grid


def _thumbnail(image: AttentionImage) -> Text:
    n, p = image.size, image.pixels
    out = Text()
    for y in range(0, n - 1, 2):
        for x in range(n):
            top = p[3 * (y * n + x) : 3 * (y * n + x) + 3]
            bottom = p[3 * ((y + 1) * n + x) : 3 * ((y + 1) * n + x) + 3]
            out.append("▀", Style(color=f"rgb({top[0]},{top[1]},{top[2]})",
                                  bgcolor=f"rgb({bottom[0]},{bottom[1]},{bottom[2]})"))
        out.append("\n")
    mark = "✓" if image.label == image.predicted else "✗"
    out.append(f"{image.label[:n]}\n", style="bold")
    out.append(f"{mark} {image.predicted}"[: n + 2], style="green" if mark == "✓" else "red")
    return out


def _block(block: BlockAttention) -> Text:
    n, m = block.size, block.spatial
    out = Text()
    for y in range(0, max(n - 1, 1), 2):
        for x in range(n):
            top = m[y * n + x]
            bottom = m[(y + 1) * n + x] if y + 1 < n else top
            out.append("▀", Style(color=_colour(top), bgcolor=_colour(bottom)))
        out.append("\n")
    out.append(f"{block.block}\n", style="bold magenta")
    out.append(f"μ {block.channel_mean:.2f} σ {block.channel_std:.2f}\n>½ {100 * block.channel_above_half:.0f}%",
               style="dim")
    return out


def _colour(level: int) -> str:
    t = max(0, min(level, 255)) / 255 * (len(STOPS) - 1)
    i = min(int(t), len(STOPS) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(STOPS[i], STOPS[i + 1], strict=True))
    return f"rgb({r},{g},{b})"
