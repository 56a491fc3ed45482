"""Modal screens: the forms for each action, the confirmation every change goes
through, and the keyboard help."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


@dataclass(frozen=True, slots=True)
class PinRequest:
    """min/max to pin, or both None to unpin."""

    minimum: int | None
    maximum: int | None


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no before anything changes on the controller."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, id="question")
            with Horizontal(classes="buttons"):
                yield Button("Confirm (y)", variant="warning", id="confirm")
                yield Button("Cancel (n)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PinScreen(ModalScreen[PinRequest | None]):
    """Min/max replicas for one tier; Unpin hands the bounds back to the autoscaler."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, tier: str, current_min: int | None, current_max: int | None, pinned: bool) -> None:
        super().__init__()
        self.tier, self.pinned = tier, pinned
        self.current = ("" if current_min is None else str(current_min), "" if current_max is None else str(current_max))

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Pin replicas of tier [b]{self.tier}[/b]" + (" (pinned now)" if self.pinned else ""))
            with Horizontal(classes="fields"):
                yield Label("min", classes="field-label")
                yield Input(self.current[0], id="pin-min", type="integer")
                yield Label("max", classes="field-label")
                yield Input(self.current[1], id="pin-max", type="integer")
            yield Static("", id="form-error", classes="form-error")
            with Horizontal(classes="buttons"):
                yield Button("Pin", variant="primary", id="pin")
                yield Button("Unpin", id="unpin")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#pin-min", Input).focus()

    def _submit(self) -> None:
        try:
            lo = int(self.query_one("#pin-min", Input).value)
            hi = int(self.query_one("#pin-max", Input).value)
        except ValueError:
            self.query_one("#form-error", Static).update("min and max must be whole numbers")
            return
        if lo < 0 or hi < lo:
            self.query_one("#form-error", Static).update("need 0 <= min <= max")
            return
        self.dismiss(PinRequest(lo, hi))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "pin-min":
            self.query_one("#pin-max", Input).focus()
        else:
            self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "pin":
            self._submit()
        elif event.button.id == "unpin":
            self.dismiss(PinRequest(None, None))
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ThresholdScreen(ModalScreen[float | None]):
    """The router threshold: the chance the cheap tier must have to take a request."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: float | None) -> None:
        super().__init__()
        self.current = "" if current is None else f"{current:.2f}"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Router threshold (0-1): higher sends fewer requests to the cheaper tier")
            yield Input(self.current, id="threshold", type="number")
            yield Static("", id="form-error", classes="form-error")
            with Horizontal(classes="buttons"):
                yield Button("Set", variant="primary", id="set")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#threshold", Input).focus()

    def _submit(self) -> None:
        try:
            value = float(self.query_one("#threshold", Input).value)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            self.query_one("#form-error", Static).update("enter a number between 0 and 1")
            return
        self.dismiss(value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "set":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


HELP_TEXT = """\
[b]Keys[/b]
  ↑/↓      select a tier (pin acts on it)
  Enter    open / fold the tier's replicas
  p        pause / resume the autoscaler
  m        pin the selected tier's min/max replicas
  t        change the router threshold
  r        refresh now
  ?        this help        q  quit

Every change asks for confirmation (y / n).
The screen refreshes every second; when the
controller is unreachable a banner says so and
the console keeps retrying on its own."""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(HELP_TEXT, id="help-text")
            yield Button("Close", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
