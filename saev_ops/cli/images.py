"""``saev-ops images``: generated image sets for the quickstart and tests."""

from __future__ import annotations

import click


@click.group("images")
def group() -> None:
    """Image sets: generate."""


@group.command("generate")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--n", type=int, default=64, show_default=True, help="Number of images.")
@click.option("--size", type=int, default=64, show_default=True, help="Width and height in pixels.")
@click.option("--classes", type=int, default=4, show_default=True, help="Class folders.")
@click.option("--seed", type=int, default=0, show_default=True)
def generate(directory: str, n: int, size: int, classes: int, seed: int) -> None:
    """Write N seeded PNG images of coloured shapes into DIRECTORY/classK/ (an image folder for `datasets record`)."""
    from saev_ops.record.images import generate_images

    s = generate_images(directory, n, size=size, n_classes=classes, seed=seed)
    click.echo(f"{len(s.items)} images in {len(s.describe()['classes'])} classes at {s.root}")
