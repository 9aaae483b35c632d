"""Entry point of the `fp-onnx` console script.

Every failure a user can cause ends in exactly one `error: ...` line on stderr and a
non-zero exit code: library errors (`FpOnnxError`) carry their own code, click's
usage errors exit with 2, and an unexpected exception (a bug) exits with 70 and
asks for FP_ONNX_DEBUG=1, which shows the traceback instead.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings

import click
import numpy as np

from fp_onnx import __version__
from fp_onnx.errors import FpOnnxError, ResourceLimitError

INTERNAL_ERROR = 70


COMMAND_MODULES = {"layers": "layers", "profile": "profile", "prune": "prune", "finetune": "finetune",
                   "fine-prune": "fine_prune", "demo": "demo"}
"""Command name -> module under fp_onnx.cli, imported when the command runs (torch only loads for the
commands that train, so `layers`, `profile` and `prune` start in a fraction of the time)."""


class FpOnnxGroup(click.Group):
    """A click group whose failures are one line each, and whose commands load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMAND_MODULES and name not in self.commands:
            self.add_command(importlib.import_module(f"fp_onnx.cli.{COMMAND_MODULES[name]}").command)
        return super().get_command(ctx, name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            with _quiet_libraries():
                result = super().main(args, prog_name or "fp-onnx", complete_var, standalone_mode=False, **extra)
        except FpOnnxError as exc:
            _fail(str(exc), exc.exit_code)
        except click.exceptions.Abort:
            _fail("aborted", 130)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except MemoryError:
            _fail("out of memory; lower --batch-size or --max-memory, or free memory", ResourceLimitError.exit_code)
        except Exception as exc:  # noqa: BLE001 - the last line of defense against tracebacks
            if os.environ.get("FP_ONNX_DEBUG"):
                raise
            _fail(f"internal error: {exc.__class__.__name__}: {exc}; rerun with FP_ONNX_DEBUG=1 and report it", INTERNAL_ERROR)
        sys.exit(result if isinstance(result, int) else 0)


@contextlib.contextmanager
def _quiet_libraries():
    """Python warnings from libraries (numpy overflow on a vendor's extreme weights, matplotlib plotting
    infinities, torch deprecations) are not ours to show: stderr carries only our `note:`/`error:` lines.
    What such values mean is reported by fp-onnx itself (e.g. the guard's non-finite output check)."""
    if os.environ.get("FP_ONNX_DEBUG"):
        yield
        return
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _fail(message: str, code: int) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    click.echo(f"error: {first_line}", err=True)
    sys.exit(code)


@click.group(cls=FpOnnxGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fp-onnx")
def cli() -> None:
    """Fine-Pruning defense for untrusted ONNX classifiers (Liu et al., RAID 2018).

    Typical use: `fp-onnx layers model.onnx`, `fp-onnx profile model.onnx --data clean.npz`.
    """



def main() -> None:
    cli.main()


if __name__ == "__main__":
    main()
