"""The command lines' shared parts: on/off flags as ``--name`` / ``--no_name``, help that shows every default and
keeps the examples' line breaks, docstrings without their markup, and suggestions for a mistyped flag or choice."""

from __future__ import annotations

import argparse
import re
import shutil

from bgmask.errors import did_you_mean


class BoolFlag(argparse.Action):
    """An on/off flag: ``--name`` turns it on, ``--no_name`` off (the flags' underscore style); its default is the
    field's, which ``--config`` files may change."""

    def __init__(self, option_strings, dest, default=None, help=None, **kwargs):
        negative = [f"--no_{o[2:]}" for o in option_strings if o.startswith("--")]
        super().__init__([*option_strings, *negative], dest, nargs=0, default=default, help=help, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no_"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks; every flag's help ends with its default (on/off for on/off
    flags), unless the help already gives it ("(default...") or the default is None (the help says what happens
    then)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        default = action.default
        if not action.option_strings or default in (None, argparse.SUPPRESS) or "(default" in text:
            return text
        shown = ("on" if default else "off") if isinstance(action, BoolFlag) else "%(default)s"
        return f"{text} (default: {shown})"

    def __init__(self, prog, **kwargs):
        columns = shutil.get_terminal_size((120, 24)).columns  # a pipe or a log file: 120 columns
        super().__init__(prog, max_help_position=34, width=min(columns, 120) - 2, **kwargs)


class Parser(argparse.ArgumentParser):
    """argparse with suggestions: a mistyped flag or choice names the closest ones."""

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            known = ", ".join(map(str, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from {known})."
                                                 f"{did_you_mean(value, action.choices)}")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            flags = [o for a in self._actions for o in a.option_strings]
            hints = "".join(did_you_mean(e.split("=")[0], flags) for e in extras if e.startswith("--"))
            self.error(f"unrecognized arguments: {' '.join(extras)}.{hints}")
        return parsed


def plain(text: str | None) -> str | None:
    """Docstring text for a terminal: ``code`` and :role:`~a.b.name` markup become plain words."""
    if text is None:
        return None
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1), text)
    return text.replace("``", "")


def parser_from_doc(doc: str | None, prog: str | None = None, usage: str | None = None) -> Parser:
    """A :class:`Parser` whose description is the first paragraph of ``doc`` and whose epilog is the rest (the
    examples), both without markup."""
    head, _, rest = (plain(doc) or "").strip().partition("\n\n")
    return Parser(prog=prog, usage=usage, description=head or None, epilog=rest or None,
                  formatter_class=HelpFormatter)
