"""Entry point of the `fp-onnx` console script."""
from __future__ import annotations

import click

from fp_onnx import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fp-onnx")
def cli() -> None:
    """Fine-Pruning defense for untrusted ONNX classifiers."""


def main() -> None:
    cli()
