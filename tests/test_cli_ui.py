"""The terminal UI (scmflow/cli/ui.py): operator lines and progress bars."""

from __future__ import annotations

import pytest

from scmflow.cli.ui import Printer


def test_printer_on_a_terminal_draws_transfer_and_step_bars(capsys: pytest.CaptureFixture[str]) -> None:
    printer = Printer(tty=True)
    printer.transfer("h1", 0, 100)
    printer.transfer("h2", 50, 200)
    printer.info("Upgrading Service: upgrading GATEWAY on h1 (2/4)")
    printer.transfer("h1", 100, 100)
    printer.transfer("h2", 200, 200)
    out, err = capsys.readouterr()
    step = "[INFO ] Upgrading Service: upgrading GATEWAY on h1 (2/4) [##########..........]"
    assert out.splitlines() == [step]
    assert "sending: h1 [..........] 0/0 MB" in err
    assert "h2 [##########] 0/0 MB" in err
    assert err.endswith("\n")


def test_printer_off_a_terminal_prints_plain_lines_only(capsys: pytest.CaptureFixture[str]) -> None:
    printer = Printer(tty=False)
    printer.transfer("h1", 10, 100)
    printer.info("Upgrading Service: sending upgrade package to h1 (1/3)")
    printer.warn("careful")
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "[INFO ] Upgrading Service: sending upgrade package to h1 (1/3)",
        "[WARN ] careful",
    ]
    assert err == ""
