"""The console progress bar: drawn on a terminal, silent in logs and pipes."""

import io

from birefnet_core.progress import ConsoleProgress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_is_drawn_on_a_terminal_and_finished_with_a_newline():
    stream = Terminal()
    with ConsoleProgress(4, "predict", stream=stream) as bar:
        for name in "abcd":
            bar.update(1, name)
    text = stream.getvalue()
    assert "predict [" in text and "4/4" in text and text.endswith("\n")


def test_nothing_is_written_to_a_pipe_or_file():
    stream = io.StringIO()
    with ConsoleProgress(4, "predict", stream=stream) as bar:
        bar.update(4, "done")
    assert stream.getvalue() == "" and bar.done == 4
