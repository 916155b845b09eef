"""Find and compile the body templates, built-in or from ``template_dir``.

A file in the ``template_dir`` setting overrides the built-in template of
the same name. :class:`spool.render.Renderer` compiles the whole set when it
is built, so a syntax error raises ConfigError then, not when an event is
rendered.
"""

import importlib.resources
from pathlib import Path

import jinja2

from .errors import ConfigError
from .events import KNOWN_ACTIONS

TEMPLATE_NAMES = tuple(f"{action}.j2" for action in KNOWN_ACTIONS) + (
    "generic.j2",
    "digest.j2",
    "test.j2",
)


def builtin_template_dir() -> Path:
    """Return the directory of the built-in templates.

    Installed, they are the package ``spool.templates``; in a source tree
    they are ``templates/`` beside ``spool/``.
    """
    try:
        marker = importlib.resources.files("spool.templates").joinpath("ban.j2")
    except ModuleNotFoundError:
        marker = None
    # A zipped install has no directory that FileSystemLoader could read.
    if isinstance(marker, Path) and marker.is_file():
        return marker.parent
    return Path(__file__).resolve().parent.parent / "templates"


def _compile_templates(environment: jinja2.Environment) -> dict:
    templates = {}
    for name in TEMPLATE_NAMES:
        try:
            templates[name] = environment.get_template(name)
        except jinja2.TemplateSyntaxError as error:
            raise ConfigError(
                f"template {error.filename or name} line {error.lineno}: "
                f"{error.message}",
                key="template_dir",
                path=error.filename,
            ) from None
    return templates
